"""The training data stream: shuffled epochs that resume at any batch, shared over DDP ranks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DistributedSampler


class ResumableShuffle(DistributedSampler):
    """Shuffled epochs that depend only on ``(seed, epoch)``, resumable at any batch.

    Epoch ``e`` is ``numpy.random.default_rng([seed, e]).permutation(length)`` cut into global
    batches of ``batch_size * num_replicas`` indices (the last incomplete one dropped); rank
    ``r`` takes the ``r``-th ``batch_size`` indices of each. Nothing is drawn from torch's
    global generator, so a resumed run sees the images the uninterrupted run would have.

    Lightning calls :meth:`set_epoch` at every epoch start and leaves a ``DistributedSampler``
    in place under DDP (it would wrap a plain sampler in its own).

    Args:
        length: the dataset's length.
        batch_size: indices per rank and batch.
        seed: the base seed of the permutations.
        num_replicas: DDP world size.
        rank: this process's global rank.
        start_step: global batches already trained (a resumed run's ``global_step``): the
            stream starts at the batch that follows them.
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        start_step: int = 0,
    ) -> None:
        self.length = length
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.batches_per_epoch = length // (batch_size * num_replicas)
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"the training set has {length} items, fewer than one global batch of "
                f"{batch_size} x {num_replicas} ranks"
            )
        self.resume_epoch, self.resume_batch = divmod(start_step, self.batches_per_epoch)
        self.epoch = self.resume_epoch
        self.shuffle = True
        self.drop_last = True

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        first = self.resume_batch if self.epoch == self.resume_epoch else 0
        width = self.batch_size * self.num_replicas
        for batch in range(first, self.batches_per_epoch):
            start = batch * width + self.rank * self.batch_size
            yield from order[start : start + self.batch_size].tolist()
