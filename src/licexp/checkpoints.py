"""Reading licexp checkpoints: clear errors for missing, corrupt or foreign files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from torch import nn

from licexp.backbones import LearnedCodec
from licexp.backbones.base import resize_entropy_buffers
from licexp.quant import QuantizationStrategy

CONFIG_KEY = "licexp_config"
CODEC_PREFIX = "codec."


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or was not written by licexp."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a Lightning checkpoint written by licexp onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several unrelated types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} is not readable (truncated or corrupt?): "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    if CONFIG_KEY not in checkpoint:
        raise CheckpointError(f"{path} was not written by licexp (no {CONFIG_KEY!r} entry)")
    return checkpoint


def codec_from_checkpoint(
    path: str | Path, quantizer: QuantizationStrategy | None = None
) -> tuple[LearnedCodec, dict[str, Any]]:
    """Rebuilds the backbone with its quantiser from a checkpoint; returns it and the config.

    With ``quantizer`` the weights are loaded into the model as trained and the codec then
    codes with ``quantizer`` (:meth:`~licexp.backbones.LearnedCodec.replace_quantizer`).
    The codec is returned ready to code (:meth:`~licexp.backbones.LearnedCodec.prepare_for_coding`):
    in eval mode, its quantiles fitted, its CDF tables built for the strategy that codes.
    """
    checkpoint = read_checkpoint(path)
    config = checkpoint[CONFIG_KEY]
    trained = hydra.utils.instantiate(config["quant"])
    codec = hydra.utils.instantiate(config["backbone"], quantizer=trained)
    state = {
        key[len(CODEC_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(CODEC_PREFIX)
    }
    try:
        codec.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {path} does not match its backbone config: {error}"
        ) from error
    if quantizer is not None:
        codec.replace_quantizer(quantizer)
    codec.prepare_for_coding()
    return codec, config


def check_resumable(path: str | Path, backbone: Mapping[str, Any]) -> None:
    """Raises a clear error unless ``path`` is a licexp checkpoint of ``backbone``."""
    trained = read_checkpoint(path)[CONFIG_KEY].get("backbone")
    if trained != dict(backbone):
        raise CheckpointError(
            f"ckpt_path={path} holds a different backbone: it was trained with {trained}, "
            f"this run builds {dict(backbone)} (resume with the run's own settings)"
        )


def init_weights(module: nn.Module, path: str | Path, backbone: Mapping[str, Any]) -> None:
    """Loads a checkpoint's weights into ``module`` (a ``CodecModule``) to start a new run.

    Only the weights: optimiser, scheduler and step count start afresh (``ckpt_path`` resumes
    all of them instead). The checkpoint's resolved backbone config must equal ``backbone``.
    """
    checkpoint = read_checkpoint(path)
    trained = checkpoint[CONFIG_KEY].get("backbone")
    if trained != dict(backbone):
        raise CheckpointError(
            f"init_from={path} holds a different backbone: it was trained with {trained}, "
            f"this run builds {dict(backbone)}"
        )
    resize_entropy_buffers(module, checkpoint["state_dict"])
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"the weights of init_from={path} do not fit: {error}") from error


def find_last_checkpoint(log_dir: str | Path) -> Path:
    """The most recently written ``last.ckpt`` under ``log_dir`` (runs and multiruns)."""
    candidates = sorted(
        Path(log_dir).glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime
    )
    if not candidates:
        raise FileNotFoundError(
            f"no checkpoints/last.ckpt under {log_dir}: train a model first "
            "(`make train`) or pass ckpt_path=..."
        )
    return candidates[-1]
