"""Image-quality and rate metrics for learned image compression.

All functions take a single RGB image as a float tensor of shape ``[3, H, W]`` or
``[1, 3, H, W]`` with values in ``[0, 1]`` and return plain Python floats, following the
conventions of CompressAI's ``compressai.utils.eval_model`` (PSNR over all pixels and
channels, MS-SSIM from ``pytorch_msssim`` with ``data_range=1.0``).
"""

from __future__ import annotations

import math

import torch
from pytorch_msssim import ms_ssim as _library_ms_ssim
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "MS_SSIM_WEIGHTS",
    "MS_SSIM_WIN_SIZE",
    "MS_SSIM_WIN_SIGMA",
    "MS_SSIM_MIN_SCALES",
    "psnr",
    "psnr_batch",
    "ms_ssim",
    "ms_ssim_batch",
    "ms_ssim_num_scales",
    "ms_ssim_db",
    "bpp_from_bytes",
]

#: Standard per-scale exponents of MS-SSIM (Wang et al., 2003), finest scale first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Gaussian window of the per-scale SSIM (the standard 11 x 11, sigma 1.5 window).
MS_SSIM_WIN_SIZE = 11
MS_SSIM_WIN_SIGMA = 1.5
#: Fewest scales :func:`ms_ssim` accepts for small images.
MS_SSIM_MIN_SCALES = 2


def _as_batch(image: Tensor, name: str) -> Tensor:
    """Return ``image`` as a ``[1, 3, H, W]`` floating-point tensor, validating its shape."""
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape [3, H, W] or [1, 3, H, W], got {list(image.shape)}"
        )
    if not image.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {image.dtype}")
    return image


def _prepare_pair(x: Tensor, x_hat: Tensor) -> tuple[Tensor, Tensor]:
    """Validate an (original, reconstruction) pair and bring both to ``[1, 3, H, W]``."""
    x = _as_batch(x, "x")
    x_hat = _as_batch(x_hat, "x_hat")
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat differ in shape: {list(x.shape)} vs {list(x_hat.shape)}")
    return x, x_hat.to(device=x.device, dtype=x.dtype)


@torch.no_grad()
def psnr(x: Tensor, x_hat: Tensor, data_range: float = 1.0) -> float:
    """PSNR-RGB in dB between an image and its reconstruction.

    The MSE is the mean over all pixels and all three channels (one MSE per image, as in
    CompressAI's ``psnr-rgb``), computed in float64. ``x_hat`` is clamped to
    ``[0, data_range]`` first; ``x`` is used as given.

    Args:
        x: Original image, ``[3, H, W]`` or ``[1, 3, H, W]``.
        x_hat: Reconstruction of the same shape.
        data_range: Peak signal value (1.0 for images in ``[0, 1]``).

    Returns:
        ``10 * log10(data_range**2 / mse)``; ``math.inf`` when the (clamped) images are identical.
    """
    x, x_hat = _prepare_pair(x, x_hat)
    x_hat = x_hat.clamp(0.0, data_range)
    mse = torch.mean((x.double() - x_hat.double()) ** 2).item()
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def ms_ssim_num_scales(height: int, width: int) -> int:
    """Number of MS-SSIM scales (at most 5) usable on an image of the given size.

    With ``k`` scales the image is average-pooled ``k - 1`` times, and the coarsest scale must
    still be larger than the 11-pixel Gaussian window. This is the condition that
    ``pytorch_msssim`` asserts for 5 scales (smaller side ``> (11 - 1) * 2**4 = 160``),
    generalised to ``k`` scales: smaller side ``> (11 - 1) * 2**(k - 1)``.
    So: > 160 px -> 5, > 80 -> 4, > 40 -> 3, > 20 -> 2, > 10 -> 1, otherwise 0.
    """
    side = min(height, width)
    for scales in range(len(MS_SSIM_WEIGHTS), 0, -1):
        if side > (MS_SSIM_WIN_SIZE - 1) * 2 ** (scales - 1):
            return scales
    return 0


def _ms_ssim_scales(x: Tensor, y: Tensor, weights: tuple[float, ...]) -> Tensor:
    """MS-SSIM of ``[N, C, H, W]`` tensors with ``len(weights)`` scales and no size assertion.

    Same computation as ``pytorch_msssim.ms_ssim`` (same per-scale ``_ssim`` primitive, Gaussian
    window, odd-size padding of the 2x average pooling, ReLU on contrast-structure terms and
    product of per-scale terms raised to ``weights``); only the number of scales differs.
    """
    win = _fspecial_gauss_1d(MS_SSIM_WIN_SIZE, MS_SSIM_WIN_SIGMA)
    win = win.repeat([x.shape[1], 1, 1, 1])
    weights_tensor = x.new_tensor(weights)
    terms = []
    for level in range(len(weights)):
        ssim_per_channel, cs = _ssim(x, y, data_range=1.0, win=win, size_average=False)
        if level < len(weights) - 1:
            terms.append(torch.relu(cs))
            padding = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    terms.append(torch.relu(ssim_per_channel))
    stacked = torch.stack(terms, dim=0)  # (level, batch, channel)
    return torch.prod(stacked ** weights_tensor.view(-1, 1, 1), dim=0).mean(dim=1)


