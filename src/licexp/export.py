"""A licexp checkpoint as a CompressAI state dict: ``licexp-export ckpt_path=... out=...``.

licexp's hyperprior backbones are CompressAI's models layer for layer::

    backbone=mean_scale  ->  compressai.models.MeanScaleHyperprior  (zoo: mbt2018-mean)
    backbone=bmshj2018   ->  compressai.models.ScaleHyperprior      (zoo: bmshj2018-hyperprior)

so the export renames the entropy models back (the inverse of
:data:`licexp.importers.COMPRESSAI_PREFIXES`), loads the weights into CompressAI's class
(strictly), builds its CDF tables from the stored quantiles (``update``) and saves its
state dict: a plain dict of tensors, which CompressAI's ``from_state_dict`` and
``eval_model checkpoint -a mbt2018-mean -p <file>`` load. The quantiles are the ones licexp
codes with (fitted on loading, :func:`~licexp.checkpoints.codec_from_checkpoint`), so the
model writes licexp's bytes.

Soft-STE's spectrally normalised ``g_a`` is folded into plain weights, ``W / sigma`` with
``sigma`` from the stored power-iteration vectors, the value licexp's encoder uses at
inference. Refused, with the reason: other backbones, and strategies whose bytes
CompressAI's models do not write (``tcq``'s trellis levels, ``noise``'s
``round(y) - round(mu)``, ``fourier_qecm``'s coded variable ``y - s(y)``). With
``backbone.channels_last_analysis=true`` licexp's encoder rounds its sums in another order,
so its bytes may differ from CompressAI's where a latent sits on a rounding boundary.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import compressai.models
import hydra
import torch
from compressai.models import CompressionModel
from omegaconf import DictConfig
from torch.nn.utils import parametrize

from licexp.backbones import LearnedCodec, MeanScaleHyperprior, ScaleHyperprior
from licexp.checkpoints import codec_from_checkpoint
from licexp.cli import hydra_command
from licexp.importers import COMPRESSAI_PREFIXES
from licexp.quant import QuantizationStrategy
from licexp.quant.symbols import ScalarSymbols

COMPRESSAI_MODELS: dict[type[LearnedCodec], tuple[type[CompressionModel], str]] = {
    MeanScaleHyperprior: (compressai.models.MeanScaleHyperprior, "mbt2018-mean"),
    ScaleHyperprior: (compressai.models.ScaleHyperprior, "bmshj2018-hyperprior"),
}
"""licexp backbone -> CompressAI's class and its architecture name in ``eval_model``."""


class ExportError(ValueError):
    """A codec whose bytes no CompressAI model writes."""


def compressai_key(key: str) -> str:
    """A licexp state-dict key under CompressAI's name."""
    for theirs, ours in COMPRESSAI_PREFIXES.items():
        if key.startswith(ours):
            return theirs + key.removeprefix(ours)
    return key


def check_exportable(codec: LearnedCodec) -> None:
    """Raises :class:`ExportError` naming why, unless a CompressAI model codes as ``codec``."""
    if type(codec) not in COMPRESSAI_MODELS:
        raise ExportError(
            f"{type(codec).__name__} has no CompressAI counterpart: only backbone=mean_scale "
            "(MeanScaleHyperprior) and backbone=bmshj2018 (ScaleHyperprior) export"
        )
    strategy = type(codec.quantizer)
    if (
        strategy.to_coded is not QuantizationStrategy.to_coded
        or strategy.from_coded is not QuantizationStrategy.from_coded
    ):
        raise ExportError(
            f"{strategy.__name__} codes a transformed latent (to_coded / from_coded), which "
            "CompressAI's models do not compute"
        )
    coding = codec.quantizer.symbol_coding
    if not isinstance(coding, ScalarSymbols):
        raise ExportError(
            f"{strategy.__name__} writes {type(coding).__name__} symbols; CompressAI's models "
            "write round(y - mu)"
        )
    if not coding.centred and isinstance(codec, MeanScaleHyperprior):
        raise ExportError(
            f"{strategy.__name__} codes round(y) - round(mu); CompressAI's MeanScaleHyperprior "
            "codes round(y - mu): pass quant=noise_plus (or quant=ste) to export these weights "
            "coded as CompressAI codes them"
        )


@torch.no_grad()
def folded(codec: LearnedCodec) -> LearnedCodec:
    """A copy of ``codec`` in eval mode whose parametrised weights (Soft-STE's spectral
    norm) are plain tensors holding their inference value."""
    plain = copy.deepcopy(codec).eval()
    for module in plain.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return plain


def compressai_model(codec: LearnedCodec) -> CompressionModel:
    """CompressAI's model with ``codec``'s weights, in eval mode, its CDF tables built.

    Raises :class:`ExportError` for a codec no CompressAI model reproduces.
    """
    check_exportable(codec)
    kind, _ = COMPRESSAI_MODELS[type(codec)]
    model = kind(codec.N, codec.M)
    state = {compressai_key(key): value for key, value in folded(codec).state_dict().items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ExportError(
            f"the weights of {type(codec).__name__} do not fit CompressAI's {kind.__name__}: "
            f"{error}"
        ) from error
    model.update(force=True)
    return model.eval()


def export(
    ckpt_path: str | Path,
    out: str | Path,
    quantizer: QuantizationStrategy | None = None,
    backbone: Mapping[str, Any] | None = None,
    trust: bool = False,
) -> str:
    """Writes the CompressAI state dict of a checkpoint to ``out``; returns its
    ``eval_model`` architecture name. ``quantizer``, ``backbone`` and ``trust`` are
    :func:`~licexp.checkpoints.codec_from_checkpoint`'s."""
    codec, _ = codec_from_checkpoint(ckpt_path, quantizer, backbone, trust)
    model = compressai_model(codec)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(model.state_dict()), out)
    if getattr(codec, "channels_last_analysis", False):
        print(
            "licexp-export: warning: the checkpoint's backbone.channels_last_analysis=true "
            "rounds g_a's sums in another order than CompressAI's model, whose bytes may then "
            "differ from licexp's at latents on a rounding boundary",
            file=sys.stderr,
        )
    return COMPRESSAI_MODELS[type(codec)][1]


@hydra_command("export", "licexp-export")
def main(cfg: DictConfig) -> None:
    swap = cfg.get("quant")
    quantizer = hydra.utils.instantiate(swap) if swap is not None else None
    architecture = export(
        cfg.ckpt_path, cfg.out, quantizer, cfg.get("backbone"), cfg.trust_checkpoint
    )
    print(
        f"wrote {cfg.out}: a CompressAI {architecture} state dict; evaluate it with "
        f"python -m compressai.utils.eval_model checkpoint <images> -a {architecture} "
        f"-p {cfg.out}"
    )


if __name__ == "__main__":
    main()
