"""Callbacks that the DDP tests put into training runs, e.g. on the command line with
``+callbacks.probe._target_=ddp_probe.RecordRankState`` (``tests/`` on ``PYTHONPATH``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from licexp.training import CodecModule


def quantiles(module: CodecModule) -> dict[str, Tensor]:
    """Copies of the ``EntropyBottleneck`` quantiles of the module's codec."""
    return {
        name: parameter.detach().clone()
        for name, parameter in module.codec.named_parameters()
        if name.endswith(".quantiles")
    }


def parameters(module: CodecModule) -> dict[str, Tensor]:
    """Copies of the codec's parameters."""
    return {name: p.detach().clone() for name, p in module.codec.named_parameters()}


class RecordRankState(L.Callback):
    """Writes ``rank<r>.pt`` per rank: the codec parameters before and after training, the
    state of the global random generator when training starts, the quantiles after every
    step and the names of the images each step trained on."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict[str, Any] = {"steps": [], "names": []}

    def on_train_start(self, trainer: L.Trainer, module: CodecModule) -> None:
        self.record["initial"] = parameters(module)

    def on_train_batch_start(
        self, trainer: L.Trainer, module: CodecModule, batch: Any, batch_idx: int
    ) -> None:
        self.record.setdefault("rng_state", torch.random.get_rng_state())

    def on_train_batch_end(
        self, trainer: L.Trainer, module: CodecModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.record["steps"].append(quantiles(module))
        self.record["names"].append(list(batch["name"]))

    def on_train_end(self, trainer: L.Trainer, module: CodecModule) -> None:
        self.record["final"] = parameters(module)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.out_dir / f"rank{trainer.global_rank}.pt")


class FailOnRank(L.Callback):
    """Raises in one rank's training step ``step``, as a bug or a bad batch would."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank = rank
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, module: CodecModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(f"injected failure on rank {self.rank} at step {self.step}")
