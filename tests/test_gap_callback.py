"""The gap-metrics callback: values on known strategies, and no side effects."""

from __future__ import annotations

import hydra
import lightning as L
import pytest
import torch
from helpers import compose_train

from licexp.backbones import MeanScaleHyperprior, ScaleHyperprior
from licexp.callbacks.gaps import GapMetrics, training_quantisation
from licexp.quant import NoiseQuantization, StraightThroughQuantization
from licexp.training import CodecModule, RateDistortionLoss


def module_with(strategy, backbone=MeanScaleHyperprior) -> CodecModule:
    codec = backbone(N=16, M=24, quantizer=strategy)
    return CodecModule(codec, RateDistortionLoss(0.01), torch.optim.Adam, torch.optim.Adam)


def measure(module: CodecModule) -> dict[str, float]:
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        output = module.codec(x)
        return {k: float(v) for k, v in GapMetrics().measure(module, x, output).items()}


@pytest.mark.parametrize("backbone", [MeanScaleHyperprior, ScaleHyperprior])
def test_ste_has_no_discrete_gap_and_noise_has_one(backbone) -> None:
    assert measure(module_with(StraightThroughQuantization(), backbone))["discrete"] == 0
    noise = measure(module_with(NoiseQuantization(), backbone))
    # |round(y) - y - u| with u ~ U(-1/2, 1/2) is at least E|u| = 1/4 on average for
    # latents near integers, and at most 1/2 + 1/4 = 3/4 per element.
    assert 0.2 < noise["discrete"] < 0.75


def test_ste_trains_the_rate_on_the_rounded_latent_so_its_rate_gap_is_zero() -> None:
    gaps = measure(module_with(StraightThroughQuantization()))
    assert gaps["rate_gap_bits"] == pytest.approx(0.0, abs=1e-6)
    assert all(torch.isfinite(torch.tensor(v)) for v in gaps.values())


def test_measuring_validation_switches_only_the_latent_coders() -> None:
    codec = module_with(NoiseQuantization()).codec.eval()
    with training_quantisation(codec):
        assert codec.latent.training and codec.hyper_latent.training
        assert not codec.g_a.training and not codec.g_s.training
    assert not codec.latent.training and not codec.hyper_latent.training


@pytest.mark.parametrize("quant", ["soft_ste", "fourier_qecm", "noise"])
def test_validation_logs_every_gap_under_lightnings_inference_mode(quant, tmp_path) -> None:
    """Lightning validates under ``torch.inference_mode``; FGSM needs autograd there."""
    cfg = compose_train([f"quant={quant}", "debug=smoke", f"paths.output_dir={tmp_path}"])
    codec = hydra.utils.instantiate(cfg.backbone, quantizer=hydra.utils.instantiate(cfg.quant))
    module = hydra.utils.instantiate(cfg.model, codec=codec)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[GapMetrics()],
        inference_mode=True,
    )
    (metrics,) = trainer.validate(module, datamodule=hydra.utils.instantiate(cfg.data))
    for name in ("discrete", "entropy_w1", "rate_gap_bits", "lss"):
        assert torch.isfinite(torch.tensor(metrics[f"val/gaps/{name}"]))
    assert list((tmp_path / "gaps").glob("latent_histogram_step*.png"))
