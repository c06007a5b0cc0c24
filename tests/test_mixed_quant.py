"""Mixed quantisation: noise for the rate, STE around the mean for the decoder."""

from __future__ import annotations

import torch
from helpers import compose_train, gaussian_table_model
from hydra.utils import instantiate

from licexp.quant import EntropyParameters, ScalarSymbols
from licexp.quant.mixed import MixedQuantization

GAUSSIAN = gaussian_table_model()


def _unused_likelihood(value: torch.Tensor) -> torch.Tensor:
    raise AssertionError("mixed quantisation must not evaluate the rate")


def test_decoder_sees_ste_around_the_mean_with_identity_gradient() -> None:
    y = torch.tensor([[0.2, 1.3, -2.6, 0.9]], requires_grad=True)
    mu = torch.tensor([[0.4, 0.0, -0.3, 0.45]])
    q = MixedQuantization().quantize_train(
        y, EntropyParameters(torch.ones_like(y), mu), _unused_likelihood
    )
    assert torch.allclose(q.decoder_input, torch.tensor([[0.4, 1.0, -2.3, 0.45]]))
    q.decoder_input.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))


def test_rate_sees_uniform_noise_with_identity_gradient() -> None:
    y = torch.zeros(100_000, requires_grad=True)
    q = MixedQuantization().quantize_train(
        y, EntropyParameters(torch.ones_like(y), torch.full_like(y, 0.3)), _unused_likelihood
    )
    u = q.rate_input.detach()
    assert u.min() >= -0.5 and u.max() < 0.5
    assert abs(u.var().item() - 1 / 12) < 0.002
    assert not torch.equal(q.rate_input, q.decoder_input)
    q.rate_input.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))


def test_without_a_mean_the_decoder_sees_plain_rounding() -> None:
    y = torch.tensor([0.2, 1.6, -0.6])
    q = MixedQuantization().quantize_train(
        y, EntropyParameters(torch.ones_like(y), None), _unused_likelihood
    )
    assert torch.equal(q.decoder_input, torch.tensor([0.0, 2.0, -1.0]))


def test_inference_codes_the_decoders_training_value() -> None:
    y, mu = torch.tensor([0.9, -1.4, 2.2]), torch.tensor([0.3, 0.3, 0.3])
    strategy = MixedQuantization()
    assert strategy.symbol_coding == ScalarSymbols(centred=True)
    parameters = EntropyParameters(torch.ones_like(y), mu)
    training = strategy.quantize_train(y, parameters, _unused_likelihood).decoder_input
    hard = strategy.symbol_coding.encode(y[None], parameters.map(lambda t: t[None]), GAUSSIAN)
    assert torch.allclose(hard.reconstruction[0], training)


def test_config_builds_the_strategy() -> None:
    assert isinstance(instantiate(compose_train(["quant=mixed"]).quant), MixedQuantization)
