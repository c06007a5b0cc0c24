"""Generalized divisive normalisation (Balle, Laparra and Simoncelli, 2016) for inference.

CompressAI's ``GDN`` computes ``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)`` (the
inverse multiplies) with three full-size temporaries. Without autograd, :class:`GDN`
computes the normaliser and the product in place: the same operations on the same values,
so the output is bit-identical (the hyperprior's bytes stay CompressAI's) with less memory
traffic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from compressai import layers
from torch import Tensor


class GDN(layers.GDN):
    """CompressAI's GDN (same parameters and state-dict keys), in place under no-grad."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        channels = x.size(1)
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(channels, channels, 1, 1)
        norm = F.conv2d(x * x, gamma, beta)
        norm = norm.sqrt_() if self.inverse else norm.rsqrt_()
        return norm.mul_(x)
