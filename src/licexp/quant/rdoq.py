"""Rate-distortion optimised scalar quantisation (``quant=rdoq``): TCQ's fair scalar baseline.

::

    v = y - mu                                      (levels relative to the predicted mean)
    k = argmin over {floor(v / step), ceil(v / step), 0} of  (v - k step)^2 + rd_lambda R(k)
    y_hat = mu + k * step
    rate:  P(k) = mass of N(0, sigma) over [(k - 1/2) step, (k + 1/2) step]

Dependent quantisation in VVC is measured against RDOQ, scalar quantisation whose encoder
decides, per coefficient, between the levels either side of the value and zero under the
codec's rate; plain rounding makes no such decision. This is that baseline under TCQ's own
rate model (:mod:`licexp.quant.tcq`): the Gaussian's mass over the index's cell at the
element's *table* scale (the one its symbol is coded with), and the same ``D + rd_lambda
R`` in squared latent units per bit. The symbols are independent, so the optimal choice
is the argmin per element. With ``step = 1`` and ``rd_lambda = 0`` it is rounding around
the mean. ``channel_weights`` weight the distortion per latent channel as TCQ's do.

**Training** (``quantize_train``): straight-through, as TCQ's: the decoder sees the RDOQ
reconstruction with the identity gradient, and the rate is the code length of the chosen
indices at the table scales (differentiable in the scales and the means).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from licexp.quant.base import LikelihoodFunction, QuantizationStrategy, QuantizedLatent
from licexp.quant.sensitivity import (
    calibrated,
    channel_weights_setting,
    check_channel_weights,
)
from licexp.quant.symbols import (
    CdfTables,
    EntropyParameters,
    GaussianTableModel,
    SymbolCoding,
    SymbolEncoding,
    SymbolReader,
    scale_table_rows,
)
from licexp.quant.tcq import channel_weight_map, coded_scales, scale_table
from licexp.quant.trellis import gaussian_cell_mass


@dataclass(frozen=True)
class RateDistortionScalarSymbols(SymbolCoding):
    """RDOQ symbols: indices ``k`` chosen per element, CDF tables by scale (module docstring).

    Args:
        step: the quantiser's step, in latent units.
        rd_lambda: ``lambda`` of ``J = D + lambda R`` (squared latent units per bit).
        channel_weights: ``w_c`` per latent channel: ``D = w_c (v - k step)^2``; ``None``: 1.
    """

    step: float = 1.0
    rd_lambda: float = 0.025
    # The encoder's choice alone: not in the repr (the bitstream's model fingerprint) nor in
    # equality (which CDF tables fit), as neither the tables nor the decoder depend on it.
    channel_weights: tuple[float, ...] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.step > 0:
            raise ValueError(f"quant.step must be > 0, got {self.step}")
        if self.rd_lambda < 0:
            raise ValueError(f"quant.rd_lambda must be >= 0, got {self.rd_lambda}")
        check_channel_weights(self.channel_weights)

    def cell_likelihoods(
        self, indices: Tensor, scales: Tensor, shift: Tensor | float = 0.0
    ) -> Tensor:
        """``P(k)``: the mass of ``N(shift, sigma)`` over ``[(k - 1/2) step, (k + 1/2) step]``."""
        lower, upper = (indices - 0.5) * self.step, (indices + 0.5) * self.step
        return gaussian_cell_mass(lower - shift, upper - shift, scales)

    def candidates(self, residual: Tensor) -> Tensor:
        """``[..., 3]``: ``floor``, ``ceil`` of ``v / step`` and zero (in that order)."""
        scaled = residual / self.step
        return torch.stack([torch.floor(scaled), torch.ceil(scaled), torch.zeros_like(scaled)], -1)

    def cost(self, residual: Tensor, indices: Tensor, scales: Tensor) -> Tensor:
        """``w (v - k step)^2 + lambda R(k)`` of every index in ``indices [..., K]``
        (``residual [B, C, ...]``)."""
        distortion = (residual.unsqueeze(-1) - indices * self.step) ** 2
        weights = channel_weight_map(self.channel_weights, residual)
        if weights is not None:
            distortion = weights.unsqueeze(-1) * distortion
        bits = -torch.log2(self.cell_likelihoods(indices, scales.unsqueeze(-1)))
        return distortion + self.rd_lambda * bits

    def choose(self, residual: Tensor, scales: Tensor) -> Tensor:
        """The cheapest candidate of every element (ties: floor, then ceil, then zero)."""
        with torch.no_grad():
            candidates = self.candidates(residual)
            choice = self.cost(residual, candidates, scales).argmin(dim=-1, keepdim=True)
            return candidates.gather(-1, choice)[..., 0]

    def reconstruct(self, indices: Tensor, parameters: EntropyParameters) -> Tensor:
        levels = indices * self.step
        return levels if parameters.means is None else parameters.means + levels

    def indexes(self, scales: Tensor, model: GaussianTableModel) -> Tensor:
        """The CDF table of each symbol: its scale's row."""
        return scale_table_rows(scales, scale_table(model.scale_table, scales)).int()

    def cdf_tables(self, model: GaussianTableModel) -> CdfTables:
        """For each scale: indices ``-K .. K`` with their cells' masses, ``K = ceil(m sigma /
        step + 1/2)`` for the tail quantile ``m``; larger indices take the coder's escape."""
        scales = model.scale_table
        reach = torch.ceil(model.tail_multiplier() * scales / self.step + 0.5).long()
        samples = torch.arange(int(2 * reach.max() + 1), device=scales.device) - reach[:, None]
        valid = samples.abs() <= reach[:, None]
        lower, upper = (samples - 0.5) * self.step, (samples + 0.5) * self.step
        return model.interval_tables(scales, lower, upper, valid, -reach.int())

    def encode(
        self, coded: Tensor, parameters: EntropyParameters, model: GaussianTableModel
    ) -> SymbolEncoding:
        scales = coded_scales(parameters.scales, model.scale_table)
        indices = self.choose(parameters.centred(coded), scales)
        batch = coded.size(0)
        return SymbolEncoding(
            symbols=indices.int().reshape(batch, -1),
            indexes=self.indexes(parameters.scales, model).reshape(batch, -1),
            reconstruction=self.reconstruct(indices, parameters),
            likelihoods=self.cell_likelihoods(indices, scales),
        )

    def decode(
        self, read: SymbolReader, parameters: EntropyParameters, model: GaussianTableModel
    ) -> Tensor:
        indexes = self.indexes(parameters.scales, model)
        symbols = read(indexes.reshape(indexes.size(0), -1)).reshape(indexes.shape)
        return self.reconstruct(symbols.to(parameters.scales.dtype), parameters)


