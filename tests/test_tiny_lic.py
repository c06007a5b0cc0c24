"""Tiny-LIC: the paper's size, the context model's causality, every strategy, real bitstreams."""

from __future__ import annotations

import hydra
import pytest
import torch
from helpers import SHARED_DIR, code_and_decode, compose_train, option_names, payload_bpp

from licexp.backbones import TinyLIC
from licexp.backbones.multistage_context import (
    PLANES,
    STAGES,
    MultistageContextModel,
    Stage,
    cosine_slices,
)
from licexp.backbones.tiny_lic import minimum_side, padding_multiple
from licexp.data import PhotoSamples
from licexp.data.images import load_rgb
from licexp.evaluation.codec import code_image
from licexp.quant import EntropyParameters, QuantizationStrategy
from licexp.training import RateDistortionLoss

STRATEGIES = option_names("quant")


def strategy(name: str) -> QuantizationStrategy:
    return hydra.utils.instantiate(compose_train([f"quant={name}"]).quant)


def small_tiny_lic(quant: str, **overrides) -> TinyLIC:
    """A few-thousand-parameter Tiny-LIC: 3x3 and 1x1 neighbourhoods, sides in multiples of 64."""
    settings = dict(
        N=16, M=24, depths=(1, 1, 1, 1), hyper_depths=(1, 1), kernel_size=3, hyper_kernel_size=1
    )
    return TinyLIC(**{**settings, **overrides}, quantizer=strategy(quant))


def test_paper_setting_has_28_3m_parameters_and_the_published_structure() -> None:
    cfg = compose_train(["backbone=tiny_lic"])
    codec = hydra.utils.instantiate(cfg.backbone, quantizer=strategy("ste"))
    assert sum(p.numel() for p in codec.parameters()) == pytest.approx(28.3e6, rel=0.01)
    assert codec.context_model.slices == [24, 69, 104, 123]
    assert codec.downsampling_factor == 256 and codec.minimum_side == 192
    heads = [m.attn.num_heads for m in codec.g_a.modules() if hasattr(m, "attn")]
    assert heads == [8] * 2 + [12] * 2 + [16] * 6 + [20] * 2
    kernels = {m.attn.kernel_size for m in codec.h_s.modules() if hasattr(m, "attn")}
    assert kernels == {3}
    assert codec.h_s[-1].out_channels == 640 and codec.g_s[-1].out_channels == 3


def test_cosine_slices_scale_with_the_latent_and_refuse_empty_ones() -> None:
    assert cosine_slices(320) == [24, 69, 104, 123]
    assert cosine_slices(64) == [4, 14, 21, 25]
    assert cosine_slices(24) == [1, 6, 7, 10]
    with pytest.raises(ValueError, match="too small"):
        cosine_slices(3)


def test_padding_is_the_smallest_power_of_two_that_fits_every_attention_map() -> None:
    assert minimum_side(7, 3) == 192 and padding_multiple(7, 3) == 256
    assert minimum_side(3, 1) == 64 and padding_multiple(3, 1) == 64
    assert padding_multiple(5, 1) == 128  # y at 1/16 needs 5x5: sides >= 80
    assert padding_multiple(3, 3) == 256


def test_images_too_small_or_off_the_multiple_are_refused_clearly() -> None:
    codec = small_tiny_lic("ste", hyper_kernel_size=3)
    with pytest.raises(ValueError, match="at least 192"):
        codec(torch.rand(1, 3, 128, 256))
    with pytest.raises(ValueError, match="divisible by 256"):
        codec(torch.rand(1, 3, 256, 320))
    with pytest.raises(ValueError, match="at least 64"):
        small_tiny_lic("ste").compress(torch.rand(1, 3, 32, 64))


def test_stages_code_every_position_of_every_slice_once_in_the_published_order() -> None:
    assert len(STAGES) == 9
    for index in range(4):
        planes = [p for stage in STAGES if stage.slice_index == index for p in stage.planes]
        assert sorted(planes) == [0, 1, 2, 3]
    first = [PLANES[stage.planes[0]] for stage in STAGES if stage.slice_index == 0]
    assert first == [(0, 0), (1, 1), (0, 1), (1, 0)]

    def anchors(index: int) -> set[int]:
        stage = next(s for s in STAGES if s.slice_index == index)
        return {sum(PLANES[p]) % 2 for p in stage.planes}

    assert anchors(1) == {1} and anchors(2) == {0}  # opposite checkerboards


