"""Every backbone config starts with activations of order one: an untrained codec's latent
``y``, its reconstruction and (Jiang et al.) the features of the feature loss stay within a
bound on a real photo. Tiny-LIC itself starts at standard deviations of about 1; Jiang et
al.'s ``jiang`` with PyTorch's default initialisation started at 28 (``y``) and 237
(``x_hat``), because each concatenated residual module doubles its input
(:mod:`licexp.backbones.concatenated_residual`)."""

from __future__ import annotations

import hydra
import pytest
import torch
from helpers import CONF_DIR, compose_train

from licexp.backbones import LearnedCodec
from licexp.data import PhotoSamples

BACKBONES = sorted(path.stem for path in (CONF_DIR / "backbone").glob("*.yaml"))
BOUND = 10.0
"""Largest standard deviation allowed at initialisation: Tiny-LIC's are about 1.3 at most."""
FULL_FORWARD_FACTOR = 64
"""Codecs padding to more than this (the paper-size Tiny-LIC family, 256) need 256x256
images, several seconds a forward pass here; they are checked through ``g_a`` and ``g_s``
on a 128x128 photo instead, their hyper transforms by their CPU-size configs."""


def untrained(name: str) -> LearnedCodec:
    """The backbone of ``conf/backbone/<name>.yaml``; ``<name>+icrsa``: with ICRSA units."""
    name, _, unit = name.partition("+")
    cfg = compose_train(
        [f"backbone={name}", "quant=noise"] + ([f"+backbone.unit={unit}"] if unit else [])
    )
    torch.manual_seed(0)
    return hydra.utils.instantiate(cfg.backbone, quantizer=hydra.utils.instantiate(cfg.quant))


@pytest.mark.slow
@pytest.mark.parametrize("name", [*BACKBONES, "tiny_lic_small+icrsa"])
@torch.no_grad()
def test_an_untrained_codec_starts_with_activations_of_order_one(name) -> None:
    codec = untrained(name).eval()
    full = codec.downsampling_factor <= FULL_FORWARD_FACTOR
    side = codec.downsampling_factor if full else 128
    x = PhotoSamples(["coffee"], crop_size=side)[0]["image"][None]
    if full:
        output = codec(x)
        y, x_hat, features = output.latents["y"], output.x_hat, output.features
    else:
        y = codec.g_a(x)
        x_hat = codec.g_s(y.round())
        features = {}
    spreads = {"y": y.std().item(), "x_hat": x_hat.std().item()}
    spreads |= {name: feature.std().item() for name, feature in features.items()}
    assert all(0 < spread < BOUND for spread in spreads.values()), spreads
    if features:
        feature_mse = (features["enhanced"] - features["refined"]).square().mean().item()
        assert feature_mse < BOUND**2, feature_mse
