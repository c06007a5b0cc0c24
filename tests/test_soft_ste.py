"""Soft-STE (Pan et al.): STE for the decoder, dequantised STE for the rate, SN on g_a."""

from __future__ import annotations

import hydra
import pytest
import torch
from helpers import CONF_DIR, code_and_decode
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.nn.utils import parametrize

from licexp.backbones import LearnedCodec, MeanScaleHyperprior, ScaleHyperprior
from licexp.backbones.hyperprior import gdn_synthesis
from licexp.backbones.latent_coders import GaussianLatentCoder
from licexp.quant import EntropyParameters
from licexp.quant.soft_ste import (
    SoftSTEQuantization,
    rate_gradient_sign,
    spectral_normalize_convolutions,
)
from licexp.training import RateDistortionLoss

BACKBONES = [MeanScaleHyperprior, ScaleHyperprior]
EPSILON = 1 / 12


def gaussian_likelihood(scales: Tensor, means: Tensor | None):
    """The Gaussian pmf of the backbones, with fixed entropy parameters."""
    coder = GaussianLatentCoder()
    return lambda value: coder.likelihood(value, scales, means)


def rate(likelihood_fn, value: Tensor) -> Tensor:
    return -torch.log2(likelihood_fn(value))


def latent_and_model(shape=(2, 8, 6, 6)) -> tuple[Tensor, Tensor, Tensor]:
    """A latent spread over several bins, means off the grid, scales around 1."""
    y = 3 * torch.randn(shape)
    means = torch.rand(shape) - 0.5
    scales = 0.5 + torch.rand(shape)
    return y, means, scales


def tiny(backbone: type[LearnedCodec], strategy: SoftSTEQuantization) -> LearnedCodec:
    return backbone(N=16, M=24, quantizer=strategy)


@pytest.mark.parametrize("dequantization", ["none", "uniform", "gaussian", "fgsm"])
@pytest.mark.parametrize("with_mean", [True, False])
def test_decoder_sees_exactly_ste_with_identity_gradient(dequantization, with_mean) -> None:
    y, means, scales = latent_and_model()
    means = means if with_mean else None
    y.requires_grad_(True)
    strategy = SoftSTEQuantization(dequantization=dequantization)
    q = strategy.quantize_train(
        y, EntropyParameters(scales, means), gaussian_likelihood(scales, means)
    )
    expected = torch.round(y.detach()) if means is None else torch.round(y.detach() - means) + means
    assert torch.equal(q.decoder_input, expected)
    assert y.grad is None, "the FGSM gradient must not reach the training graph's leaves"
    weights = torch.randn_like(y)
    (q.decoder_input * weights).sum().backward()
    assert torch.equal(y.grad, weights)
    y.grad = None
    (q.rate_input * weights).sum().backward()
    assert torch.equal(y.grad, weights), "xi is a constant: the rate's gradient is STE's"


def test_fgsm_perturbs_by_exactly_epsilon_where_the_rate_has_a_slope() -> None:
    y, means, scales = latent_and_model()
    y[0, 0] = means[0, 0]  # on the mode of the Gaussian: the rate is stationary there
    likelihood_fn = gaussian_likelihood(scales, means)
    q = SoftSTEQuantization(dequantization="fgsm").quantize_train(
        y, EntropyParameters(torch.ones_like(y), means), likelihood_fn
    )
    xi = q.rate_input - q.decoder_input
    on_mode = q.decoder_input == means
    assert on_mode[0, 0].all() and (~on_mode).sum() > 100
    assert torch.equal(xi[on_mode], torch.zeros_like(xi[on_mode]))
    assert torch.allclose(xi[~on_mode].abs(), torch.full_like(xi[~on_mode], EPSILON), atol=1e-6)


