"""CUDA: a training step and bit-exact real coding on the GPU (skipped without one)."""

from __future__ import annotations

import pytest
import torch

from licexp.backbones import MeanScaleHyperprior, TinyLIC
from licexp.backbones.neighborhood_attention import neighborhood_attention
from licexp.evaluation.codec import code_image, decode_container
from licexp.quant import EntropyParameters, NoiseQuantization, StraightThroughQuantization
from licexp.quant.soft_ste import SoftSTEQuantization
from licexp.quant.tcq import TrellisCodedQuantization, TrellisSymbols
from licexp.training import RateDistortionLoss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_training_step_on_cuda() -> None:
    codec = MeanScaleHyperprior(N=32, M=48, quantizer=NoiseQuantization()).cuda()
    x = torch.rand(2, 3, 128, 128, device="cuda")
    RateDistortionLoss(0.01)(codec(x), x)["loss"].backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in codec.g_a.parameters())


@pytest.mark.parametrize("strategy", [NoiseQuantization, StraightThroughQuantization])
def test_real_coding_on_cuda_decodes_bit_exactly(strategy) -> None:
    codec = MeanScaleHyperprior(N=64, M=96, quantizer=strategy()).cuda().eval()
    codec.update(force=True)
    image = torch.rand(3, 200, 300, device="cuda")
    coding = code_image(codec, image)
    assert coding.decode_error == 0
    assert torch.equal(decode_container(codec, coding.container), coding.x_hat)


def test_tiny_lic_trains_and_codes_bit_exactly_on_cuda() -> None:
    """The neighbourhood attention and the nine-stage context model on a GPU."""
    codec = TinyLIC(
        N=32, M=64, depths=(1, 1, 1, 1), hyper_depths=(1, 1), quantizer=SoftSTEQuantization()
    ).cuda()
    x = torch.rand(2, 3, 256, 256, device="cuda")
    RateDistortionLoss(0.01)(codec(x), x)["loss"].backward()
    assert all(p.grad is not None for p in codec.g_a.parameters())
    codec.eval().update(force=True)
    coding = code_image(codec, torch.rand(3, 300, 400, device="cuda"))
    assert coding.decode_error == 0


def test_tcq_search_on_cuda_matches_the_cpu_and_codes_bit_exactly() -> None:
    torch.manual_seed(0)
    scales = torch.rand(2, 16, 8, 12) * 3 + 0.1
    residual = torch.randn(2, 16, 8, 12) * scales
    coding = TrellisSymbols(states=8)
    on_cpu = coding.search(residual, EntropyParameters(scales))
    on_cuda = coding.search(residual.cuda(), EntropyParameters(scales.cuda()))
    # The same search; CUDA's ndtr may differ in the last bits, which can flip a near-tie.
    assert (on_cuda.indices.cpu() == on_cpu.indices).float().mean() > 0.999
    codec = MeanScaleHyperprior(N=64, M=96, quantizer=TrellisCodedQuantization()).cuda().eval()
    codec.update(force=True)
    coding = code_image(codec, torch.rand(3, 200, 300, device="cuda"))
    assert coding.decode_error == 0


def test_compiled_flex_attention_matches_the_tiled_attention_on_cuda() -> None:
    """FlexAttention's compiled kernels (block mask + bias) against the tiled reference,
    forward and backward, at a Tiny-LIC map size (7x7 windows, 16-channel heads)."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    shape = (2, 8, 64, 48, 16)
    inputs = [torch.randn(*shape, device="cuda", generator=generator) for _ in range(3)]
    inputs.append(torch.randn(8, 13, 13, device="cuda", generator=generator))
    weights = torch.randn(*shape, device="cuda", generator=generator)
    outputs, gradients = [], []
    for backend in ("flex", "tiled"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = neighborhood_attention(*leaves, kernel_size=7, backend=backend)
        (out * weights).sum().backward()
        outputs.append(out.detach())
        gradients.append([leaf.grad for leaf in leaves])
    assert torch.allclose(outputs[0], outputs[1], atol=1e-4)
    for flex, tiled in zip(*gradients, strict=True):
        assert torch.allclose(flex, tiled, atol=1e-3, rtol=1e-3)
