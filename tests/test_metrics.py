"""Tests for licexp.evaluation.metrics."""

from __future__ import annotations

import math

import pytest
import pytorch_msssim
import torch

from licexp.evaluation.metrics import (
    MS_SSIM_WEIGHTS,
    _ms_ssim_scales,
    bpp_from_bytes,
    ms_ssim,
    ms_ssim_db,
    ms_ssim_num_scales,
    psnr,
)


def _smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random RGB image in [0, 1] (low-pass noise, so SSIM is meaningful)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 8 + 1, width // 8 + 1, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    return image[0].clamp(0.0, 1.0)


def _noisy(image: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return image + sigma * torch.randn(image.shape, generator=generator)


# --- PSNR ---------------------------------------------------------------------------------


def test_psnr_hand_computed() -> None:
    x = torch.zeros(3, 16, 16, dtype=torch.float64)
    x_hat = torch.full((3, 16, 16), 0.1, dtype=torch.float64)
    # MSE = 0.01 -> 10 * log10(1 / 0.01) = 20 dB.
    assert psnr(x, x_hat) == pytest.approx(20.0, abs=1e-9)


def test_psnr_mean_over_pixels_and_channels() -> None:
    x = torch.zeros(3, 4, 4, dtype=torch.float64)
    x_hat = x.clone()
    x_hat[1, 2, 3] = 0.5  # one sample of 48 off by 0.5 -> MSE = 0.25 / 48
    assert psnr(x, x_hat) == pytest.approx(10 * math.log10(48 / 0.25), abs=1e-9)


def test_psnr_identical_is_inf() -> None:
    x = _smooth_image(32, 32)
    assert psnr(x, x.clone()) == math.inf


def test_psnr_clamps_reconstruction() -> None:
    x = torch.zeros(3, 8, 8)
    assert psnr(x, torch.full_like(x, -0.5)) == math.inf
    assert psnr(torch.ones(3, 8, 8), torch.full((3, 8, 8), 1.5)) == math.inf
    # 0.5 vs 1.5 -> clamped to 1.0 -> MSE 0.25 -> 6.0206 dB
    got = psnr(torch.full((3, 8, 8), 0.5), torch.full((3, 8, 8), 1.5))
    assert got == pytest.approx(10 * math.log10(4.0), abs=1e-6)


def test_psnr_data_range_and_batch_shape() -> None:
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    assert psnr(x, torch.full_like(x, 25.5), data_range=255.0) == pytest.approx(20.0, abs=1e-9)


def test_psnr_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))
    with pytest.raises(ValueError, match="shape"):
        psnr(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))


# --- MS-SSIM ------------------------------------------------------------------------------


def test_ms_ssim_identical_is_one() -> None:
    x = _smooth_image(192, 192)
    assert ms_ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_decreases_with_noise() -> None:
    x = _smooth_image(192, 192)
    values = [ms_ssim(x, _noisy(x, sigma)) for sigma in (0.01, 0.05, 0.1, 0.2)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert 0.0 < values[-1] < values[0] < 1.0


def test_ms_ssim_matches_pytorch_msssim_at_256() -> None:
    x = _smooth_image(256, 256)
    y = _noisy(x, 0.05).clamp(0.0, 1.0)
    expected = pytorch_msssim.ms_ssim(x[None], y[None], data_range=1.0).item()
    assert ms_ssim(x, y) == pytest.approx(expected, abs=1e-6)
    assert ms_ssim(x[None], y[None]) == pytest.approx(expected, abs=1e-6)


def test_own_multiscale_loop_matches_pytorch_msssim_with_five_scales() -> None:
    """The loop used for small images is the library's computation (odd size: padding)."""
    x = _smooth_image(203, 241)[None]
    y = _noisy(x, 0.08).clamp(0.0, 1.0)
    expected = pytorch_msssim.ms_ssim(x, y, data_range=1.0).item()
    assert _ms_ssim_scales(x, y, MS_SSIM_WEIGHTS).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("side", "scales"), [(161, 5), (160, 4), (81, 4), (80, 3), (64, 3), (41, 3), (32, 2), (21, 2)]
)
def test_ms_ssim_num_scales(side: int, scales: int) -> None:
    assert ms_ssim_num_scales(side, 1000) == scales
    assert ms_ssim_num_scales(1000, side) == scales


def test_ms_ssim_small_image_uses_renormalised_weights() -> None:
    x = _smooth_image(64, 64)
    y = _noisy(x, 0.05)
    value = ms_ssim(x, y)
    weights = tuple(w / sum(MS_SSIM_WEIGHTS[:3]) for w in MS_SSIM_WEIGHTS[:3])
    expected = _ms_ssim_scales(x[None], y.clamp(0, 1)[None], weights).item()
    assert value == pytest.approx(expected, abs=1e-6)
    assert 0.0 < value < 1.0
    assert ms_ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim(x, _noisy(x, 0.2)) < value


def test_ms_ssim_works_at_32_and_rejects_tiny() -> None:
    x = _smooth_image(32, 48)
    assert 0.0 < ms_ssim(x, _noisy(x, 0.05)) < 1.0
    with pytest.raises(ValueError, match="20x64"):
        ms_ssim(torch.rand(3, 20, 64), torch.rand(3, 20, 64))


def test_ms_ssim_clamps_reconstruction() -> None:
    x = _smooth_image(64, 64)
    y = _noisy(x, 0.1)
    assert ms_ssim(x, y) == pytest.approx(ms_ssim(x, y.clamp(0.0, 1.0)), abs=1e-7)


# --- conversions ----------------------------------------------------------------------------


def test_ms_ssim_db() -> None:
    assert ms_ssim_db(0.99) == pytest.approx(20.0)
    assert ms_ssim_db(0.9) == pytest.approx(10.0)
    assert ms_ssim_db(1.0) == math.inf
    with pytest.raises(ValueError):
        ms_ssim_db(1.5)


def test_bpp_from_bytes() -> None:
    assert bpp_from_bytes(1000, 100, 80) == pytest.approx(1.0)
    assert bpp_from_bytes(0, 10, 10) == 0.0
    assert bpp_from_bytes(3, 2, 3) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        bpp_from_bytes(10, 0, 5)