def test_fgsm_direction_increases_the_rate() -> None:
    y, means, scales = latent_and_model()
    likelihood_fn = gaussian_likelihood(scales, means)
    q = SoftSTEQuantization(dequantization="fgsm").quantize_train(
        y, EntropyParameters(torch.ones_like(y), means), likelihood_fn
    )
    y_hat = q.decoder_input
    xi = q.rate_input - y_hat
    up, here, down = (rate(likelihood_fn, v) for v in (y_hat + xi, y_hat, y_hat - xi))
    # Far in the tails the likelihood sits on CompressAI's lower bound (1e-9) and the rate is
    # flat there, although the bound passes the Gaussian's gradient on: compare elsewhere.
    ceiling = -torch.log2(torch.tensor(1e-9))
    below_bound = torch.stack([up, here, down]).amax(0) < ceiling - 1e-3
    moved = (xi != 0) & below_bound
    assert moved.sum() > 100
    assert up.sum() > here.sum() > down.sum()
    assert (up[moved] > here[moved]).all() and (up[moved] > down[moved]).all()
    # Against the analytic direction: a Gaussian pmf's rate grows away from its mean.
    assert torch.equal(torch.sign(xi[moved]), torch.sign(y_hat - means)[moved])


def test_fgsm_works_without_grad() -> None:
    y, means, scales = latent_and_model()
    likelihood_fn = gaussian_likelihood(scales, means)
    y_hat = torch.round(y - means) + means
    reference = rate_gradient_sign(y_hat, likelihood_fn)
    with torch.no_grad():
        assert torch.equal(rate_gradient_sign(y_hat, likelihood_fn), reference)
    assert not reference.requires_grad


def test_uniform_dequantisation_stays_in_the_bin_and_gaussian_has_the_chosen_std() -> None:
    y = torch.zeros(100_000)
    uniform = SoftSTEQuantization(dequantization="uniform").quantize_train(
        y, EntropyParameters(torch.ones_like(y), None), None
    )
    u = uniform.rate_input - uniform.decoder_input
    assert u.min() >= -0.5 and u.max() < 0.5
    assert abs(u.var().item() - 1 / 12) < 0.002

    default = SoftSTEQuantization(dequantization="gaussian")
    assert default.noise_scale == pytest.approx((1 / 12) ** 0.5)
    for scale in (default.noise_scale, 0.1):
        gaussian = SoftSTEQuantization(dequantization="gaussian", noise_scale=scale)
        g = gaussian.quantize_train(y, EntropyParameters(torch.ones_like(y), None), None)
        xi = g.rate_input - g.decoder_input
        assert abs(xi.mean().item()) < 0.005
        assert xi.std().item() == pytest.approx(scale, rel=0.01)


def test_none_is_plain_ste_for_rate_and_decoder() -> None:
    y, means, _ = latent_and_model()
    q = SoftSTEQuantization(dequantization="none").quantize_train(
        y, EntropyParameters(torch.ones_like(y), means), None
    )
    assert torch.equal(q.rate_input, q.decoder_input)


@pytest.mark.parametrize(
    "kwargs",
    [{"dequantization": "laplace"}, {"epsilon": 0.5}, {"epsilon": -0.1}, {"noise_scale": -1.0}],
)
def test_invalid_arguments_fail_clearly(kwargs) -> None:
    with pytest.raises(ValueError):
        SoftSTEQuantization(**kwargs)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_spectral_norm_wraps_every_encoder_convolution_and_nothing_else(backbone) -> None:
    codec = tiny(backbone, SoftSTEQuantization())
    convolutions = [m for m in codec.g_a.modules() if isinstance(m, nn.Conv2d)]
    assert len(convolutions) == 4
    assert all(parametrize.is_parametrized(m, "weight") for m in convolutions)
    for transform in (codec.g_s, codec.h_a, codec.h_s):
        assert not any(parametrize.is_parametrized(m) for m in transform.modules())
    plain = tiny(backbone, SoftSTEQuantization(spectral_norm=False))
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())


def _largest_singular_value(weight: Tensor, dim: int) -> float:
    matrix = weight.transpose(0, 1).flatten(1) if dim == 1 else weight.flatten(1)
    return torch.linalg.matrix_norm(matrix, 2).item()


