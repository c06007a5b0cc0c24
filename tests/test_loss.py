"""The rate-distortion loss against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from licexp.backbones import CodecOutput
from licexp.training import RateDistortionLoss, bits_per_pixel


def test_bits_per_pixel_counts_minus_log2_likelihood_over_pixels() -> None:
    likelihoods = torch.full((2, 8, 4, 4), 0.5)  # one bit per element
    assert bits_per_pixel(likelihoods, num_pixels=2 * 16 * 16).item() == pytest.approx(
        2 * 8 * 4 * 4 / (2 * 16 * 16)
    )


def test_mse_loss_is_lambda_255_squared_mse_plus_bpp() -> None:
    target = torch.zeros(1, 3, 8, 8)
    x_hat = torch.full_like(target, 0.1)
    output = CodecOutput(
        x_hat=x_hat,
        likelihoods={"y": torch.full((1, 4, 2, 2), 0.25), "z": torch.full((1, 2, 1, 1), 0.5)},
    )
    terms = RateDistortionLoss(lmbda=0.01)(output, target)
    bpp_y, bpp_z = 4 * 2 * 2 * 2 / 64, 2 / 64
    assert terms["bpp_y"].item() == pytest.approx(bpp_y)
    assert terms["bpp_z"].item() == pytest.approx(bpp_z)
    assert terms["mse"].item() == pytest.approx(0.01)
    assert terms["loss"].item() == pytest.approx(0.01 * 255**2 * 0.01 + bpp_y + bpp_z, rel=1e-6)


def test_ms_ssim_loss_is_zero_distortion_for_a_perfect_reconstruction() -> None:
    target = torch.rand(2, 3, 64, 64)
    output = CodecOutput(x_hat=target.clone(), likelihoods={"y": torch.ones(2, 4, 4, 4)})
    terms = RateDistortionLoss(lmbda=10.0, distortion="ms-ssim")(output, target)
    assert terms["distortion"].item() == pytest.approx(0.0, abs=1e-5)
    noisy = CodecOutput(
        x_hat=(target + 0.1 * torch.randn_like(target)), likelihoods={"y": torch.ones(2, 4, 4, 4)}
    )
    assert RateDistortionLoss(10.0, "ms-ssim")(noisy, target)["distortion"].item() > 0.01


@pytest.mark.parametrize(("lmbda", "distortion"), [(-1.0, "mse"), (0.0, "mse"), (0.01, "l1")])
def test_invalid_loss_configuration_is_rejected_with_its_name(
    lmbda: float, distortion: str
) -> None:
    with pytest.raises(ValueError, match="lmbda|distortion"):
        RateDistortionLoss(lmbda, distortion)


def test_bpp_of_a_uniform_eight_level_source_is_three_bits() -> None:
    likelihoods = torch.full((1, 1, 16, 16), 1 / 8)
    assert bits_per_pixel(likelihoods, 256).item() == pytest.approx(math.log2(8))
