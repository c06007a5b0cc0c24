"""The LightningDataModule that serves already-built datasets.

Hydra builds the datasets (nested ``_target_`` entries in ``conf/data/*.yaml``) and hands them
to :class:`ImageDataModule`, which only decides how they are batched.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from licexp.data.sampling import ResumableShuffle


class StreamLoader(DataLoader):
    """The training loader; Lightning stores its ``state_dict`` in every checkpoint.

    The position in the stream is the trainer's ``global_step`` (one batch per step), so
    the state only describes the stream; loading it refuses a resume whose stream would
    differ (another seed, batch size, world size or dataset length).
    """

    sampler: ResumableShuffle

    def state_dict(self) -> dict[str, Any]:
        sampler = self.sampler
        return {
            "seed": sampler.seed,
            "length": sampler.length,
            "batch_size": sampler.batch_size,
            "num_replicas": sampler.num_replicas,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        now = self.state_dict()
        if state != now:
            raise ValueError(
                f"the checkpoint's training stream was {state}, this run's is {now}: resume "
                "with the run's own data, seed, batch size and devices (or start a new run "
                "from its weights with init_from=...)"
            )


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
        seed: seed of the training order (:class:`~licexp.data.sampling.ResumableShuffle`)
            and of the loaders' worker seeds.

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
        seed: int = 0,
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
        self.seed = seed

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
        trainer = self.trainer  # None outside Lightning: one process, from the start
        sampler = ResumableShuffle(
            len(self.train_set),
            self.batch_size,
            seed=self.seed,
            num_replicas=1 if trainer is None else trainer.world_size,
            rank=0 if trainer is None else trainer.global_rank,
            start_step=0 if trainer is None else trainer.global_step,
        )
        return self._loader(self.train_set, self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset, self.val_batch_size)

    def _loader(
        self,
        dataset: Dataset,
        batch_size: int,
        sampler: ResumableShuffle | None = None,
        drop_last: bool = False,
    ) -> DataLoader:
        # A loader's own generator seeds its workers: creating one draws nothing from torch's
        # global generator, whose stream (the quantisation noise) must resume exactly.
        kind = DataLoader if sampler is None else StreamLoader
        return kind(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            multiprocessing_context=worker_context() if self.num_workers else None,
        )


def worker_context() -> multiprocessing.context.BaseContext:
    """The start method for loader workers: the process's own, unless a launcher installed one
    of its own (joblib's ``loky`` pickles each worker and fails on loaders): then the
    platform's default (fork on Linux, spawn on macOS)."""
    method = multiprocessing.get_start_method(allow_none=True)
    standard = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context(method if method in standard else standard[0])