def test_normalised_weights_have_spectral_norm_about_one() -> None:
    codec = tiny(MeanScaleHyperprior, SoftSTEQuantization())
    with torch.no_grad():
        for _ in range(3):  # each train-mode pass runs one power iteration per layer
            codec.g_a(torch.rand(1, 3, 64, 64))
    convolutions = [m for m in codec.g_a.modules() if isinstance(m, nn.Conv2d)]
    for conv in convolutions:
        original = conv.parametrizations.weight.original
        assert _largest_singular_value(original, 0) != pytest.approx(1.0, abs=0.1)
        assert 0.95 < _largest_singular_value(conv.weight, 0) < 1.1

    synthesis = gdn_synthesis(16, 24)  # transposed convolutions: weight [in, out, k, k]
    assert spectral_normalize_convolutions(synthesis) == 4
    assert spectral_normalize_convolutions(synthesis) == 0, "already wrapped layers are kept"
    with torch.no_grad():
        for _ in range(3):
            synthesis(torch.rand(1, 24, 4, 4))
    for deconv in [m for m in synthesis.modules() if isinstance(m, nn.ConvTranspose2d)]:
        assert 0.95 < _largest_singular_value(deconv.weight, 1) < 1.1


@pytest.mark.parametrize("updated", [False, True])
def test_state_dict_of_a_wrapped_codec_loads_into_a_fresh_one(updated) -> None:
    codec = tiny(MeanScaleHyperprior, SoftSTEQuantization())
    x = torch.rand(1, 3, 64, 64)
    codec(x)  # advance the power iterations: the buffers u, v differ from a fresh codec's
    codec.eval()
    if updated:
        codec.update(force=True)
    fresh = tiny(MeanScaleHyperprior, SoftSTEQuantization()).eval()
    fresh.load_state_dict(codec.state_dict())
    state, loaded = codec.state_dict(), fresh.state_dict()
    assert any(".parametrizations.weight." in key for key in state)
    assert state.keys() == loaded.keys()
    assert all(torch.equal(state[key], loaded[key]) for key in state)
    with torch.no_grad():
        assert torch.equal(fresh(x).x_hat, codec(x).x_hat)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_training_step_reaches_every_transform(backbone) -> None:
    codec = tiny(backbone, SoftSTEQuantization())
    with torch.no_grad():
        # Lift the predicted scales off CompressAI's lower bound 0.11, which passes no
        # gradient down to h_s (at initialisation the ReLU of bmshj2018's h_s often ends
        # there): then every transform must receive a gradient.
        codec.h_s[4].bias.add_(1.0)
    x = torch.rand(2, 3, 64, 64)
    output = codec(x)
    assert output.x_hat.shape == x.shape
    assert not torch.equal(output.latents["y_rate"], output.latents["y_hat"])
    RateDistortionLoss(0.01)(output, x)["loss"].backward()
    for transform in (codec.g_a, codec.g_s, codec.h_a, codec.h_s):
        assert sum(p.grad.abs().sum() for p in transform.parameters()) > 0
    original = codec.g_a[0].parametrizations.weight.original
    assert original.grad is not None and original.grad.abs().sum() > 0


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("dequantization", ["fgsm", "none"])
def test_real_bitstream_decodes_to_the_hard_quantised_forward_pass(
    backbone, dequantization
) -> None:
    codec = tiny(backbone, SoftSTEQuantization(dequantization=dequantization))
    codec(torch.rand(1, 3, 64, 64))  # one training pass moves the spectral-norm buffers
    codec.eval()
    codec.update(force=True)
    x = torch.rand(2, 3, 64, 64)
    reference, _, decoded = code_and_decode(codec, x)
    assert torch.equal(decoded, reference.x_hat)
    means = reference.latents.get("means")
    y = reference.latents["y"]
    expected = torch.round(y) if means is None else torch.round(y - means) + means
    assert torch.equal(reference.latents["y_hat"], expected)


@pytest.mark.parametrize(("option", "dequantization"), [("soft_ste", "fgsm"), ("ste_sn", "none")])
def test_configs_build_the_paper_settings(option, dequantization) -> None:
    strategy = hydra.utils.instantiate(OmegaConf.load(CONF_DIR / "quant" / f"{option}.yaml"))
    assert isinstance(strategy, SoftSTEQuantization)
    assert strategy.dequantization == dequantization
    assert strategy.spectral_norm
    assert strategy.epsilon == pytest.approx(1 / 12)
    assert strategy.noise_scale == pytest.approx((1 / 12) ** 0.5)