def ms_ssim_batch(x: Tensor, x_hat: Tensor) -> Tensor:
    """Per-image MS-SSIM (RGB, ``data_range=1.0``) of ``[B, 3, H, W]`` batches, differentiable.

    Images whose smaller side is > 160 px get the standard 5-scale MS-SSIM, computed by
    ``pytorch_msssim.ms_ssim(x, x_hat, data_range=1.0)`` exactly as CompressAI does.

    Smaller images, which ``pytorch_msssim`` rejects, get MS-SSIM with fewer scales and the
    unchanged 11 x 11 Gaussian window (sigma 1.5): ``k = ms_ssim_num_scales(H, W)`` scales
    (4 for > 80 px, 3 for > 40 px, 2 for > 20 px), with the exponents being the first ``k``
    standard weights ``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)`` renormalised to sum to 1.
    The coarsest scale is dropped rather than the window shrunk, so each remaining scale's
    SSIM is the standard one. Such values are not comparable with 5-scale MS-SSIM.

    ``x_hat`` is used as given (the training loss needs gradients outside ``[0, 1]``).

    Raises:
        ValueError: the smaller side is <= 20 px (fewer than ``MS_SSIM_MIN_SCALES`` scales).
    """
    height, width = x.shape[-2:]
    scales = ms_ssim_num_scales(height, width)
    if scales < MS_SSIM_MIN_SCALES:
        min_side = (MS_SSIM_WIN_SIZE - 1) * 2 ** (MS_SSIM_MIN_SCALES - 1) + 1
        raise ValueError(
            f"image of size {height}x{width} is too small for MS-SSIM: the smaller side must be "
            f"at least {min_side} px ({MS_SSIM_MIN_SCALES} scales with an "
            f"{MS_SSIM_WIN_SIZE}-px window)"
        )
    if scales == len(MS_SSIM_WEIGHTS):
        return _library_ms_ssim(x, x_hat, data_range=1.0, size_average=False)
    total = sum(MS_SSIM_WEIGHTS[:scales])
    weights = tuple(w / total for w in MS_SSIM_WEIGHTS[:scales])
    return _ms_ssim_scales(x, x_hat, weights)


@torch.no_grad()
def ms_ssim(x: Tensor, x_hat: Tensor) -> float:
    """MS-SSIM of one image and its reconstruction (clamped to ``[0, 1]``); see
    :func:`ms_ssim_batch` for the scales used on small images."""
    x, x_hat = _prepare_pair(x, x_hat)
    return float(ms_ssim_batch(x, x_hat.clamp(0.0, 1.0)).item())


def ms_ssim_if_measurable(x: Tensor, x_hat: Tensor) -> float | None:
    """:func:`ms_ssim`, or ``None`` for an image too small for it (smaller side <= 20 px)."""
    height, width = x.shape[-2:]
    if ms_ssim_num_scales(height, width) < MS_SSIM_MIN_SCALES:
        return None
    return ms_ssim(x, x_hat)


def psnr_batch(x: Tensor, x_hat: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR-RGB in dB of ``[B, 3, H, W]`` batches, ``x_hat`` clamped first.

    ``10 log10(data_range^2 / MSE)`` with the MSE over all pixels and channels of each
    image; ``inf`` for identical images.
    """
    x_hat = x_hat.clamp(0.0, data_range)
    mse = (x - x_hat).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def ms_ssim_db(value: float) -> float:
    """MS-SSIM in dB: ``-10 * log10(1 - value)``; ``math.inf`` for ``value == 1``."""
    if value > 1.0:
        raise ValueError(f"MS-SSIM must be <= 1, got {value}")
    if value == 1.0:
        return math.inf
    return -10.0 * math.log10(1.0 - value)


def bpp_from_bytes(num_bytes: int, height: int, width: int) -> float:
    """Bits per pixel of a bitstream of ``num_bytes`` bytes for an ``height x width`` image."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if num_bytes < 0:
        raise ValueError(f"num_bytes must be >= 0, got {num_bytes}")
    return 8.0 * num_bytes / (height * width)
