"""Reading licexp checkpoints: clear errors for missing, corrupt or foreign files."""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch

from licexp.backbones import LearnedCodec
from licexp.backbones.base import resize_entropy_buffers
from licexp.importers import imported_state
from licexp.quant import QuantizationStrategy

log = logging.getLogger(__name__)

CONFIG_KEY = "licexp_config"
CODEC_PREFIX = "codec."
ATTACHED_KEY = "attached_quant"
"""Run-config entry: the strategy whose ``attach`` shaped the modules, when it is not the
strategy the run trains and codes with (a stage-2 run keeps stage 1's, e.g. Soft-STE's
spectrally normalised encoder)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or was not written by licexp."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that needs more than tensors and plain containers to load: a pickle
    that may run code, refused unless the user trusts its source."""


TRUST_OPTION = "trust_checkpoint=true"
"""The opt-in that loads a checkpoint with full pickle (the training and evaluation
commands' setting; ``licexp-codec`` spells it ``--trust-checkpoint``)."""

_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_file(path: str | Path, trust: bool = False, opt_in: str = TRUST_OPTION) -> Any:
    """``torch.load`` of a checkpoint onto the CPU, with clear errors.

    A file is read with ``weights_only=True``: tensors, numbers, strings and plain
    containers, all that licexp, Lightning and the released state dicts store. A pickle
    asking for any other type could run code while loading; it is refused with
    :class:`UntrustedCheckpointError` naming the type, unless ``trust`` (``opt_in`` is the
    option that sets it, named in the message), which loads it the old way with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if trust:
        log.warning("Loading %s with full pickle (%s): it can run code", path, opt_in)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        unsafe = _UNSAFE_GLOBAL.search(str(error))
        if unsafe is None:
            raise _unreadable(path, error) from error
        raise UntrustedCheckpointError(
            f"checkpoint {path} asks to load {unsafe[1]}, which is not a tensor or a plain "
            f"container: loading it could run code. Refused; if you trust where the file "
            f"came from, pass {opt_in}"
        ) from None
    except Exception as error:  # torch raises several unrelated types for a damaged file
        raise _unreadable(path, error) from error


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is not readable (truncated or corrupt?): "
        f"{type(error).__name__}: {error}"
    )


def is_licexp(checkpoint: Any) -> bool:
    return isinstance(checkpoint, dict) and CONFIG_KEY in checkpoint


def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """Loads a Lightning checkpoint written by licexp onto the CPU; ``trust``: :func:`load_file`."""
    return checked_licexp(load_file(path, trust), path)


def checked_licexp(checkpoint: Any, path: str | Path) -> dict[str, Any]:
    """``checkpoint`` (loaded from ``path``) if it is a licexp checkpoint; else a clear error."""
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    if CONFIG_KEY not in checkpoint:
        raise CheckpointError(f"{path} was not written by licexp (no {CONFIG_KEY!r} entry)")
    return checkpoint


def codec_state(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The codec's entries of a CodecModule checkpoint's ``state_dict``, unprefixed."""
    return {
        key[len(CODEC_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(CODEC_PREFIX)
    }


def codec_from_checkpoint(
    path: str | Path,
    quantizer: QuantizationStrategy | None = None,
    backbone: Mapping[str, Any] | None = None,
    trust: bool = False,
    opt_in: str = TRUST_OPTION,
) -> tuple[LearnedCodec, dict[str, Any]]:
    """Rebuilds the backbone with its quantiser from a checkpoint; returns it and the config.

    With ``quantizer`` the weights are loaded into the model as trained and the codec then
    codes with ``quantizer`` (:meth:`~licexp.backbones.LearnedCodec.replace_quantizer`).
    The codec is returned ready to code (:meth:`~licexp.backbones.LearnedCodec.prepare_for_coding`):
    in eval mode, its quantiles fitted, its CDF tables built for the strategy that codes.
    A state dict of the Tiny-LIC release or CompressAI's zoo (:mod:`licexp.importers`) has no
    config: ``backbone`` (a backbone config) says what it is, and it codes with ``quantizer``
    or, by default, ``ste`` (rounding around the mean, as both implementations decode).
    ``trust`` and ``opt_in``: :func:`load_file`.
    """
    loaded = load_file(path, trust, opt_in)
    if not is_licexp(loaded):
        return _foreign_codec(loaded, Path(path), quantizer, backbone)
    checkpoint = checked_licexp(loaded, path)
    config = checkpoint[CONFIG_KEY]
    codec = build_codec(config["backbone"], config["quant"], config.get(ATTACHED_KEY))
    state = codec_state(checkpoint)
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


def build_codec(
    backbone: Mapping[str, Any],
    quant: Mapping[str, Any],
    attached: Mapping[str, Any] | None = None,
) -> LearnedCodec:
    """The backbone with the strategy ``attached`` attached, coding with ``quant``.

    ``attached`` (default: ``quant``) decides the modules' parametrisation, so that weights
    trained with it load (:attr:`ATTACHED_KEY`); the codec then trains and codes with
    ``quant`` (:meth:`~licexp.backbones.LearnedCodec.replace_quantizer`).
    """
    quantizer = hydra.utils.instantiate(quant)
    if attached is None or dict(attached) == dict(quant):
        return hydra.utils.instantiate(backbone, quantizer=quantizer)
    codec = hydra.utils.instantiate(backbone, quantizer=hydra.utils.instantiate(attached))
    codec.replace_quantizer(quantizer)
    return codec


def attached_quant(config: Mapping[str, Any]) -> dict[str, Any]:
    """The strategy whose ``attach`` shaped the modules of a checkpoint with run ``config``."""
    return config.get(ATTACHED_KEY) or config["quant"]


def check_backbone(
    config: Mapping[str, Any], backbone: Mapping[str, Any], option: str, hint: str = ""
) -> None:
    """Raises a clear error unless a checkpoint's run ``config`` was trained as ``backbone``;
    ``option`` (``"ckpt_path=<path>"``) names where the checkpoint came from."""
    trained = config.get("backbone")
    if trained != dict(backbone):
        raise CheckpointError(
            f"{option} holds a different backbone: it was trained with {trained}, "
            f"this run builds {dict(backbone)}{hint}"
        )


RESUME_KEYS = ("backbone", "quant", "lmbda")
"""What a resumed run must share with its checkpoint unless ``resume.allow_changes=true``."""


def check_resumable(
    path: str | Path,
    run_config: Mapping[str, Any],
    allow_changes: bool = False,
    trust: bool = False,
) -> dict[str, Any]:
    """The run config of ``path``; a clear error unless it was trained with the same
    backbone, quantiser and lambda as ``run_config`` (:data:`RESUME_KEYS`), naming the
    stored and the given value. ``allow_changes`` accepts a changed quantiser or lambda;
    a changed backbone only where the weights fit (Lightning checks that on loading).
    ``trust``: :func:`load_file`."""
    config = read_checkpoint(path, trust)[CONFIG_KEY]
    if allow_changes:
        return config
    for key in RESUME_KEYS:
        stored, given = config.get(key), run_config.get(key)
        if stored != given:
            raise CheckpointError(
                f"ckpt_path={path} was trained with {key}={stored}, this run asks for "
                f"{key}={given}: resume with the run's own settings, start a new run from its "
                f"weights with init_from=..., or pass resume.allow_changes=true"
            )
    return config


def _foreign_codec(
    loaded: Any,
    path: Path,
    quantizer: QuantizationStrategy | None,
    backbone: Mapping[str, Any] | None,
) -> tuple[LearnedCodec, dict[str, Any]]:
    """A codec of ``backbone`` with the weights of a foreign state dict."""
    if backbone is None:
        raise CheckpointError(
            f"{path} is not a licexp checkpoint; a state dict of the Tiny-LIC release or "
            "CompressAI's zoo needs the backbone it fits: backbone=tiny_lic, mean_scale or "
            "bmshj2018"
        )
    quant = {"_target_": "licexp.quant.StraightThroughQuantization"}
    codec = build_codec(backbone, quant)
    try:
        codec.load_state_dict(imported_state(loaded, codec, str(path)))
    except ValueError as error:
        raise CheckpointError(str(error)) from error
    if quantizer is not None:
        codec.replace_quantizer(quantizer)
    codec.prepare_for_coding()
    return codec, {"run_name": path.name, "backbone": dict(backbone), "quant": quant}


def trained_config(path: str | Path, trust: bool = False) -> dict[str, Any] | None:
    """The run config of a licexp checkpoint; ``None`` for an importable foreign state dict."""
    loaded = load_file(path, trust)
    if is_licexp(loaded):
        return checked_licexp(loaded, path)[CONFIG_KEY]
    return None


def init_weights(
    codec: LearnedCodec, path: str | Path, backbone: Mapping[str, Any], trust: bool = False
) -> None:
    """Loads a checkpoint's codec weights into ``codec`` to start a new run.

    Only the weights: optimiser, scheduler and step count start afresh (``ckpt_path`` resumes
    all of them instead). The checkpoint's resolved backbone config must equal ``backbone``;
    a state dict of the Tiny-LIC release or CompressAI's zoo (:mod:`licexp.importers`) must
    fit it. ``trust``: :func:`load_file`.
    """
    loaded = load_file(path, trust)
    if not is_licexp(loaded):
        try:
            codec.load_state_dict(imported_state(loaded, codec, f"init_from={path}"))
        except ValueError as error:
            raise CheckpointError(str(error)) from error
        return
    checkpoint = checked_licexp(loaded, path)
    check_backbone(checkpoint[CONFIG_KEY], backbone, f"init_from={path}")
    state = codec_state(checkpoint)
    resize_entropy_buffers(codec, state)
    try:
        codec.load_state_dict(state)
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
