"""What every tracker shows beyond scalars, in one place for W&B and TensorBoard alike.

Each tracker module (:mod:`licexp.loggers.wandb`, :mod:`licexp.loggers.tensorboard`) only
turns these pictures and tables into its own types:

* :class:`ValidationMedia`: the base of the trackers' callbacks; it picks the first
  validation images, sets each beside its reconstruction (:func:`side_by_side`), and hands
  them over with the latent histograms of :class:`~licexp.callbacks.GapMetrics` at the end
  of each validation;
* :func:`evaluated_images`: the rows of an evaluation's ``per_image.csv``, each with its
  original beside its decoded reconstruction where one was saved.
"""

from __future__ import annotations

import csv
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from licexp.callbacks.gaps import GapMetrics, Histogram
from licexp.training import CodecModule

TrackerLogger = TypeVar("TrackerLogger", bound=Logger)


def rank_zero_logger(trainer: L.Trainer, kind: type[TrackerLogger]) -> TrackerLogger | None:
    """The trainer's logger of class ``kind`` on global rank 0; ``None`` without one or on
    other ranks (Lightning's loggers write from rank 0)."""
    if not trainer.is_global_zero:
        return None
    return first_logger(trainer.loggers, kind)


def first_logger(loggers: Sequence[Logger], kind: type[TrackerLogger]) -> TrackerLogger | None:
    """The first of ``loggers`` of class ``kind``, or ``None``."""
    return next((logger for logger in loggers if isinstance(logger, kind)), None)


def side_by_side(original: Tensor, reconstruction: Tensor) -> np.ndarray:
    """``[3, H, W]`` images in ``[0, 1]`` as one 8-bit ``[H, 2W, 3]`` array, original left."""
    pair = torch.cat([original, reconstruction], dim=-1).detach().float().cpu().clamp(0, 1)
    return (pair * 255).round().byte().permute(1, 2, 0).numpy()


def read_png(path: Path) -> np.ndarray:
    """An image file as an 8-bit ``[H, W, 3]`` RGB array."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and rows of a CSV file, numbers as ints or floats, empty cells as ``None``."""

    def value(text: str) -> Any:
        if text == "":
            return None
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [{key: value(text) for key, text in row.items()} for row in reader]
        return list(reader.fieldnames or []), rows


@dataclass(frozen=True)
class EvaluatedImage:
    """One row of ``per_image.csv`` and, where its reconstruction was saved, the original
    beside it (``[H, 2W, 3]``, 8 bits)."""

    row: dict[str, Any]
    pair: np.ndarray | None


def evaluated_images(eval_dir: Path, dataset: Dataset) -> list[EvaluatedImage]:
    """The per-image results in ``eval_dir``, ``dataset`` being the evaluated images in
    evaluation order (a skipped image has no reconstruction: its original is not read)."""
    images = []
    _, rows = read_table(eval_dir / "per_image.csv")
    for index, row in enumerate(rows):
        reconstruction = eval_dir / f"reconstruction_{row['name']}.png"
        pair = None
        if reconstruction.is_file():
            decoded = torch.from_numpy(read_png(reconstruction)).permute(2, 0, 1) / 255
            pair = side_by_side(dataset[index]["image"], decoded)
        images.append(EvaluatedImage(row, pair))
    return images


def validation_histograms(trainer: L.Trainer) -> dict[str, Histogram]:
    """The latent histograms :class:`GapMetrics` made at this step's validation, by stem."""
    return {
        stem: histogram
        for callback in trainer.callbacks
        if isinstance(callback, GapMetrics)
        for stem, histogram in callback.histograms.items()
        if histogram.step == trainer.global_step  # not those of an earlier validation
    }


class ValidationMedia(L.Callback, ABC):
    """Reconstructions beside originals and latent histograms, at each validation, for one
    tracker: a subclass says which logger it writes to and how.

    Args:
        reconstructions: number of validation images shown (in validation order), each
            beside its reconstruction by the hard-quantised pass the ``val/*`` metrics come
            from.
    """

    def __init__(self, reconstructions: int = 2) -> None:
        if reconstructions < 0:
            raise ValueError(f"reconstructions must be >= 0, got {reconstructions}")
        self.reconstructions = reconstructions
        self._pairs: list[tuple[str, np.ndarray]] = []

    @abstractmethod
    def tracker(self, trainer: L.Trainer) -> Logger | None:
        """The logger written to; ``None`` (no such logger, or not rank 0): nothing is done."""

    @abstractmethod
    def log_media(
        self,
        logger: Logger,
        step: int,
        pairs: list[tuple[str, np.ndarray]],
        histograms: dict[str, Histogram],
    ) -> None:
        """Writes one validation's pictures: ``(name, original | reconstruction)`` pairs and
        the histograms by file stem (``latent_histogram``, ...)."""

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        module: CodecModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        wanted = self.reconstructions - len(self._pairs)
        if wanted <= 0 or trainer.sanity_checking or self.tracker(trainer) is None:
            return
        x, output = module.last_step  # this batch's validation step
        for name, image, x_hat in list(zip(batch["name"], x, output.x_hat, strict=True))[:wanted]:
            self._pairs.append((name, side_by_side(image, x_hat)))

    def on_validation_end(self, trainer: L.Trainer, module: CodecModule) -> None:
        pairs, self._pairs = self._pairs, []
        logger = self.tracker(trainer)
        if logger is None or trainer.sanity_checking:
            return
        self.log_media(logger, trainer.global_step, pairs, validation_histograms(trainer))