def test_entropy_parameters_of_a_stage_depend_on_earlier_stages_only() -> None:
    torch.manual_seed(0)
    model = MultistageContextModel(M=24, hyper_channels=8)
    hyper, y = torch.randn(1, 8, 6, 8), torch.randn(1, 24, 6, 8)

    def parameters(latent: torch.Tensor) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []

        def code_stage(stage: Stage, parameters: EntropyParameters) -> torch.Tensor:
            seen.append(torch.cat([parameters.scales, parameters.means]))
            return model.select(stage, latent)

        with torch.no_grad():
            model.decode(hyper, code_stage)
        return seen

    reference = parameters(y)
    for index in range(len(STAGES)):
        later = torch.zeros_like(y)  # marks the positions of this stage and every later one
        for following in STAGES[index:]:
            parts = [model.select(s, torch.zeros_like(y)) for s in STAGES]
            parts[STAGES.index(following)] = torch.ones_like(parts[STAGES.index(following)])
            later += model.assemble(parts)
        changed = parameters(y + 5 * later * torch.randn_like(y))
        assert torch.equal(changed[index], reference[index]), f"stage {index} saw the future"
        if index:
            earlier = parameters(y + (1 - later) * torch.randn_like(y))
            assert not torch.equal(earlier[index], reference[index]), (
                f"stage {index} saw no context"
            )


def entropy_parameters_from(codec: TinyLIC, z_hat: torch.Tensor, decoded: torch.Tensor):
    """``(scales, means)`` of the context model when the decoder side has seen ``decoded``."""
    scales, means = [], []

    def code_stage(stage: Stage, parameters: EntropyParameters):
        scales.append(parameters.scales)
        means.append(parameters.means)
        return codec.context_model.select(stage, decoded)

    with torch.no_grad():
        codec.context_model.decode(codec.h_s(z_hat), code_stage)
    return codec.context_model.assemble(scales), codec.context_model.assemble(means)


def decoder_side_value(quant: str, codec: TinyLIC, latents: dict[str, torch.Tensor]):
    """What each strategy's decoder (and so every later context) sees in training."""
    y, means, y_rate = latents["y"], latents["means"], latents["y_rate"]
    if quant in ("ste", "ste_sn", "soft_ste", "mixed"):
        return torch.round(y - means) + means
    if quant == "fourier_qecm":  # v + s(v) of the noisy coded value v = y_qc + u
        return codec.quantizer.from_coded(y_rate, inference=False)
    assert quant in ("noise", "noise_plus", "tcq", "rdoq"), f"add the training value of {quant}"
    return y_rate  # the noisy latent; for tcq / rdoq the straight-through reconstruction


