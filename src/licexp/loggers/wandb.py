"""What licexp sends to Weights & Biases beyond Lightning's scalars (``logger=wandb``).

Everything here acts only when a ``WandbLogger`` is attached, and only on global rank 0
(Lightning's loggers log from there); with other loggers it does nothing and never
imports ``wandb``. Scalars (losses, bpp, PSNR, the gap metrics) reach W&B through
``LightningModule.log`` like every logger's; this module adds:

* :class:`WandbMedia` (a callback): at each validation the first validation images next
  to their reconstructions, and the latent histograms of
  :class:`~licexp.callbacks.GapMetrics` as ``wandb.Histogram`` and as their PNG figures;
* :func:`log_evaluation`: a real-bitstream evaluation as run summary (``eval/bpp``,
  ``eval/psnr``, ``eval/ms_ssim``, ...), a ``wandb.Table`` of the per-image results with
  originals next to reconstructions, and the RD figure;
* :func:`log_rd`: a sweep's RD figure and BD table (``licexp-rd --wandb``);
* :func:`finish_wandb`: closes the run, so that the next job of a sweep gets its own.

Tables are staged inside the run's own folder (:func:`staged_in_run`), not in W&B's data
folder under the home directory, so an offline run holds all it uploads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import Logger, WandbLogger
from torch.utils.data import Dataset

from licexp.callbacks.gaps import Histogram
from licexp.loggers.media import (
    ValidationMedia,
    evaluated_images,
    first_logger,
    rank_zero_logger,
    read_table,
)


class WandbMedia(ValidationMedia):
    """Validation pictures for W&B: reconstructions beside originals, latent histograms.

    Logged at the step of each validation: ``val/reconstructions`` (the first
    ``reconstructions`` validation images | their reconstructions by the hard-quantised
    pass the ``val/*`` metrics come from) and, when :class:`GapMetrics` runs,
    ``val/latent_histogram`` and ``val/quantisation_error_histogram`` (``wandb.Histogram``)
    with their figures (``..._figure``). Does nothing without a W&B logger. Arguments as
    :class:`~licexp.loggers.media.ValidationMedia`'s.
    """

    def tracker(self, trainer: L.Trainer) -> WandbLogger | None:
        return rank_zero_logger(trainer, WandbLogger)

    def log_media(
        self,
        logger: WandbLogger,
        step: int,
        pairs: list[tuple[str, np.ndarray]],
        histograms: dict[str, Histogram],
    ) -> None:
        import wandb

        if pairs:
            names, images = zip(*pairs, strict=True)
            logger.log_image(
                "val/reconstructions",
                list(images),
                step=step,
                caption=[f"{name}: original | reconstruction" for name in names],
            )
        media: dict[str, Any] = {}
        for stem, histogram in histograms.items():
            media[f"val/{stem}"] = wandb.Histogram(
                np_histogram=(histogram.counts.numpy(), histogram.edges.numpy())
            )
            if histogram.figure is not None:
                media[f"val/{stem}_figure"] = wandb.Image(str(histogram.figure))
        if media:
            logger.log_metrics(media, step=step)


@contextmanager
def staged_in_run(logger: WandbLogger) -> Iterator[None]:
    """Stages the files of the W&B artifacts logged inside it (tables) in the run's own
    folder (``<run>/wandb/offline-run-*/artifacts/staging/``).

    wandb (0.31) copies them to ``$WANDB_DATA_DIR/artifacts/staging``, by default under the
    home directory, and its offline run records that path: ``wandb sync`` of a run folder
    from another machine would miss them. The variable is the only setting of that folder
    (read when an artifact is logged); it is restored on exit.
    """
    previous = os.environ.get("WANDB_DATA_DIR")
    os.environ["WANDB_DATA_DIR"] = logger.experiment.settings.sync_dir
    try:
        yield
    finally:
        if previous is None:
            del os.environ["WANDB_DATA_DIR"]
        else:
            os.environ["WANDB_DATA_DIR"] = previous


def log_evaluation(
    loggers: Sequence[Logger],
    summary: dict[str, float],
    eval_dir: Path,
    dataset: Dataset,
    step: int,
) -> None:
    """Sends an evaluation to W&B (see the module docstring); no-op without a W&B logger.

    Args:
        loggers: the loggers of this process (global rank 0's), searched for a W&B one.
        summary: the mean metrics :func:`~licexp.evaluation.evaluate.evaluate_codec` returns.
        eval_dir: its output directory (``per_image.csv``, ``reconstruction_<name>.png``,
            ``rd.png``).
        dataset: the evaluated images, in evaluation order (for the originals).
        step: the training step the evaluated model reached.
    """
    logger = first_logger(loggers, WandbLogger)
    if logger is None:
        return
    import wandb

    logger.experiment.summary.update({f"eval/{key}": value for key, value in summary.items()})
    images = evaluated_images(eval_dir, dataset)
    columns = [*images[0].row, "original | reconstruction"]
    data = [
        [*image.row.values(), None if image.pair is None else wandb.Image(image.pair)]
        for image in images
    ]
    with staged_in_run(logger):
        logger.log_table("eval/per_image", columns=columns, data=data, step=step)
    if (eval_dir / "rd.png").is_file():
        logger.log_image("eval/rd", [str(eval_dir / "rd.png")], step=step)


def log_rd(logger: WandbLogger, figure: Path, bd_table: Path) -> None:
    """Sends a sweep's RD figure (``rd/figure``) and BD table (``rd/bd``, from the CSV file
    ``bd_table``) to W&B."""
    logger.log_image("rd/figure", [str(figure)])
    columns, rows = read_table(bd_table)
    with staged_in_run(logger):
        logger.log_table("rd/bd", columns=columns, data=[list(row.values()) for row in rows])


def finish_wandb(loggers: Sequence[Logger], exit_code: int = 0) -> None:
    """Closes the W&B run of this process, if a W&B logger started one."""
    if not any(isinstance(logger, WandbLogger) for logger in loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
