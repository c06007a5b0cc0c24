"""The rate-distortion objective of learned image compression (CompressAI's conventions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from licexp.backbones import CodecOutput
from licexp.evaluation.metrics import ms_ssim_batch

DISTORTIONS = ("mse", "ms-ssim")


def bits_per_pixel(likelihoods: Tensor, num_pixels: int) -> Tensor:
    """Estimated rate ``sum(-log2 p) / (N * H * W)`` of one latent's likelihoods."""
    return -torch.log2(likelihoods).sum() / num_pixels


class RateDistortionLoss(nn.Module):
    """``L = lambda * 255^2 * MSE + bpp`` or, for MS-SSIM, ``L = lambda * (1 - MS-SSIM) + bpp``.

    ``bpp`` sums the estimated rate of every coded latent (``y`` and ``z``). The 255^2
    factor makes ``lambda`` mean the same as CompressAI's quality ladder
    (0.0018 ... 0.18) for images in ``[0, 1]``.
    """

    def __init__(self, lmbda: float, distortion: str = "mse") -> None:
        super().__init__()
        if distortion not in DISTORTIONS:
            raise ValueError(f"distortion must be one of {DISTORTIONS}, got {distortion!r}")
        if isinstance(lmbda, bool) or not isinstance(lmbda, int | float) or not lmbda > 0:
            raise ValueError(f"lmbda must be positive, got {lmbda!r}")
        self.lmbda = lmbda
        self.distortion = distortion

    def forward(self, output: CodecOutput, target: Tensor) -> dict[str, Tensor]:
        batch, _, height, width = target.shape
        num_pixels = batch * height * width
        terms = {
            f"bpp_{name}": bits_per_pixel(likelihoods, num_pixels)
            for name, likelihoods in output.likelihoods.items()
        }
        bpp = torch.stack(list(terms.values())).sum()
        mse = F.mse_loss(output.x_hat, target)
        if self.distortion == "mse":
            distortion = 255**2 * mse
        else:
            distortion = 1 - ms_ssim_batch(target, output.x_hat).mean()
        return {
            "loss": self.lmbda * distortion + bpp,
            "bpp": bpp,
            "mse": mse,
            "distortion": distortion,
            **terms,
        }
