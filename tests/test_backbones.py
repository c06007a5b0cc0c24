"""Backbones x strategies: shapes, gradients, and bit-exact real coding."""

from __future__ import annotations

import pytest
import torch

from licexp.backbones import LearnedCodec, MeanScaleHyperprior, ScaleHyperprior
from licexp.quant import NoiseQuantization, QuantizationStrategy, StraightThroughQuantization
from licexp.training import RateDistortionLoss, split_parameters

BACKBONES = [MeanScaleHyperprior, ScaleHyperprior]
STRATEGIES = [
    NoiseQuantization,
    lambda: NoiseQuantization(round_around_mean=True),
    StraightThroughQuantization,
]


def tiny(backbone: type[LearnedCodec], strategy: QuantizationStrategy) -> LearnedCodec:
    return backbone(N=16, M=24, quantizer=strategy)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_training_forward_shapes_and_gradients(backbone, strategy) -> None:
    codec = tiny(backbone, strategy())
    x = torch.rand(2, 3, 64, 128)
    output = codec(x)
    assert output.x_hat.shape == x.shape
    assert output.likelihoods["y"].shape == (2, 24, 4, 8)
    assert output.likelihoods["z"].shape == (2, 16, 1, 2)
    for likelihoods in output.likelihoods.values():
        assert ((likelihoods > 0) & (likelihoods <= 1)).all()
    assert output.latents["y_hat"].shape == output.latents["y"].shape
    assert ("means" in output.latents) == (backbone is MeanScaleHyperprior)

    RateDistortionLoss(0.01)(output, x)["loss"].backward()
    main, aux = split_parameters(codec)
    assert len(aux) == 1, "only the EntropyBottleneck quantiles go to the aux optimiser"
    assert [p.shape for p in main if p.grad is None] == []
    transforms = [codec.g_a, codec.g_s, codec.h_a]
    if not isinstance(codec.quantizer, StraightThroughQuantization):
        # At initialisation STE rounds every |y - mu| < 1/2 onto the mean, where the pmf's
        # derivative w.r.t. mu vanishes, and the scales sit at the lower bound 0.11, which
        # passes no gradient downwards: h_s then legitimately receives none.
        transforms.append(codec.h_s)
    for transform in transforms:
        assert sum(p.grad.abs().sum() for p in transform.parameters()) > 0


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_real_bitstream_decodes_to_the_hard_quantised_forward_pass(backbone, strategy) -> None:
    codec = tiny(backbone, strategy()).eval()
    codec.update(force=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = codec(x)
        bitstreams = codec.compress(x)
        decoded = codec.decompress(bitstreams)
    assert set(bitstreams.strings) == {"y", "z"}
    assert all(len(strings) == 2 for strings in bitstreams.strings.values())
    assert torch.equal(decoded, reference.x_hat)


def test_eval_mode_latent_is_what_the_strategy_says_at_inference() -> None:
    codec = tiny(MeanScaleHyperprior, NoiseQuantization()).eval()
    with torch.no_grad():
        output = codec(torch.rand(1, 3, 64, 64))
    assert torch.equal(output.latents["y_hat"], torch.round(output.latents["y"]))
    codec.quantizer.round_around_mean = True
    with torch.no_grad():
        output = codec(torch.rand(1, 3, 64, 64))
    means = output.latents["means"]
    assert torch.allclose(output.latents["y_hat"], torch.round(output.latents["y"] - means) + means)
