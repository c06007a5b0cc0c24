"""Evaluate a checkpoint on real bitstreams: ``python -m licexp.eval [ckpt_path=...] [data=...]``.

Rebuilds the backbone and quantiser from the configuration stored in the checkpoint,
codes every image of ``data.test`` with the rANS coder, checks each decode, and writes
CompressAI-schema JSON, a per-image CSV, the bitstreams and reconstructions. With
``quant=<strategy>`` the trained weights are coded with another strategy at inference
(``quant=tcq quant.rd_lambda=0.05``): the results are named ``<run>+<strategy>``. With
``images=<folder>`` the images of that folder are evaluated instead of ``data.test``.
An image that cannot be read or coded is skipped with its error in ``per_image.csv`` and
``results.json``; the command writes the other results, then exits with status 1.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from licexp.checkpoints import codec_from_checkpoint, find_last_checkpoint
from licexp.cli import hydra_command
from licexp.data import ImageFolder
from licexp.evaluation.evaluate import EvaluationError, evaluate_codec

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluates the configured checkpoint; returns the mean metrics.

    Raises:
        EvaluationError: an image was skipped (after every result is written).
    """
    ckpt_path = Path(cfg.ckpt_path or find_last_checkpoint(cfg.paths.log_dir))
    log.info("Evaluating %s", ckpt_path)
    swap = cfg.get("quant")
    quantizer = hydra.utils.instantiate(swap) if swap is not None else None
    codec, run_config = codec_from_checkpoint(
        ckpt_path, quantizer, cfg.get("backbone"), cfg.trust_checkpoint
    )
    name = run_config.get("run_name", ckpt_path.stem)
    if swap is not None:
        name = f"{name}+{HydraConfig.get().runtime.choices.get('quant', 'quant')}"
        log.info("Coding with %s instead of the trained strategy", quantizer)
    if cfg.get("images") is not None:
        dataset = ImageFolder(cfg.images)
    else:
        dataset = hydra.utils.instantiate(cfg.data.test or cfg.data.val)
    source = getattr(dataset, "root", None) or type(dataset).__name__
    log.info("Evaluating %d images from %s", len(dataset), source)
    output_dir = Path(cfg.paths.output_dir)
    summary = evaluate_codec(
        codec,
        dataset,
        output_dir,
        name=name,
        anchors=cfg.anchors,
        reconstructions=cfg.reconstructions,
        padding=cfg.padding,
        anchors_source=cfg.anchors_source,
        anchors_cache=cfg.anchors_cache,
        published_anchors=cfg.published_anchors,
    )
    log.info(
        "Done: results %s; per image %s", output_dir / "results.json", output_dir / "per_image.csv"
    )
    skipped = int(summary["images_skipped"])
    if skipped:
        raise EvaluationError(
            f"{skipped} of {len(dataset)} images could not be read or coded and were skipped "
            f"(listed above, and in per_image.csv and results.json); the results cover the "
            f"other {len(dataset) - skipped}"
        )
    return summary


@hydra_command("eval", "licexp-eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
