"""The LightningDataModule that serves already-built datasets.

Hydra builds the datasets (nested ``_target_`` entries in ``conf/data/*.yaml``) and hands them
to :class:`ImageDataModule`, which only decides how they are batched.
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset


class ImageDataModule(L.LightningDataModule):
    """Training, validation and test loaders over datasets of ``{"image", "name"}`` items.

    Args:
        train: training set; shuffled, and the last incomplete batch is dropped.
        val: validation set; in order.
        test: test set, in order; ``None`` reuses ``val``.
        batch_size: training batch size.
        val_batch_size: validation and test batch size (1 lets full images of different sizes
            go through unpadded).
        num_workers: loader worker processes per loader.
        pin_memory: pin batches in page-locked memory (faster copies to a GPU).
        persistent_workers: keep workers alive between epochs (only used if
            ``num_workers > 0``).

    Batches are ``{"image": FloatTensor[B, 3, H, W], "name": list[str]}``.
    """

    def __init__(
        self,
        train: Dataset,
        val: Dataset,
        test: Dataset | None = None,
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1 or val_batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"need batch_size >= 1, val_batch_size >= 1, num_workers >= 0; got "
                f"{batch_size}, {val_batch_size}, {num_workers}"
            )
        self.train_set = train
        self.val_set = val
        self.test_set = test
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0

    @property
    def eval_dataset(self) -> Dataset:
        """The dataset for the final evaluation: ``test`` if given, else ``val``."""
        return self.val_set if self.test_set is None else self.test_set

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"the training set has {len(self.train_set)} items, fewer than "
                f"batch_size={self.batch_size}; with drop_last there would be no batch"
            )
        return self._loader(self.train_set, self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset, self.val_batch_size)

    def _loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool = False, drop_last: bool = False
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )
