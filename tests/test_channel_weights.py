"""Per-channel distortion weights of TCQ and RDOQ (``quant.channel_weights``) and the synthesis
sensitivity that supplies them: the weighted searches against exhaustive search, a uniform
weight against a rescaled lambda, real bitstreams, and the Hutchinson estimate against the
exact Jacobian."""

from __future__ import annotations

import itertools

import pytest
import torch
from golden_bitstreams import golden_codec, golden_image
from helpers import code_and_decode, compose_train, quiet_trainer
from hydra.utils import instantiate
from test_tcq import exhaustive_minimum

from licexp.evaluation.bitstream import model_fingerprint
from licexp.quant.rdoq import RateDistortionScalarQuantization, RateDistortionScalarSymbols
from licexp.quant.sensitivity import measured_channel_weights, synthesis_sensitivity
from licexp.quant.symbols import EntropyParameters
from licexp.quant.tcq import TrellisCodedQuantization, TrellisSymbols
from licexp.quant.trellis import TRELLISES, reconstruction_level


@pytest.mark.parametrize("states", [4, 8])
@pytest.mark.parametrize("weight", [0.2, 3.0])
def test_weighted_tcq_search_is_the_exhaustive_minimum_of_the_weighted_cost(states, weight) -> None:
    """``w (v - level)^2 + lambda R`` over all 15^4 index sequences: the exact search finds its
    minimum, also for a small weight, whose exact window reaches farther."""
    generator = torch.Generator().manual_seed(states)
    alphabet = 7
    coding = TrellisSymbols(states=states, step=1.0, rd_lambda=0.8, channel_weights=(weight,))
    for _ in range(3):
        targets = (torch.rand(4, generator=generator, dtype=torch.float64) - 0.5) * 12
        scales = 0.2 + 3 * torch.rand(4, generator=generator, dtype=torch.float64)
        values = torch.arange(-alphabet, alphabet + 1).double()
        table = torch.stack(
            [
                weight * (targets[:, None] - reconstruction_level(values, q).double()) ** 2
                - coding.rd_lambda
                * torch.log2(coding.cell_likelihoods(values.expand(4, -1), q, scales[:, None]))
                for q in (0, 1)
            ],
            dim=1,
        )
        best = exhaustive_minimum(targets, table, TRELLISES[states], alphabet).item()
        weights = torch.full((1, 4), weight, dtype=torch.float64)
        path = coding.search_chains(targets[None], scales[None, :, None], weights)
        assert path.cost.item() == pytest.approx(best, rel=1e-12)


def latent(seed: int = 0) -> tuple[torch.Tensor, EntropyParameters]:
    """A ``[2, 3, 4, 6]`` latent with means and scales of a few steps."""
    generator = torch.Generator().manual_seed(seed)
    scales = 0.2 + 3 * torch.rand(2, 3, 4, 6, generator=generator)
    means = torch.randn(2, 3, 4, 6, generator=generator)
    return means + scales * torch.randn(2, 3, 4, 6, generator=generator), EntropyParameters(
        scales, means
    )


@pytest.mark.parametrize("kind", ["tcq", "rdoq"])
def test_a_uniform_weight_is_the_unweighted_choice_at_lambda_over_the_weight(kind) -> None:
    """``w D + lambda R`` and ``D + (lambda / w) R`` have the same minimiser."""
    coded, parameters = latent()
    if kind == "tcq":

        def indices(**settings):
            return TrellisSymbols(step=0.5, **settings).search(coded, parameters).indices

    else:

        def indices(**settings):
            coding = RateDistortionScalarSymbols(step=0.7, **settings)
            return coding.choose(parameters.centred(coded), parameters.scales)

    weighted = indices(rd_lambda=0.3, channel_weights=(2.5,) * 3)
    assert torch.equal(weighted, indices(rd_lambda=0.3 / 2.5))
    assert not torch.equal(weighted, indices(rd_lambda=0.3)), "the weight changes the choice"


def test_rdoq_weights_each_channel_with_its_own_weight() -> None:
    """Per element, the choice is the argmin of ``w_c (v - k step)^2 + lambda R`` over floor,
    ceil and 0, ``w_c`` the element's channel's weight (checked element by element)."""
    coded, parameters = latent(1)
    weights = (0.1, 1.0, 6.0)
    coding = RateDistortionScalarSymbols(step=0.7, rd_lambda=0.4, channel_weights=weights)
    residual = parameters.centred(coded)
    chosen = coding.choose(residual, parameters.scales)
    unweighted = RateDistortionScalarSymbols(step=0.7, rd_lambda=0.4)
    for b, c, h, w in itertools.product(*map(range, residual.shape)):
        v, scale = residual[b, c, h, w], parameters.scales[b, c, h, w]
        options = torch.stack([torch.floor(v / 0.7), torch.ceil(v / 0.7), torch.zeros(())])
        bits = -torch.log2(unweighted.cell_likelihoods(options, scale))
        cost = weights[c] * (v - options * 0.7) ** 2 + 0.4 * bits
        assert chosen[b, c, h, w] == options[cost.argmin()]
    zeros = [(chosen[:, c] == 0).float().mean().item() for c in range(3)]
    assert zeros[0] > zeros[2], "a channel the image cares little about is zeroed more"


@pytest.mark.parametrize("kind", ["tcq", "rdoq"])
def test_weighted_bitstreams_decode_bit_exactly(kind) -> None:
    """The weights change the encoder's choice only: the decoder, which never sees them,
    rebuilds the encoder's reconstruction exactly."""
    codec = golden_codec("mean_scale", "ste")
    channels = codec.g_s[0].weight.size(0)
    weights = torch.linspace(0.2, 3.0, channels).tolist()
    strategy = (
        TrellisCodedQuantization(rd_lambda=0.1, channel_weights=weights)
        if kind == "tcq"
        else RateDistortionScalarQuantization(rd_lambda=0.3, channel_weights=weights)
    )
    codec.replace_quantizer(strategy)
    codec.update(force=True)
    reference, _, decoded = code_and_decode(codec, golden_image())
    assert torch.equal(decoded, reference.x_hat)


@pytest.mark.parametrize("kind", ["tcq", "rdoq"])
def test_channel_weights_come_from_the_config_and_bad_ones_are_named(kind) -> None:
    config = compose_train([f"quant={kind}", "quant.channel_weights=[1,2,0.5]"])
    strategy = instantiate(config.quant)
    assert strategy.symbol_coding.channel_weights == (1.0, 2.0, 0.5)
    with pytest.raises(Exception, match="quant.channel_weights must all be > 0"):
        instantiate(compose_train([f"quant={kind}", "quant.channel_weights=[1,0]"]).quant)
    coded, parameters = latent()
    with pytest.raises(ValueError, match="channel_weights has 2 values, the latent 3 channels"):
        TrellisSymbols(channel_weights=(1.0, 2.0)).search(coded, parameters)


@pytest.mark.parametrize("kind", ["tcq", "rdoq"])
def test_the_default_sensitivity_weights_are_measured_when_the_codec_is_prepared(kind) -> None:
    """``quant=tcq`` and ``quant=rdoq`` default to ``channel_weights=sensitivity``: unweighted
    until ``prepare_for_coding`` measures them on this model (one weight per latent channel,
    mean 1, channels that differ), and the weighted bitstream decodes exactly."""
    strategy = instantiate(compose_train([f"quant={kind}"]).quant)
    assert strategy.measures_weights and strategy.symbol_coding.channel_weights is None
    codec = golden_codec("mean_scale", "ste")
    codec.replace_quantizer(strategy)
    codec.prepare_for_coding()
    weights = torch.tensor(strategy.symbol_coding.channel_weights)
    # Measured again, now at the weighted search's latent: the same to a fraction of a percent.
    assert weights.tolist() == pytest.approx(measured_channel_weights(codec), rel=1e-2)
    assert weights.numel() == codec.g_s[0].weight.size(0)
    assert weights.mean().item() == pytest.approx(1.0) and weights.std().item() > 0.05
    reference, _, decoded = code_and_decode(codec, golden_image())
    assert torch.equal(decoded, reference.x_hat)


def test_a_training_run_measures_the_weights_on_its_starting_model() -> None:
    """``on_fit_start`` calibrates: the weights are those of the model before its first step."""
    cfg = compose_train(["quant=tcq", "trainer.max_steps=1"])
    codec = golden_codec("mean_scale", "ste")
    codec.replace_quantizer(instantiate(cfg.quant))
    expected = measured_channel_weights(codec)
    module = instantiate(cfg.model, codec=codec)
    images = [{"image": image} for image in golden_image()]
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(module, torch.utils.data.DataLoader(images, batch_size=2))
    assert codec.quantizer.symbol_coding.channel_weights == pytest.approx(expected)


def test_the_weights_leave_the_model_fingerprint_alone() -> None:
    """A container's fingerprint covers what decoding depends on; the weights steer the
    encoder only, so a stream written with measured weights decodes with any weights."""
    codec = golden_codec("mean_scale", "ste")
    channels = codec.g_s[0].weight.size(0)
    fingerprints = set()
    for weights in (None, [1.0] * channels, torch.linspace(0.5, 2, channels).tolist()):
        codec.replace_quantizer(TrellisCodedQuantization(channel_weights=weights))
        fingerprints.add(model_fingerprint(codec))
    assert len(fingerprints) == 1
    codec.replace_quantizer(TrellisCodedQuantization(rd_lambda=0.1))
    assert model_fingerprint(codec) not in fingerprints, "a setting the tables use counts"


def test_a_context_model_searches_unweighted_and_refuses_weights_it_cannot_apply(
    caplog,
) -> None:
    """Tiny-LIC's stages search slices of the channels: ``sensitivity`` leaves its search
    unweighted with a warning naming the backbone, given weights are refused by name."""
    codec = golden_codec("tiny_lic", "ste")
    codec.replace_quantizer(TrellisCodedQuantization(channel_weights="sensitivity"))
    with caplog.at_level("WARNING", logger="licexp.quant.sensitivity"):
        codec.prepare_for_coding()
    assert "TinyLIC searches its context stages" in caplog.text
    assert codec.quantizer.symbol_coding.channel_weights is None
    reference, _, decoded = code_and_decode(codec, golden_image())
    assert torch.equal(decoded, reference.x_hat)
    codec.replace_quantizer(RateDistortionScalarQuantization(channel_weights=[1.0] * 24))
    with pytest.raises(ValueError, match="not supported by TinyLIC"):
        codec.prepare_for_coding()


def test_a_misspelt_channel_weights_setting_is_named() -> None:
    with pytest.raises(Exception, match="null, 'sensitivity' or one positive number"):
        instantiate(compose_train(["quant=tcq", "quant.channel_weights=sensitive"]).quant)


def small_codec() -> torch.nn.Module:
    codec = golden_codec("mean_scale", "ste")
    codec.update(force=True)
    return codec.double()


@pytest.mark.slow
def test_sensitivity_estimates_the_mean_squared_jacobian_column_norm_per_channel() -> None:
    """Against the exact Jacobian of ``g_s`` at the coded latent of a 64 x 64 image (every
    column by central differences): 400 probes agree within 15 % per channel, after both
    are scaled to mean 1."""
    codec = small_codec()
    with torch.no_grad():  # channels the decoder weighs differently, up to 25x in w_c
        weights = codec.g_s[0].weight
        weights *= torch.linspace(1, 5, weights.size(0), dtype=weights.dtype).view(-1, 1, 1, 1)
    image = golden_image()[:1, :, :, :64].double()
    estimate = synthesis_sensitivity(codec, [image], probes=400)
    with torch.no_grad():
        y_hat = codec.eval()(image).latents["y_hat"]
    # Every column by central differences in float64 (GDN's bound has no forward-mode rule).
    basis = torch.eye(y_hat.numel(), dtype=y_hat.dtype).reshape(-1, *y_hat.shape[1:])
    with torch.no_grad():
        step = 1e-6
        jacobian = (codec.g_s(y_hat + step * basis) - codec.g_s(y_hat - step * basis)) / (2 * step)
    columns = jacobian.pow(2).sum(dim=(1, 2, 3)).reshape(y_hat.shape[1:])  # [C, h, w]
    exact = columns.mean(dim=(1, 2))
    exact = exact / exact.mean()
    assert estimate.shape == exact.shape and estimate.mean().item() == pytest.approx(1.0)
    assert torch.allclose(estimate, exact, rtol=0.15), (estimate, exact)
    assert exact.max() / exact.min() > 10, "channels differ, so the check can tell them apart"
