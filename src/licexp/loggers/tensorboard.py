"""What licexp sends to TensorBoard beyond Lightning's scalars (``logger=tensorboard``).

A local dashboard, no account: ``tensorboard --logdir <run>/tensorboard``. Everything here
acts only when a ``TensorBoardLogger`` is attached, on global rank 0. Scalars (losses, bpp,
PSNR, the gap metrics) reach it through ``LightningModule.log`` like every logger's; this
module adds what W&B gets (:mod:`licexp.loggers.wandb`), in TensorBoard's types:

* :class:`TensorBoardMedia` (a callback): at each validation the first validation images
  next to their reconstructions (Images: ``val/reconstructions/<name>``) and the latent
  histograms of :class:`~licexp.callbacks.GapMetrics` (Histograms:
  ``val/latent_histogram``, ``val/quantisation_error_histogram``; Images: their figures);
* :func:`log_evaluation`: a real-bitstream evaluation as scalars ``eval/<metric>`` at the
  final step, the per-image results as a Markdown table (Text: ``eval/per_image``), the
  originals next to their reconstructions (``eval/reconstructions/<name>``) and the RD
  figure (``eval/rd``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch.utils.data import Dataset

from licexp.callbacks.gaps import Histogram
from licexp.loggers.media import (
    ValidationMedia,
    evaluated_images,
    first_logger,
    rank_zero_logger,
    read_png,
)


def add_histogram(logger: TensorBoardLogger, tag: str, histogram: Histogram, step: int) -> None:
    """Writes a :class:`Histogram` as it is binned (its fractions as the counts)."""
    counts, edges = histogram.counts.double(), histogram.edges.double()
    centres = (edges[:-1] + edges[1:]) / 2
    logger.experiment.add_histogram_raw(
        tag,
        min=float(edges[0]),
        max=float(edges[-1]),
        num=float(counts.sum()),
        sum=float((counts * centres).sum()),
        sum_squares=float((counts * centres**2).sum()),
        bucket_limits=edges[1:].tolist(),  # each bin's upper edge
        bucket_counts=counts.tolist(),
        global_step=step,
    )


def add_image(logger: TensorBoardLogger, tag: str, image: np.ndarray, step: int) -> None:
    """Writes an 8-bit ``[H, W, 3]`` array."""
    logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")


class TensorBoardMedia(ValidationMedia):
    """Validation pictures for TensorBoard: reconstructions beside originals, latent
    histograms (see the module docstring). Does nothing without a TensorBoard logger.
    Arguments as :class:`~licexp.loggers.media.ValidationMedia`'s.
    """

    def tracker(self, trainer: L.Trainer) -> TensorBoardLogger | None:
        return rank_zero_logger(trainer, TensorBoardLogger)

    def log_media(
        self,
        logger: TensorBoardLogger,
        step: int,
        pairs: list[tuple[str, np.ndarray]],
        histograms: dict[str, Histogram],
    ) -> None:
        for name, pair in pairs:
            add_image(logger, f"val/reconstructions/{name}", pair, step)
        for stem, histogram in histograms.items():
            add_histogram(logger, f"val/{stem}", histogram, step)
            if histogram.figure is not None:
                add_image(logger, f"val/{stem}_figure", read_png(histogram.figure), step)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of equal keys as a Markdown table (floats to 6 significant digits)."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        return f"{value:.6g}" if isinstance(value, float) else str(value).replace("|", "/")

    columns = list(rows[0])
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell(row[column]) for column in columns) + " |" for row in rows),
    ]
    return "\n".join(lines)


def log_evaluation(
    loggers: Sequence[Logger],
    summary: dict[str, float],
    eval_dir: Path,
    dataset: Dataset,
    step: int,
) -> None:
    """Sends an evaluation to TensorBoard (see the module docstring); no-op without a
    TensorBoard logger. Arguments as :func:`licexp.loggers.wandb.log_evaluation`'s."""
    logger = first_logger(loggers, TensorBoardLogger)
    if logger is None:
        return
    logger.log_metrics({f"eval/{key}": value for key, value in summary.items()}, step=step)
    images = evaluated_images(eval_dir, dataset)
    logger.experiment.add_text(
        "eval/per_image", markdown_table([image.row for image in images]), global_step=step
    )
    for image in images:
        if image.pair is not None:
            add_image(logger, f"eval/reconstructions/{image.row['name']}", image.pair, step)
    if (eval_dir / "rd.png").is_file():
        add_image(logger, "eval/rd", read_png(eval_dir / "rd.png"), step)
    logger.experiment.flush()
