"""What licexp sends to Weights & Biases beyond Lightning's scalars (``logger=wandb``).

Everything here acts only when a ``WandbLogger`` is attached, and only on global rank 0
(Lightning's loggers log from there); with other loggers it does nothing and never
imports ``wandb``. Scalars (losses, bpp, PSNR, the gap metrics) reach W&B through
``LightningModule.log`` like every logger's; this module adds:

* :class:`WandbMedia` (a callback): at each validation the first validation images next
  to their reconstructions, and the latent histograms of
  :class:`~licexp.callbacks.GapMetrics` as ``wandb.Histogram`` and as their PNG figures;
* :func:`log_evaluation`: the final real-bitstream evaluation as run summary
  (``eval/bpp``, ``eval/psnr``, ``eval/ms_ssim``, ...), a ``wandb.Table`` of the per-image
  results with originals next to reconstructions, and the RD figure;
* :func:`finish_wandb`: closes the run, so that the next job of a sweep gets its own.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from licexp.callbacks.gaps import GapMetrics
from licexp.training import CodecModule


def wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
    """The trainer's W&B logger on global rank 0; ``None`` without one or on other ranks."""
    if not trainer.is_global_zero:
        return None
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def side_by_side(original: Tensor, reconstruction: Tensor) -> np.ndarray:
    """``[3, H, W]`` images in ``[0, 1]`` as one 8-bit ``[H, 2W, 3]`` array, original left."""
    pair = torch.cat([original, reconstruction], dim=-1).detach().float().cpu().clamp(0, 1)
    return (pair * 255).round().byte().permute(1, 2, 0).numpy()


class WandbMedia(L.Callback):
    """Validation pictures for W&B: reconstructions beside originals, latent histograms.

    Logged at the step of each validation: ``val/reconstructions`` (the first
    ``reconstructions`` validation images | their reconstructions by the hard-quantised
    pass the ``val/*`` metrics come from) and, when :class:`GapMetrics` runs,
    ``val/latent_histogram`` and ``val/quantisation_error_histogram`` (``wandb.Histogram``)
    with their figures (``..._figure``). Does nothing without a W&B logger.

    Args:
        reconstructions: number of validation images shown (in validation order).
    """

    def __init__(self, reconstructions: int = 2) -> None:
        if reconstructions < 0:
            raise ValueError(f"reconstructions must be >= 0, got {reconstructions}")
        self.reconstructions = reconstructions
        self._pairs: list[tuple[str, np.ndarray]] = []

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
        if wanted <= 0 or trainer.sanity_checking or wandb_logger(trainer) is None:
            return
        x, output = module.last_step  # this batch's validation step
        for name, image, x_hat in list(zip(batch["name"], x, output.x_hat, strict=True))[:wanted]:
            self._pairs.append((name, side_by_side(image, x_hat)))

    def on_validation_end(self, trainer: L.Trainer, module: CodecModule) -> None:
        pairs, self._pairs = self._pairs, []
        logger = wandb_logger(trainer)
        if logger is None or trainer.sanity_checking:
            return
        import wandb

        step = trainer.global_step
        if pairs:
            names, images = zip(*pairs, strict=True)
            logger.log_image(
                "val/reconstructions",
                list(images),
                step=step,
                caption=[f"{name}: original | reconstruction" for name in names],
            )
        media: dict[str, Any] = {}
        for callback in trainer.callbacks:
            if not isinstance(callback, GapMetrics):
                continue
            for stem, histogram in callback.histograms.items():
                if histogram.step != step:
                    continue  # from an earlier validation
                media[f"val/{stem}"] = wandb.Histogram(
                    np_histogram=(histogram.counts.numpy(), histogram.edges.numpy())
                )
                if histogram.figure is not None:
                    media[f"val/{stem}_figure"] = wandb.Image(str(histogram.figure))
        if media:
            logger.log_metrics(media, step=step)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a per-image CSV, numbers as ints or floats."""

    def value(text: str) -> Any:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with path.open(encoding="utf-8", newline="") as handle:
        return [{key: value(text) for key, text in row.items()} for row in csv.DictReader(handle)]


def log_evaluation(
    trainer: L.Trainer, summary: dict[str, float], eval_dir: Path, dataset: Dataset
) -> None:
    """Sends the final evaluation to W&B (see the module docstring); no-op without W&B.

    Args:
        trainer: the trainer whose loggers are searched for a ``WandbLogger``.
        summary: the mean metrics :func:`~licexp.evaluation.evaluate.evaluate_codec` returns.
        eval_dir: its output directory (``per_image.csv``, ``reconstruction_<name>.png``,
            ``rd.png``).
        dataset: the evaluated images, in evaluation order (for the originals).
    """
    logger = wandb_logger(trainer)
    if logger is None:
        return
    import wandb

    logger.experiment.summary.update({f"eval/{key}": value for key, value in summary.items()})
    rows = read_rows(eval_dir / "per_image.csv")
    columns = [*rows[0], "original | reconstruction"]
    data = []
    for index, row in enumerate(rows):
        reconstruction = eval_dir / f"reconstruction_{row['name']}.png"
        picture = None
        if reconstruction.is_file():
            decoded = torch.from_numpy(np.array(Image.open(reconstruction).convert("RGB")))
            picture = wandb.Image(
                side_by_side(dataset[index]["image"], decoded.permute(2, 0, 1) / 255)
            )
        data.append([*row.values(), picture])
    step = trainer.global_step
    logger.log_table("eval/per_image", columns=columns, data=data, step=step)
    if (eval_dir / "rd.png").is_file():
        logger.log_image("eval/rd", [str(eval_dir / "rd.png")], step=step)


def finish_wandb(loggers: Sequence[Logger], exit_code: int = 0) -> None:
    """Closes the W&B run of this process, if a W&B logger started one."""
    if not any(isinstance(logger, WandbLogger) for logger in loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
