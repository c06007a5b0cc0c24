"""RDOQ, TCQ's scalar baseline: the per-element choice against exhaustive search, its cost
against plain rounding, and real bitstreams."""

from __future__ import annotations

import itertools

import pytest
import torch
from golden_bitstreams import golden_codec, golden_image
from helpers import (
    check_straight_through_training,
    code_and_decode,
    compose_train,
    gaussian_table_model,
)
from hydra.utils import instantiate

from licexp.quant.rdoq import RateDistortionScalarQuantization, RateDistortionScalarSymbols

GAUSSIAN = gaussian_table_model()


def chain_cost(coding: RateDistortionScalarSymbols, residual, indices, scales) -> torch.Tensor:
    """The total cost of each index sequence ``indices [..., T]`` (an independent reference:
    squared error plus lambda times the code length of the Gaussian cell masses)."""
    distortion = (residual - indices * coding.step) ** 2
    lower, upper = (indices - 0.5) * coding.step, (indices + 0.5) * coding.step
    normal = torch.distributions.Normal(0.0, scales.clamp_min(0.11))
    mass = (normal.cdf(upper) - normal.cdf(lower)).clamp_min(1e-9)
    return (distortion - coding.rd_lambda * torch.log2(mass)).sum(-1)


@pytest.mark.parametrize("seed", range(4))
def test_rdoq_equals_the_exhaustive_minimum_over_floor_ceil_and_zero(seed) -> None:
    """Chains of 6 elements: the cheapest of all 3^6 sequences of floor, ceil or 0 per
    element is what the per-element choice picks, and costs what it costs."""
    generator = torch.Generator().manual_seed(seed)
    residual = (torch.rand(6, generator=generator, dtype=torch.float64) - 0.5) * 8
    scales = 0.2 + 3 * torch.rand(6, generator=generator, dtype=torch.float64)
    coding = RateDistortionScalarSymbols(step=0.7, rd_lambda=0.2 + seed * 0.3)
    chosen = coding.choose(residual, scales)
    options = torch.stack(
        [torch.floor(residual / 0.7), torch.ceil(residual / 0.7), torch.zeros(6)], dim=-1
    ).double()
    sequences = torch.tensor(list(itertools.product(range(3), repeat=6)))
    every = options.gather(1, sequences.T).T  # [3^6, T]
    costs = chain_cost(coding, residual, every, scales)
    assert chain_cost(coding, residual, chosen, scales).item() == pytest.approx(
        costs.min().item(), rel=1e-12
    )
    assert torch.equal(chosen, every[costs.argmin()])


def test_rdoq_never_costs_more_than_rounding_and_zeroes_more_as_lambda_grows() -> None:
    generator = torch.Generator().manual_seed(7)
    scales = 0.11 + 6 * torch.rand(20_000, generator=generator, dtype=torch.float64)
    residual = torch.randn(20_000, generator=generator, dtype=torch.float64) * scales
    zeros = []
    for rd_lambda in (0.0, 0.1, 0.5):
        coding = RateDistortionScalarSymbols(step=1.0, rd_lambda=rd_lambda)
        chosen = coding.choose(residual, scales)
        rounded = torch.round(residual)
        ours = chain_cost(coding, residual[:, None], chosen[:, None], scales[:, None])
        plain = chain_cost(coding, residual[:, None], rounded[:, None], scales[:, None])
        assert (ours <= plain + 1e-9).all()
        if rd_lambda == 0:
            assert torch.equal(chosen, rounded)
        else:
            assert ours.sum() < plain.sum()
        zeros.append((chosen == 0).sum().item())
    assert zeros[0] < zeros[1] < zeros[2]


@pytest.mark.parametrize("backbone", ["mean_scale", "tiny_lic"])
def test_rdoq_bitstreams_decode_bit_exactly(backbone) -> None:
    codec = golden_codec(backbone, "ste")
    codec.replace_quantizer(RateDistortionScalarQuantization(step=0.8, rd_lambda=0.3))
    codec.update(force=True)
    reference, bitstreams, decoded = code_and_decode(codec, golden_image())
    assert torch.equal(decoded, reference.x_hat)
    levels = (reference.latents["y_hat"] - reference.latents.get("means", 0)) / 0.8
    assert torch.allclose(levels, torch.round(levels), atol=1e-4)


def test_training_path_is_straight_through_rdoq_with_its_code_length() -> None:
    check_straight_through_training(RateDistortionScalarQuantization(step=1.0, rd_lambda=0.2))


@pytest.mark.parametrize(
    ("override", "message"),
    [("step=0", "quant.step must be > 0"), ("rd_lambda=-1", "quant.rd_lambda must be >= 0")],
)
def test_bad_rdoq_settings_name_the_setting(override, message) -> None:
    with pytest.raises(Exception, match=message):
        instantiate(compose_train(["quant=rdoq", f"quant.{override}"]).quant)
