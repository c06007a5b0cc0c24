"""Quantisation strategies: forward values and gradients against hand-computed cases."""

from __future__ import annotations

import pytest
import torch
from helpers import gaussian_table_model

from licexp.quant import (
    EntropyParameters,
    NoiseQuantization,
    StraightThroughQuantization,
    straight_through_round,
)

GAUSSIAN = gaussian_table_model()


def _unused_likelihood(value: torch.Tensor) -> torch.Tensor:
    raise AssertionError("this strategy must not evaluate the rate")


def test_straight_through_round_is_round_forward_and_identity_backward() -> None:
    x = torch.tensor([-1.7, -0.4, 0.49, 0.51, 2.5], requires_grad=True)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    y = straight_through_round(x)
    assert torch.equal(y, torch.round(x.detach()))
    (y * weights).sum().backward()
    assert torch.equal(x.grad, weights)


def test_ste_rounds_around_the_mean_for_rate_and_decoder_with_identity_gradient() -> None:
    y = torch.tensor([[0.2, 1.3, -2.6, 0.9]], requires_grad=True)
    mu = torch.tensor([[0.4, 0.0, -0.3, 0.45]])
    q = StraightThroughQuantization().quantize_train(
        y, EntropyParameters(torch.ones_like(y), mu), _unused_likelihood
    )
    expected = torch.round(y.detach() - mu) + mu  # [0.4, 1.0, -2.3, 0.45]
    assert torch.allclose(q.decoder_input, expected)
    assert torch.equal(q.rate_input, q.decoder_input)
    q.decoder_input.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))


def test_ste_without_mean_is_plain_rounding() -> None:
    y = torch.tensor([0.2, 1.6, -0.6])
    q = StraightThroughQuantization().quantize_train(
        y, EntropyParameters(torch.ones_like(y), None), _unused_likelihood
    )
    assert torch.equal(q.decoder_input, torch.tensor([0.0, 2.0, -1.0]))


def test_noise_is_uniform_on_the_open_half_interval() -> None:
    y = torch.zeros(200_000)
    q = NoiseQuantization().quantize_train(
        y, EntropyParameters(torch.ones_like(y), None), _unused_likelihood
    )
    u = q.rate_input
    assert torch.equal(q.rate_input, q.decoder_input)
    assert u.min() >= -0.5 and u.max() < 0.5
    # U(-1/2, 1/2): mean 0, variance 1/12, E|u| = 1/4; KS distance to the uniform CDF small.
    assert abs(u.mean().item()) < 0.005
    assert abs(u.var().item() - 1 / 12) < 0.002
    assert abs(u.abs().mean().item() - 0.25) < 0.003
    sorted_u, _ = torch.sort(u)
    empirical = torch.arange(1, u.numel() + 1) / u.numel()
    assert (empirical - (sorted_u + 0.5)).abs().max() < 0.01


def test_noise_passes_gradient_unchanged() -> None:
    y = torch.randn(10, requires_grad=True)
    NoiseQuantization().quantize_train(
        y, EntropyParameters(torch.ones_like(y), None), _unused_likelihood
    ).rate_input.sum().backward()
    assert torch.equal(y.grad, torch.ones(10))


@pytest.mark.parametrize(
    ("round_around_mean", "expected"),
    [(False, [1.0, -1.0, 2.0]), (True, [1.3, -1.7, 2.3])],
)
def test_noise_inference_rounds_plainly_or_around_the_mean(
    round_around_mean: bool, expected: list[float]
) -> None:
    y = torch.tensor([[0.9, -1.4, 2.2]])
    mu = torch.tensor([[0.3, 0.3, 0.3]])
    strategy = NoiseQuantization(round_around_mean=round_around_mean)
    parameters = EntropyParameters(torch.ones_like(y), mu)
    hard = strategy.symbol_coding.encode(y, parameters, GAUSSIAN)
    assert torch.allclose(hard.reconstruction, torch.tensor([expected]))
    offset = mu if round_around_mean else torch.round(mu)
    assert torch.equal(hard.symbols, torch.round(hard.reconstruction - offset).int())
    decoded = strategy.symbol_coding.decode(lambda indexes: hard.symbols, parameters, GAUSSIAN)
    assert torch.equal(decoded, hard.reconstruction)


def test_hyper_latent_follows_compressai_noise_for_rate_and_median_ste_for_decoder() -> None:
    z = torch.tensor([[0.2, 1.45, -0.9]], requires_grad=True)
    median = torch.tensor([[0.3, 0.3, 0.3]])
    q = StraightThroughQuantization().quantize_hyper_train(z, median)
    assert torch.allclose(q.decoder_input, torch.round(z.detach() - median) + median)
    assert ((q.rate_input - z).abs() <= 0.5).all()
    q.decoder_input.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
