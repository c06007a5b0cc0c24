"""Bitstreams of fixed seeded models: the golden record that pins the bytes every
strategy x backbone writes (``tests/data/bitstream_goldens.json``).

``python tests/golden_bitstreams.py`` rewrites the record; only a change that is meant to
alter the bytes may do that, and its commit says which entries changed and why.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from licexp.backbones import LearnedCodec, MeanScaleHyperprior, ScaleHyperprior, TinyLIC

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GOLDEN_PATH = Path(__file__).resolve().parent / "data" / "bitstream_goldens.json"
STRATEGIES = ("fourier_qecm", "mixed", "noise", "noise_plus", "soft_ste", "ste", "ste_sn")
BACKBONES = ("mean_scale", "bmshj2018", "tiny_lic")


def golden_strategy(name: str) -> torch.nn.Module:
    return hydra.utils.instantiate(OmegaConf.load(CONF_DIR / "quant" / f"{name}.yaml"))


def golden_codec(backbone: str, strategy: str) -> LearnedCodec:
    """A seeded, untrained small model whose latents span several bins (a scaled encoder)."""
    torch.manual_seed(1234)
    quantizer = golden_strategy(strategy)
    if backbone == "tiny_lic":
        codec: LearnedCodec = TinyLIC(
            N=16,
            M=24,
            depths=(1, 1, 1, 1),
            hyper_depths=(1, 1),
            kernel_size=3,
            hyper_kernel_size=1,
            quantizer=quantizer,
        )
        last_conv = codec.g_a[-2]
    else:
        family = MeanScaleHyperprior if backbone == "mean_scale" else ScaleHyperprior
        codec = family(N=16, M=24, quantizer=quantizer)
        last_conv = codec.g_a[-1]
    with torch.no_grad():
        weight = getattr(last_conv, "parametrizations", None)
        target = weight.weight.original if weight is not None else last_conv.weight
        target.mul_(20)
    codec.eval()
    codec.update(force=True)
    return codec


def golden_image() -> torch.Tensor:
    """A smooth 2-image batch of 64 x 128 pixels (upsampled seeded noise)."""
    generator = torch.Generator().manual_seed(99)
    low = torch.rand(2, 3, 9, 17, generator=generator)
    return torch.nn.functional.interpolate(low, size=(64, 128), mode="bicubic").clamp(0, 1)


def bitstream_digests(codec: LearnedCodec) -> dict[str, list[str]]:
    """SHA-256 of every string of the golden batch, by latent."""
    with torch.no_grad():
        bitstreams = codec.compress(golden_image())
    return {
        name: [hashlib.sha256(string).hexdigest() for string in strings]
        for name, strings in bitstreams.strings.items()
    }


def record() -> dict[str, dict[str, list[str]]]:
    return {
        f"{backbone}/{strategy}": bitstream_digests(golden_codec(backbone, strategy))
        for backbone in BACKBONES
        for strategy in STRATEGIES
    }


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    GOLDEN_PATH.parent.mkdir(exist_ok=True)
    GOLDEN_PATH.write_text(json.dumps(record(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN_PATH}")
