"""Feature enhancement (FEnM): Jiang et al., Section III.F.

"Two dense blocks (DBs) and a convolutional layer, interconnected through shortcuts" turn
the decoded feature into the enhanced feature ``f_e_hat`` that the inverse FExM rebuilds
the image from, and that the feature loss ``||f_e_hat - f||^2`` (Eq. 16) pulls towards
the encoder's refined feature ``f``. The paper gives no layers; each dense block here is
a residual dense block (Zhang et al.'s RDN): ``layers`` 3x3 convolutions with PReLU, each
reading the block input and every earlier output (``growth`` channels each), a 1x1 fusion
back to the block width and a shortcut over the block. The module is
``x + conv3x3(DB_K(...DB_1(x)))``, ``K = 2`` (Proposed-Tiny: 1). Its last convolution starts
at zero, the zero-initialised residual branch of Goyal et al. ("Accurate, large minibatch
SGD", 2017) and Fixup (Zhang et al., 2019), so FEnM starts as the identity: the dense
blocks' shortcuts would otherwise add their input to the decoded feature once more.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DenseBlock(nn.Module):
    """``x + fuse([x, h_1, ..., h_L])`` with ``h_l = PReLU(conv3x3([x, h_1, ..., h_{l-1}]))``."""

    def __init__(self, channels: int, layers: int = 4, growth: int = 32) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels + index * growth, growth, 3, padding=1), nn.PReLU(growth)
            )
            for index in range(layers)
        )
        self.fuse = nn.Conv2d(channels + layers * growth, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return x + self.fuse(torch.cat(features, dim=1))


class FeatureEnhancement(nn.Module):
    """FEnM: ``x + conv3x3(DB_K(...DB_1(x)))`` at the decoded feature's width; the identity
    at initialisation."""

    def __init__(self, channels: int, blocks: int = 2, layers: int = 4, growth: int = 32) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock(channels, layers, growth) for _ in range(blocks)))
        self.out = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.out(self.blocks(x))
