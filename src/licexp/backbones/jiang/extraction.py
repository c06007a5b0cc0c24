"""Feature extraction (FExM) and its inverse: Jiang et al., Section III.B and Fig. 3.

The image is cut into ``b x b`` patches and pixel ``(i, j)`` of every patch is gathered
into sub-image ``S_t``, ``t = b i + j`` (:func:`split_into_subimages`): ``b^2`` sub-images
of ``H/b x W/b`` that hold every pixel once, an exact rearrangement
(:func:`merge_subimages` inverts it). Each sub-image gets its own convolutions
(``f_{S_t}``) and the whole image one strided convolution (``f_x``); the ``b^2 + 1``
features are stacked on a new time axis as ``[B, C, b^2 + 1, H/b, W/b]`` (Eq. 1).

Open details, chosen here:

- ``f_x`` is a convolution of kernel ``2b + 1``, padding ``b`` and stride ``b``, so that it
  meets the sub-images' ``H/b x W/b`` for every ``b`` (for ``b = 2``: 5x5, stride 2, the
  paper's "k5s2");
- "two convolutional layers separately to S_t": separate weights per sub-image (grouped
  convolutions), 3x3, with a PReLU between them;
- the decoder (:class:`InverseFeatureExtraction`) mirrors the encoder with transposed
  convolutions: a 1x1 convolution spreads the enhanced feature into ``b^2 + 1`` features,
  each sub-image's two transposed convolutions rebuild ``S_t`` and the stride-``b``
  transposed convolution rebuilds a full image from the last; the image is the merged
  sub-images plus that full image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def split_into_subimages(x: Tensor, patch_size: int) -> Tensor:
    """``[B, C, H, W] -> [B, b^2, C, H/b, W/b]``: sub-image ``t = b i + j`` holds pixel
    ``(i, j)`` of every ``b x b`` patch."""
    batch, channels, height, width = x.shape
    b = patch_size
    if height % b or width % b:
        raise ValueError(f"a {height}x{width} image does not split into {b}x{b} patches")
    patches = x.reshape(batch, channels, height // b, b, width // b, b)
    return patches.permute(0, 3, 5, 1, 2, 4).reshape(
        batch, b * b, channels, height // b, width // b
    )


def merge_subimages(subimages: Tensor, patch_size: int) -> Tensor:
    """The inverse of :func:`split_into_subimages`: ``[B, b^2, C, h, w] -> [B, C, b h, b w]``."""
    batch, count, channels, height, width = subimages.shape
    b = patch_size
    if count != b * b:
        raise ValueError(f"{b}x{b} patches need {b * b} sub-images, got {count}")
    patches = subimages.reshape(batch, b, b, channels, height, width).permute(0, 3, 4, 1, 5, 2)
    return patches.reshape(batch, channels, height * b, width * b)


def check_patch_size(patch_size: int) -> None:
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 2:
        raise ValueError(f"backbone.patch_size must be an integer >= 2, got {patch_size!r}")


class FeatureExtraction(nn.Module):
    """FExM: ``x -> f' = stack(f_{S_1}, ..., f_{S_{b^2}}, f_x)``, ``[B, C, b^2 + 1, H/b, W/b]``.

    Args:
        channels: width ``C`` of every feature.
        patch_size: ``b``.
        convolutions: per sub-image, 2 (Proposed) or 1 (Proposed-Tiny), all 3x3.
    """

    def __init__(self, channels: int, patch_size: int = 2, convolutions: int = 2) -> None:
        super().__init__()
        check_patch_size(patch_size)
        self.patch_size = patch_size
        count = patch_size**2
        layers: list[nn.Module] = []
        width = 3
        for index in range(convolutions):
            if index:
                layers.append(nn.PReLU(channels * count))
            layers.append(nn.Conv2d(width * count, channels * count, 3, padding=1, groups=count))
            width = channels
        self.subimages = nn.Sequential(*layers)
        self.image = nn.Conv2d(
            3, channels, 2 * patch_size + 1, stride=patch_size, padding=patch_size
        )

    def forward(self, x: Tensor) -> Tensor:
        subimages = split_into_subimages(x, self.patch_size)
        batch, count, _, height, width = subimages.shape
        features = self.subimages(subimages.reshape(batch, count * 3, height, width))
        features = features.reshape(batch, count, -1, height, width).transpose(1, 2)
        return torch.cat([features, self.image(x)[:, :, None]], dim=2)


class InverseFeatureExtraction(nn.Module):
    """Inverse FExM: the enhanced feature ``[B, N, H/b, W/b]`` -> the image ``[B, 3, H, W]``.

    Args:
        in_channels: ``N``, the width of the decoded feature.
        channels, patch_size, convolutions: as the encoder's :class:`FeatureExtraction`.
    """

    def __init__(
        self, in_channels: int, channels: int, patch_size: int = 2, convolutions: int = 2
    ) -> None:
        super().__init__()
        check_patch_size(patch_size)
        self.patch_size = patch_size
        count = patch_size**2
        self.spread = nn.Conv2d(in_channels, channels * (count + 1), 1)
        layers: list[nn.Module] = []
        for index in range(convolutions):
            last = index == convolutions - 1
            out = 3 if last else channels
            layers.append(
                nn.ConvTranspose2d(channels * count, out * count, 3, padding=1, groups=count)
            )
            if not last:
                layers.append(nn.PReLU(channels * count))
        self.subimages = nn.Sequential(*layers)
        self.image = nn.ConvTranspose2d(
            channels,
            3,
            2 * patch_size + 1,
            stride=patch_size,
            padding=patch_size,
            output_padding=patch_size - 1,
        )
        self.channels = channels

    def forward(self, feature: Tensor) -> Tensor:
        count = self.patch_size**2
        spread = self.spread(feature)
        batch, _, height, width = spread.shape
        subimages = self.subimages(spread[:, : count * self.channels])
        subimages = subimages.reshape(batch, count, 3, height, width)
        return merge_subimages(subimages, self.patch_size) + self.image(
            spread[:, count * self.channels :]
        )