@pytest.mark.parametrize("quant", STRATEGIES)
def test_training_step_shapes_gradients_and_what_the_contexts_see(quant) -> None:
    codec = small_tiny_lic(quant, drop_path_rate=0.0).train()
    x = torch.rand(2, 3, 64, 128)
    output = codec(x)
    latents = output.latents
    assert output.x_hat.shape == x.shape
    assert output.likelihoods["y"].shape == (2, 24, 4, 8)
    assert output.likelihoods["z"].shape == (2, 24, 1, 2)
    for likelihoods in output.likelihoods.values():
        assert ((likelihoods > 0) & (likelihoods <= 1)).all()
    assert set(latents) == {"y", "z", "y_hat", "y_rate", "scales", "means"}
    assert all(latents[name].shape == (2, 24, 4, 8) for name in latents if name != "z")
    if quant in ("tcq", "rdoq"):  # own pmfs; levels on the step's grid around the mean
        levels = (latents["y_rate"] - latents["means"]) / codec.quantizer.coding.step
        assert torch.allclose(levels, torch.round(levels), atol=1e-4)
    else:
        rate = codec.latent_likelihood(latents["y_rate"], latents)
        assert torch.equal(rate, output.likelihoods["y"])
        in_bin = 0.5 + (1 / 12 if quant == "soft_ste" else 0)  # FGSM steps 1/12 off STE(y)
        assert (latents["y_rate"] - codec.quantizer.to_coded(latents["y"])).abs().max() <= in_bin

    # The decoder side saw the strategy's training value, and so did every stage's context:
    # the entropy parameters are reproduced from y_hat, and not from the unquantised y.
    y_hat = latents["y_hat"]
    assert torch.allclose(y_hat, decoder_side_value(quant, codec, latents), atol=1e-5)
    quantizer, median = codec.quantizer, codec.hyper_latent.median()
    z_coded = quantizer.quantize_hyper_train(quantizer.to_coded(latents["z"]), median)
    z_hat = quantizer.from_coded(z_coded.decoder_input, inference=False)
    scales, means = entropy_parameters_from(codec, z_hat, y_hat)
    assert torch.allclose(means, latents["means"], atol=1e-5)
    assert torch.allclose(scales, latents["scales"], atol=1e-5)
    assert not torch.allclose(entropy_parameters_from(codec, z_hat, latents["y"])[1], means)

    RateDistortionLoss(0.01)(output, x)["loss"].backward()
    for transform in (codec.g_a, codec.g_s, codec.h_a, codec.context_model):
        assert sum(p.grad.abs().sum() for p in transform.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("quant", STRATEGIES)
def test_real_bitstreams_decode_bit_exactly_to_the_hard_forward_pass(quant) -> None:
    codec = small_tiny_lic(quant).eval()
    codec.update(force=True)
    x = torch.rand(2, 3, 64, 128)
    reference, bitstreams, decoded = code_and_decode(codec, x)
    assert set(bitstreams.strings) == {"y", "z"}
    assert all(len(strings) == 2 for strings in bitstreams.strings.values())
    assert torch.equal(decoded, reference.x_hat)


def two_test_images() -> list[tuple[str, torch.Tensor]]:
    """Two Kodak images (768x512) when ../shared holds Kodak, else two bundled photos."""
    kodak = SHARED_DIR / "data" / "kodak"
    names = ["kodim01.png", "kodim23.png"]
    if all((kodak / name).is_file() for name in names):
        return [(name, load_rgb(kodak / name)) for name in names]
    photos = PhotoSamples(["coffee", "chelsea"])
    return [(item["name"], item["image"]) for item in photos]


def test_two_photos_round_trip_with_hyper_attention_through_the_evaluation_coder() -> None:
    codec = small_tiny_lic("mixed", hyper_kernel_size=3).eval()  # pads to multiples of 256
    codec.update(force=True)
    for name, image in two_test_images():
        coding = code_image(codec, image)
        assert coding.decode_error == 0, name
        assert coding.x_hat.shape == image.shape
        assert coding.bpp > 0


@pytest.mark.parametrize("quant", ["mixed", "noise", "fourier_qecm"])
def test_bytes_match_the_estimated_rate_on_informative_latents(quant) -> None:
    """An untrained model's latents sit inside one bin and its scales at the bound, which
    tests nothing: the latent is scaled up (``z`` kept in range) and every slice's scales
    raised to the latent's spread, so that ``y`` spans many bins under matching Gaussians.
    The rate of the strings must then meet the estimate within 2 %."""
    torch.manual_seed(1)
    codec = small_tiny_lic(quant).eval()
    image = PhotoSamples(["astronaut"], crop_size=256)[0]["image"]
    with torch.no_grad():
        codec.g_a[-2].weight.mul_(20)
        codec.h_a[0].weight.div_(20)
        spread = codec.g_a(image[None]).std()
        for head in codec.context_model.entropy_parameters:
            scales = head[-1].out_channels // 2
            head[-1].bias[:scales].add_(spread)
    codec.update(force=True)
    coding = code_image(codec, image)
    assert coding.decode_error == 0
    assert coding.estimated_bpp > 0.3
    pixels = image.shape[-2] * image.shape[-1]
    assert coding.bpp == payload_bpp(coding.container, pixels)
    assert coding.bpp == pytest.approx(coding.estimated_bpp, rel=0.02)
    assert coding.bpp_file > coding.bpp  # the header is counted in the file's rate alone


def test_the_attention_backend_changes_how_tiny_lic_computes_not_what() -> None:
    """``attention=flex`` builds the same modules (weights load across) and the same outputs."""
    torch.manual_seed(3)
    tiled = small_tiny_lic("ste", attention="tiled").eval()
    flex = small_tiny_lic("ste", attention="flex").eval()
    flex.load_state_dict(tiled.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected, found = tiled(x), flex(x)
    assert torch.allclose(found.x_hat, expected.x_hat, atol=1e-5)
    assert torch.allclose(found.latents["y"], expected.latents["y"], atol=1e-5)
    assert {m.backend for m in flex.modules() if hasattr(m, "backend")} == {"flex"}
