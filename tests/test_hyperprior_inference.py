"""The hyperprior's inference fast paths: GDN in place (bit for bit CompressAI's) and the
channels-last synthesis (float rounding only, and only in eval mode)."""

from __future__ import annotations

import pytest
import torch
from compressai import layers

from licexp.backbones import MeanScaleHyperprior, ScaleHyperprior
from licexp.backbones.gdn import GDN
from licexp.quant import StraightThroughQuantization


def spread_pair(inverse: bool, channels: int = 12) -> tuple[GDN, layers.GDN]:
    """Both GDNs with one state: ``gamma`` off the diagonal, so the sums' order matters."""
    torch.manual_seed(5)
    ours, theirs = GDN(channels, inverse=inverse), layers.GDN(channels, inverse=inverse)
    with torch.no_grad():
        spread = 0.1 * torch.eye(channels) + 0.05 * torch.rand(channels, channels)
        ours.gamma.copy_(ours.gamma_reparam.init(spread))
        ours.beta.copy_(ours.beta_reparam.init(0.5 + torch.rand(channels)))
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_inference_gdn_is_bit_identical_to_compressais(inverse, context) -> None:
    ours, theirs = spread_pair(inverse)
    x = 3 * torch.randn(2, 12, 17, 23)
    with context():
        expected = theirs(x)
        assert torch.equal(ours(x), expected)
    assert (expected - x).abs().max() > 0.1  # it normalises


@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
def test_gdn_with_autograd_gives_compressais_output_and_gradients(inverse) -> None:
    ours, theirs = spread_pair(inverse)
    x = torch.randn(1, 12, 8, 8, requires_grad=True)
    ours(x).square().sum().backward()
    our_grads = x.grad.clone(), ours.gamma.grad.clone()
    x.grad = None
    theirs(x).square().sum().backward()
    assert torch.equal(our_grads[0], x.grad)
    assert torch.equal(our_grads[1], theirs.gamma.grad)
    assert our_grads[1].abs().sum() > 0


@pytest.mark.parametrize("family", [MeanScaleHyperprior, ScaleHyperprior])
def test_channels_last_synthesis_runs_only_at_inference_within_float_rounding(family) -> None:
    """Eval mode feeds ``g_s`` channels-last tensors (whose sums may round differently: by
    at most float rounding), training mode NCHW ones, CompressAI's arithmetic exactly."""
    torch.manual_seed(2)
    codec = family(N=16, M=24, quantizer=StraightThroughQuantization())
    with torch.no_grad():
        for module in codec.g_s:
            if isinstance(module, GDN):
                spread = 0.1 * torch.eye(16) + 0.05 * torch.rand(16, 16)
                module.gamma.copy_(module.gamma_reparam.init(spread))
    layouts = []
    codec.g_s[1].register_forward_pre_hook(
        lambda module, args: layouts.append(
            args[0].is_contiguous(memory_format=torch.channels_last)
        )
    )
    y_hat = torch.randn(1, 24, 8, 12).round() * 4
    with torch.no_grad():
        nchw = codec.g_s(y_hat)
        codec.eval()
        fast = codec.synthesize(y_hat)
        codec.train()
        assert torch.equal(codec.synthesize(y_hat), nchw)
    assert layouts == [False, True, False]
    assert fast.is_contiguous() and fast.shape == nchw.shape
    assert (fast - nchw).abs().max() < 1e-5


def test_channels_last_analysis_codes_and_decodes_exactly_at_inference_only() -> None:
    """``g_a`` sees channels-last tensors in eval mode only; the codec still decodes its own
    bitstreams exactly and its encoder side is the eval forward pass's."""
    torch.manual_seed(4)
    codec = MeanScaleHyperprior(
        N=16, M=24, quantizer=StraightThroughQuantization(), channels_last_analysis=True
    )
    layouts = []
    codec.g_a[1].register_forward_pre_hook(
        lambda module, args: layouts.append(
            args[0].is_contiguous(memory_format=torch.channels_last)
        )
    )
    x = torch.rand(1, 3, 64, 128)
    codec(x)
    codec.eval().update(force=True)
    with torch.no_grad():
        reference = codec(x)
        bitstreams = codec.compress(x)
        decoded = codec.decompress(bitstreams)
    assert layouts == [False, True, True]
    assert torch.equal(bitstreams.encoder_side.y_hat, reference.latents["y_hat"])
    assert torch.equal(decoded, reference.x_hat)
