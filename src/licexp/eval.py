"""Evaluate a checkpoint on real bitstreams: ``python -m licexp.eval [ckpt_path=...] [data=...]``.

Rebuilds the backbone and quantiser from the configuration stored in the checkpoint,
codes every image of ``data.test`` with the rANS coder, checks each decode, and writes
CompressAI-schema JSON, a per-image CSV, the bitstreams and reconstructions. With
``quant=<strategy>`` the trained weights are coded with another strategy at inference
(``quant=tcq quant.rd_lambda=0.05``): the results are named ``<run>+<strategy>``. With
``images=<folder>`` the images of that folder are evaluated instead of ``data.test``.
An image that cannot be read or coded is skipped with its error in ``per_image.csv`` and
``results.json``; the command writes the other results, then exits with status 1.
With ``logger=wandb`` (an offline run in ``<eval dir>/wandb/``) or ``logger=tensorboard``
the results also go to that tracker (:mod:`licexp.loggers`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import Dataset

from licexp.checkpoints import codec_from_checkpoint, find_last_checkpoint
from licexp.cli import hydra_command
from licexp.config import instantiate_collection
from licexp.data import ImageFolder
from licexp.evaluation.evaluate import EvaluationError, evaluate_codec
from licexp.loggers import finish_wandb, log_evaluation

log = logging.getLogger(__name__)


def evaluation_loggers(cfg: DictConfig, name: str, run_config: dict[str, Any]) -> list[Logger]:
    """The loggers of ``logger=`` (none by default), named after the evaluated run.

    ``run_name`` and ``lmbda`` (W&B's run name and lambda tag) are the checkpoint's unless
    set; a tag with no value is left out (the backbone and quant choices of an evaluation
    that keeps the checkpoint's own).
    """
    with open_dict(cfg):
        cfg.run_name = cfg.run_name or name
        cfg.lmbda = cfg.lmbda if cfg.lmbda is not None else run_config.get("lmbda")
    for config in (cfg.get("logger") or {}).values():
        if config is not None and config.get("tags") is not None:
            config.tags = [tag for tag in config.tags if tag is not None]
    return instantiate_collection(cfg.get("logger"))


def log_to_trackers(
    cfg: DictConfig,
    name: str,
    ckpt_path: Path,
    run_config: dict[str, Any],
    summary: dict[str, float],
    output_dir: Path,
    dataset: Dataset,
) -> None:
    """Sends the evaluation to the trackers of ``logger=``: the checkpoint, the evaluation's
    config (as written, since its ``data.train`` refers to training-only keys) and the
    evaluated run's (``trained``) as hyperparameters, the results as
    :func:`licexp.loggers.log_evaluation` says."""
    loggers = evaluation_loggers(cfg, name, run_config)
    status = "failed"
    try:
        config = {
            "ckpt_path": str(ckpt_path),
            "evaluation": OmegaConf.to_container(cfg),
            "trained": run_config,
        }
        for logger in loggers:
            logger.log_hyperparams(config)
        log_evaluation(loggers, summary, output_dir, dataset, step=0)
        status = "failed" if summary["images_skipped"] else "success"
    finally:
        for logger in loggers:
            logger.finalize(status)
        finish_wandb(loggers, exit_code=int(status != "success"))


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
    log_to_trackers(cfg, name, ckpt_path, run_config, summary, output_dir, dataset)
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
