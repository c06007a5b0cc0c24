"""The multistage context model of Tiny-LIC (Lu and Ma, 2022, Section III-C).

The latent ``y`` (``M`` channels) is split into four channel slices whose sizes follow the
cosine schedule ``gamma(r) = cos(pi r / 2)`` (:func:`cosine_slices`; ``[24, 69, 104, 123]``
for ``M = 320``). Every slice is coded in spatial steps over the four parity planes
``(row mod 2, col mod 2)`` of the latent grid:

- slice 0 in four steps, planes ``(0, 0)``, ``(1, 1)``, ``(0, 1)``, ``(1, 0)``;
- slice 1 as a checkerboard, anchors ``row + col`` odd, then the even positions;
- slice 2 as a checkerboard with the opposite anchors (even first, then odd);
- slice 3 in one step, without spatial context;

nine sequential evaluations of the entropy parameters in all (:data:`STAGES`). The
parameters ``(sigma, mu)`` of a step come from an entropy-parameter head of 1x1
convolutions (GELU between them) on ``[psi, sc, cc]``: ``psi`` is the hyper decoder's
output, ``cc`` the channel context of the slice (two 5x5 and one 3x3 convolutions on
``psi`` and all earlier decoded slices) and ``sc`` the spatial context (one convolution,
3x3 for the second step of slice 0 and 5x5 otherwise, on the slice's decoded planes,
zeros elsewhere; zeros at a slice's first step; absent for slice 3).

Reading only the decoded planes makes the convolutions equivalent to the masked ones of
the authors' release (a tap on an undecoded position sees zero, and only the outputs on
the step's own planes are used); the kernels keep their full size, as there.

One loop (:meth:`MultistageContextModel.decode`) serves the training forward pass, the
hard forward pass, the encoder and the decoder: a ``code_stage`` callback quantises or
codes the positions of each step and returns what the decoder side sees there, so every
path computes the entropy parameters by the same operations in the same order, which
keeps the decoder bit-exact to the encoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from compressai.models.utils import conv
from torch import Tensor, nn

from licexp.quant import EntropyParameters

PLANES = ((0, 0), (0, 1), (1, 0), (1, 1))
"""The parity planes ``(row mod 2, col mod 2)``; a plane is named by its index here."""


@dataclass(frozen=True)
class Stage:
    """One sequential step of the context model."""

    slice_index: int
    planes: tuple[int, ...]
    """The parity planes (indices into :data:`PLANES`) whose symbols this step codes."""
    spatial_context: int | None
    """Index of the spatial-context convolution reading the slice's decoded planes, or
    ``None`` at the first step of a slice (zeros instead) and for the last slice."""


STAGES = (
    Stage(0, (0,), None),
    Stage(0, (3,), 0),
    Stage(0, (1,), 1),
    Stage(0, (2,), 2),
    Stage(1, (1, 2), None),
    Stage(1, (0, 3), 3),
    Stage(2, (0, 3), None),
    Stage(2, (1, 2), 4),
    Stage(3, (0, 1, 2, 3), None),
)
"""The nine steps: slice 0 by parity, slices 1 and 2 as opposite checkerboards, slice 3."""

SPATIAL_CONTEXT_KERNELS = (3, 5, 5, 5, 5)
"""Kernel sizes of the spatial-context convolutions, by their index in :data:`STAGES`."""

NUM_SLICES = 4


def cosine_slices(M: int, num_slices: int = NUM_SLICES) -> list[int]:
    """Channel slice sizes of the cosine schedule: ``[24, 69, 104, 123]`` for ``M = 320``.

    Slice ``t`` (from 1) holds ``ceil(gamma((t - 1) / T) M) - ceil(gamma(t / T) M)``
    channels, ``gamma(r) = cos(pi r / 2)``, ``T = num_slices`` (the last slice ends at
    ``gamma(1) = 0``). The same formula scales to any ``M``: e.g. ``[2, 7, 10, 13]`` for
    ``M = 32``; it raises if a slice would be empty (``M`` too small).
    """
    boundaries = (
        [M]
        + [math.ceil(math.cos(math.pi * t / (2 * num_slices)) * M) for t in range(1, num_slices)]
        + [0]
    )
    slices = [high - low for high, low in zip(boundaries, boundaries[1:], strict=False)]
    if min(slices) < 1:
        raise ValueError(f"M = {M} is too small for {num_slices} non-empty slices: {slices}")
    return slices


def to_planes(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, C, 4, H/2, W/2)``: the parity planes in the order of :data:`PLANES`."""
    batch, channels, height, width = x.shape
    planes = x.reshape(batch, channels, height // 2, 2, width // 2, 2)
    return planes.permute(0, 1, 3, 5, 2, 4).reshape(batch, channels, 4, height // 2, width // 2)


def from_planes(planes: Tensor) -> Tensor:
    """The inverse of :func:`to_planes`."""
    batch, channels, _, height, width = planes.shape
    x = planes.reshape(batch, channels, 2, 2, height, width).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(batch, channels, 2 * height, 2 * width)


def channel_context_transform(in_channels: int, slice_channels: int) -> nn.Sequential:
    """``cc``: 5x5, GELU, 5x5, GELU, 3x3 convolutions to ``2 s`` channels (``s`` = slice size)."""
    return nn.Sequential(
        conv(in_channels, slice_channels, kernel_size=5, stride=1),
        nn.GELU(),
        conv(slice_channels, slice_channels, kernel_size=5, stride=1),
        nn.GELU(),
        conv(slice_channels, 2 * slice_channels, kernel_size=3, stride=1),
    )


def entropy_parameter_head(
    hyper_channels: int, slice_channels: int, spatial: bool
) -> nn.Sequential:
    """1x1 convolutions from ``[psi, sc, cc]`` to ``(sigma, mu)`` of a slice (``2 s`` channels).

    With spatial context the widths are ``psi + 4s -> 10s/3 -> 8s/3 -> 2s``, without it
    ``psi + 2s -> 2s -> 2s -> 2s`` (integer division, as in the authors' release).
    """
    s = slice_channels
    if spatial:
        widths = [hyper_channels + 4 * s, 10 * s // 3, 8 * s // 3, 2 * s]
    else:
        widths = [hyper_channels + 2 * s, 2 * s, 2 * s, 2 * s]
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(widths, widths[1:], strict=False)):
        if index:
            layers.append(nn.GELU())
        layers.append(conv(width_in, width_out, kernel_size=1, stride=1))
    return nn.Sequential(*layers)


StageCoder = Callable[[Stage, EntropyParameters], Tensor]
"""``code_stage(stage, parameters) -> decoded``: quantises (or codes, or decodes) the
positions of ``stage`` given their entropy parameters, all shaped ``(B, s, n, H/2, W/2)``
for the ``n`` planes of the step, and returns the values the decoder side sees there."""


class MultistageContextModel(nn.Module):
    """Entropy parameters of ``y`` in nine steps from ``psi = h_s(z_hat)`` and decoded ``y``.

    Args:
        M: channels of ``y``.
        hyper_channels: channels of ``psi`` (``2M`` in Tiny-LIC).
        slices: the four slice sizes; :func:`cosine_slices` of ``M`` by default.
    """

    def __init__(self, M: int, hyper_channels: int, slices: Sequence[int] | None = None) -> None:
        super().__init__()
        self.slices = list(slices) if slices is not None else cosine_slices(M)
        if len(self.slices) != NUM_SLICES or sum(self.slices) != M or min(self.slices) < 1:
            raise ValueError(
                f"need {NUM_SLICES} non-empty slices summing to M = {M}, got {self.slices}"
            )
        last = NUM_SLICES - 1
        self.channel_context = nn.ModuleList(
            channel_context_transform(hyper_channels + sum(self.slices[:index]), size)
            for index, size in enumerate(self.slices)
        )
        spatial_slices = [s.slice_index for s in STAGES if s.spatial_context is not None]
        self.spatial_context = nn.ModuleList(
            conv(self.slices[index], 2 * self.slices[index], kernel_size=kernel, stride=1)
            for index, kernel in zip(spatial_slices, SPATIAL_CONTEXT_KERNELS, strict=True)
        )
        self.entropy_parameters = nn.ModuleList(
            entropy_parameter_head(hyper_channels, size, spatial=index != last)
            for index, size in enumerate(self.slices)
        )

    def select(self, stage: Stage, tensor: Tensor) -> Tensor:
        """The positions of ``stage`` in a full ``(B, M, H, W)`` tensor: ``(B, s, n, H/2, W/2)``."""
        start = sum(self.slices[: stage.slice_index])
        channels = tensor[:, start : start + self.slices[stage.slice_index]]
        return to_planes(channels)[:, :, list(stage.planes)]

    def assemble(self, parts: Sequence[Tensor]) -> Tensor:
        """The full ``(B, M, H, W)`` tensor from one part per stage (in :data:`STAGES` order)."""
        if len(parts) != len(STAGES):
            raise ValueError(f"need one tensor per stage ({len(STAGES)}), got {len(parts)}")
        planes: dict[tuple[int, int], Tensor] = {}
        for stage, part in zip(STAGES, parts, strict=True):
            for plane, values in zip(stage.planes, part.unbind(2), strict=True):
                planes[stage.slice_index, plane] = values
        return torch.cat(
            [
                from_planes(torch.stack([planes[index, p] for p in range(len(PLANES))], 2))
                for index in range(len(self.slices))
            ],
            dim=1,
        )

    def decode(self, hyper: Tensor, code_stage: StageCoder) -> Tensor:
        """Runs the nine stages in order and returns the decoder-side ``y_hat`` ``(B, M, H, W)``.

        ``hyper`` is ``psi = h_s(z_hat)``; ``code_stage`` is called once per stage (see
        :data:`StageCoder`), and what it returns is the context of every later stage.
        """
        batch, _, height, width = hyper.shape
        if height % 2 or width % 2:
            raise ValueError(f"the parity planes need an even latent size, got {height}x{width}")
        decoded_slices: list[Tensor] = []
        for index, size in enumerate(self.slices):
            channel_context = self.channel_context[index](torch.cat([hyper, *decoded_slices], 1))
            planes: list[Tensor] = [
                hyper.new_zeros(batch, size, height // 2, width // 2) for _ in PLANES
            ]
            for stage in (s for s in STAGES if s.slice_index == index):
                context = [hyper]
                if index != NUM_SLICES - 1:
                    if stage.spatial_context is None:
                        context.append(hyper.new_zeros(batch, 2 * size, height, width))
                    else:
                        decoded = from_planes(torch.stack(planes, 2))
                        context.append(self.spatial_context[stage.spatial_context](decoded))
                context.append(channel_context)
                parameters = self.entropy_parameters[index](torch.cat(context, 1))
                scales, means = (
                    to_planes(p)[:, :, list(stage.planes)] for p in parameters.chunk(2, 1)
                )
                values = code_stage(stage, EntropyParameters(scales, means))
                for plane, plane_values in zip(stage.planes, values.unbind(2), strict=True):
                    planes[plane] = plane_values
            decoded_slices.append(from_planes(torch.stack(planes, 2)))
        return torch.cat(decoded_slices, 1)
