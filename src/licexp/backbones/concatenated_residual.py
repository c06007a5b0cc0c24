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

Initialisation. A CRM's output holds its input twice, through its shortcut and through
the residual blocks' own, plus the blocks' branches: at PyTorch's default initialisation it
multiplies the standard deviation by 2.0 to 2.1 in ``jiang``. Twelve of them (beside
Tiny-LIC's RNABs, which double too) took an untrained ``jiang``'s ``y`` to a standard
deviation of 28 and ``x_hat`` to 237 on a uniform random image, against Tiny-LIC's 1.1 and
1.3; training recovered only through gradient clipping. :func:`absorb_crm_gain` halves the
convolution beside each CRM, so that an ICRSA unit starts with the gain of its ICSA unit:
the principle of Fixup (Zhang et al., 2019) and SkipInit (De and Smith, 2020), a residual
network initialised so that its depth does not multiply the signal. Those zero-initialise
the last layer of each residual branch; here that would leave the CRM at exactly ``2x`` all
the same, and a zero convolution in ``g_a`` makes spectral normalisation
(``quant=ste_sn``, ``soft_ste``) divide by a zero norm. Only starting weights change, not
the architecture.
"""

from __future__ import annotations

import torch
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
    """CRM: ``x + RB_2(RB_1(x))``, two residual blocks with a shortcut over both; about ``2x``
    at initialisation (module docstring)."""

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


def absorb_crm_gain(
    transform: nn.Sequential, *, analysis: bool, transparent: tuple[type[nn.Module], ...] = ()
) -> None:
    """Halves the convolution beside each CRM of ``transform``, which starts at about ``2x``,
    so that every ICRSA unit starts with the gain of its ICSA unit (module docstring).

    In an analysis transform (``conv -> CRM -> RNAB``) the last convolution before the CRM
    gets half its weight and bias: ``CRM(conv(x) / 2) ~ conv(x)``. In a synthesis transform
    (``RNAB -> CRM -> conv``) the first convolution after it gets half its weight:
    ``conv'(CRM(h)) ~ conv'(2 h) = conv(h)``; modules of the types in ``transparent``,
    identities at their start (Jiang et al.'s FEnM), are passed over. Call it once, on
    freshly built weights.
    """
    modules = list(transform)
    for index, module in enumerate(modules):
        if not isinstance(module, ConcatenatedResidual):
            continue
        if analysis:
            neighbours = modules[max(index - 1, 0) : index]
        else:
            neighbours = [m for m in modules[index + 1 :] if not isinstance(m, transparent)]
        convolutions = [
            m
            for neighbour in neighbours
            for m in neighbour.modules()
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
        ]
        if not convolutions:
            raise ValueError(f"no convolution beside the CRM at index {index} of the transform")
        beside = convolutions[-1] if analysis else convolutions[0]
        with torch.no_grad():
            beside.weight.mul_(0.5)
            if analysis and beside.bias is not None:
                beside.bias.mul_(0.5)
