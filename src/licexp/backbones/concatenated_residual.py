"""The transform units of the Tiny-LIC family: ICSA (Tiny-LIC) and ICRSA (Jiang et al.).

Tiny-LIC's integrated convolution and self-attention unit (ICSA) is a strided convolution
followed by an RNAB. Jiang et al. (Section III.D, Fig. 2) put a two-stage concatenated
residual module (CRM, after Fu et al.) between the two, giving ICRSA: conv -> CRM -> RNAB
in the encoders, mirrored as RNAB -> CRM -> transposed conv in the decoders. Their
Proposed-Tiny replaces the CRM by a single 3x3 convolution (Section IV.C).

The CRM is "the cascading of two residual blocks connected by a shortcut between the
input and output"; the paper gives no layers, so each residual block here is Fu et al.'s
``x + conv3x3(ReLU(conv3x3(x)))`` at the unit's width. With CRMs in all twelve units of
Tiny-LIC (four in ``g_a`` and ``g_s``, two in ``h_a`` and ``h_s``) they add
``36 C^2`` weights per unit, 21.2M in all: exactly the 49.5M - 28.3M of Table III.
"""

from __future__ import annotations

from compressai.models.utils import conv
from torch import Tensor, nn

UNITS = ("icsa", "icrsa", "icrsa_conv")
"""``icsa``: Tiny-LIC's conv -> RNAB; ``icrsa``: conv -> CRM -> RNAB; ``icrsa_conv``: the CRM
replaced by one 3x3 convolution (Proposed-Tiny)."""


class ResidualBlock(nn.Module):
    """``x + conv3x3(ReLU(conv3x3(x)))`` at constant width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(channels, channels, kernel_size=3, stride=1),
            nn.ReLU(inplace=True),
            conv(channels, channels, kernel_size=3, stride=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ConcatenatedResidual(nn.Module):
    """CRM: ``x + RB_2(RB_1(x))``, two residual blocks with a shortcut over both."""

    def __init__(self, channels: int, blocks: int = 2) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualBlock(channels) for _ in range(blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.blocks(x)


def unit_middle(unit: str, channels: int) -> list[nn.Module]:
    """What a unit puts between its convolution and its RNAB: nothing, a CRM or a 3x3 conv."""
    if unit not in UNITS:
        raise ValueError(f"backbone.unit must be one of {UNITS}, got {unit!r}")
    if unit == "icrsa":
        return [ConcatenatedResidual(channels)]
    if unit == "icrsa_conv":
        return [conv(channels, channels, kernel_size=3, stride=1)]
    return []
