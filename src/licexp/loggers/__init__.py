"""Extras for experiment trackers (configs in ``conf/logger/``): W&B and TensorBoard."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.loggers import Logger
from torch.utils.data import Dataset

from licexp.loggers import tensorboard, wandb
from licexp.loggers.tensorboard import TensorBoardMedia
from licexp.loggers.wandb import WandbMedia, finish_wandb


def log_evaluation(
    loggers: Sequence[Logger],
    summary: dict[str, float],
    eval_dir: Path,
    dataset: Dataset,
    step: int,
) -> None:
    """Sends a real-bitstream evaluation to every tracker among ``loggers`` (global rank
    0's): see :func:`licexp.loggers.wandb.log_evaluation` for the arguments."""
    for tracker in (wandb, tensorboard):
        tracker.log_evaluation(loggers, summary, eval_dir, dataset, step)


__all__ = ["TensorBoardMedia", "WandbMedia", "finish_wandb", "log_evaluation"]