class RateDistortionScalarQuantization(QuantizationStrategy):
    """RDOQ at inference, straight-through RDOQ in training (module docstring).

    Args: those of :class:`RateDistortionScalarSymbols` (``quant.step``,
    ``quant.rd_lambda``, ``quant.channel_weights``, which may be ``"sensitivity"`` as
    TCQ's: measured by :meth:`calibrate`).
    """

    def __init__(
        self,
        step: float = 1.0,
        rd_lambda: float = 0.025,
        channel_weights: str | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.measures_weights, fixed = channel_weights_setting(channel_weights)
        self.coding = RateDistortionScalarSymbols(step, rd_lambda, fixed)

    @property
    def symbol_coding(self) -> RateDistortionScalarSymbols:
        return self.coding

    def quantize_train(
        self, coded: Tensor, parameters: EntropyParameters, likelihood_fn: LikelihoodFunction
    ) -> QuantizedLatent:
        del likelihood_fn
        coding = self.coding
        scales = coded_scales(parameters.scales)
        fixed = EntropyParameters(scales, parameters.means).map(Tensor.detach)
        indices = coding.choose(fixed.centred(coded.detach()), fixed.scales)
        reconstruction = coding.reconstruct(indices, fixed)
        decoder_input = coded + (reconstruction - coded).detach()
        # The cells sit where the choice put them: a moving mean moves the Gaussian under them.
        shift = 0.0 if fixed.means is None else parameters.means - fixed.means
        return QuantizedLatent(
            rate_input=decoder_input,
            decoder_input=decoder_input,
            likelihoods=coding.cell_likelihoods(indices, scales, shift),
        )

    def calibrate(self, codec: nn.Module) -> None:
        """``channel_weights=sensitivity``: measures them on ``codec``, as TCQ does."""
        self.coding = calibrated(self.coding, codec, self.measures_weights)

    def extra_repr(self) -> str:
        return repr(self.coding)
