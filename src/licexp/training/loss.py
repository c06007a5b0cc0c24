"""The rate-distortion objective of learned image compression (CompressAI's conventions)."""

from __future__ import annotations

from collections.abc import Callable

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

    For a backbone that returns features (Jiang et al.'s FEnM), Eq. 17 adds the feature
    loss ``lambda_e * L_FE`` with ``L_FE = ||f_e_hat - f||^2`` (Eq. 16) taken as the mean
    over elements (like the MSE of ``D``, so that ``lambda_e`` does not scale with the
    image size) and ``lambda_e = feature_weight(step)``; gradients reach both features.
    ``feature_mse`` and ``lambda_e`` are returned with the other terms.
    """

    def __init__(
        self,
        lmbda: float,
        distortion: str = "mse",
        feature_weight: Callable[[int], float] | None = None,
    ) -> None:
        super().__init__()
        self.feature_weight = feature_weight
        if distortion not in DISTORTIONS:
            raise ValueError(f"distortion must be one of {DISTORTIONS}, got {distortion!r}")
        if isinstance(lmbda, bool) or not isinstance(lmbda, int | float) or not lmbda > 0:
            raise ValueError(f"lmbda must be positive, got {lmbda!r}")
        self.lmbda = lmbda
        self.distortion = distortion

    def forward(self, output: CodecOutput, target: Tensor, step: int = 0) -> dict[str, Tensor]:
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
        loss = self.lmbda * distortion + bpp
        if output.features:
            terms["feature_mse"] = F.mse_loss(
                output.features["enhanced"], output.features["refined"]
            )
            weight = self.feature_weight(step) if self.feature_weight is not None else 0.0
            terms["lambda_e"] = mse.new_tensor(float(weight))
            if weight:
                loss = loss + weight * terms["feature_mse"]
        return {"loss": loss, "bpp": bpp, "mse": mse, "distortion": distortion, **terms}
