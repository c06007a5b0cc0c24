"""Feature refinement (FRM): Jiang et al., Section III.C, Figs. 4 and 5.

The stacked features ``f'`` (``[B, C, T, h, w]``, ``T = b^2 + 1``) pass the attention
refinement block (ARB), all in 3D convolutions with PReLU activations:

    g   = f' + front(f')                    two 3x3x3 convs (Proposed-Tiny: one 5x5x5)
    a   = Res_K(... Res_1(g))               K = 3 3D Res blocks (Proposed-Tiny: 1)
    c   = g + CA(a)                         channel attention, global residual
    s   = SA(c)                             spatial attention
    out = FA(s)                             feature attention

- 3D Res (Fig. 5): ``RB(x) = x + conv(PReLU(conv(x)))``; Res-a is one RB, Res-b
  (the paper's choice, Fig. 4) ``x + RB(RB(x))``, Res-c ``x + RB(RB(RB(x)))``:
  ``residual_levels`` 1, 2, 3.
- CA: Zhang et al.'s (RCAN) squeeze and excitation over ``(T, h, w)``, reduction 4.
- SA: Woo et al.'s (CBAM) sigmoid map from the channel mean and max, a 7x7x7 conv.
- FA: Cheng et al.'s simplified attention module, ``x + trunk(x) * sigmoid(mask(x))``,
  with three bottleneck residual units per branch (1x1x1, 3x3x3 at half width, 1x1x1).

The order of CA, SA and FA and the place of the global residual are read from Fig. 4's
description. The paper gives the features ``N = 128`` channels (Sections III.C, IV.A), which
contradicts its Tables III and IV; the width ``C`` is a setting (``feature_channels``, 32:
``conf/backbone/jiang.yaml`` says why). :class:`StackToFeature` then reshapes the output
to 2D, folding the time axis into the channels, and a 1x1 convolution gives the refined
feature ``f`` of ``N`` channels that ``g_a`` continues from.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv3d(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


class ResidualBlock3d(nn.Module):
    """RB: ``x + conv(PReLU(conv(x)))`` with 3x3x3 convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv3d(channels, channels), nn.PReLU(channels), conv3d(channels, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ConcatenatedResidual3d(nn.Module):
    """3D Res-a (``levels=1``: one RB), Res-b (2) or Res-c (3): ``x + RB_L(...RB_1(x))``."""

    def __init__(self, channels: int, levels: int = 2) -> None:
        super().__init__()
        if levels not in (1, 2, 3):
            raise ValueError(
                f"3D Res levels must be 1 (Res-a), 2 (Res-b) or 3 (Res-c), got {levels}"
            )
        self.levels = levels
        self.blocks = nn.Sequential(*(ResidualBlock3d(channels) for _ in range(levels)))

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(x)
        return out if self.levels == 1 else x + out


class ChannelAttention3d(nn.Module):
    """RCAN's channel attention: ``x * sigmoid(W_2 ReLU(W_1 mean_{T,h,w}(x)))``."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.weights = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            nn.Conv3d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weights(x)


class SpatialAttention3d(nn.Module):
    """CBAM's spatial attention: ``x * sigmoid(conv7([mean_c(x), max_c(x)]))``, in 3D."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = conv3d(2, 1, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        pooled = [x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)]
        return x * self.conv(torch.cat(pooled, dim=1)).sigmoid()


class BottleneckUnit3d(nn.Module):
    """Cheng et al.'s residual unit in 3D: ``x + conv1(PReLU(conv3(PReLU(conv1(x)))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = max(1, channels // 2)
        self.body = nn.Sequential(
            nn.Conv3d(channels, half, 1),
            nn.PReLU(half),
            conv3d(half, half),
            nn.PReLU(half),
            nn.Conv3d(half, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class FeatureAttention3d(nn.Module):
    """Cheng et al.'s simplified attention module in 3D: ``x + trunk(x) * sigmoid(mask(x))``."""

    def __init__(self, channels: int, units: int = 3) -> None:
        super().__init__()
        self.trunk = nn.Sequential(*(BottleneckUnit3d(channels) for _ in range(units)))
        self.mask = nn.Sequential(
            *(BottleneckUnit3d(channels) for _ in range(units)), nn.Conv3d(channels, channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.trunk(x) * self.mask(x).sigmoid()


class AttentionRefinementBlock(nn.Module):
    """ARB on ``[B, C, T, h, w]`` (module docstring).

    Args:
        channels: ``C``.
        front_convolutions, front_kernel: the convolutions before the attention block:
            two 3x3x3 (Proposed) or one 5x5x5 (Proposed-Tiny).
        residual_blocks: 3D Res blocks of the attention block (3; Proposed-Tiny 1).
        residual_levels: 1, 2, 3 for 3D Res-a, Res-b, Res-c.
    """

    def __init__(
        self,
        channels: int,
        front_convolutions: int = 2,
        front_kernel: int = 3,
        residual_blocks: int = 3,
        residual_levels: int = 2,
    ) -> None:
        super().__init__()
        front: list[nn.Module] = []
        for index in range(front_convolutions):
            if index:
                front.append(nn.PReLU(channels))
            front.append(conv3d(channels, channels, front_kernel))
        self.front = nn.Sequential(*front)
        self.residuals = nn.Sequential(
            *(ConcatenatedResidual3d(channels, residual_levels) for _ in range(residual_blocks))
        )
        self.channel_attention = ChannelAttention3d(channels)
        self.spatial_attention = SpatialAttention3d()
        self.feature_attention = FeatureAttention3d(channels)

    def forward(self, stacked: Tensor) -> Tensor:
        g = stacked + self.front(stacked)
        c = g + self.channel_attention(self.residuals(g))
        return self.feature_attention(self.spatial_attention(c))


class StackToFeature(nn.Module):
    """``[B, C, T, h, w] -> [B, N, h, w]``: the time axis folded into the channels, then 1x1."""

    def __init__(self, channels: int, frames: int, out_channels: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(channels * frames, out_channels, 1)

    def forward(self, stacked: Tensor) -> Tensor:
        return self.project(stacked.flatten(1, 2))
