"""The symbol-coding seam: how a strategy turns a coded latent into rANS symbols and back.

::

    encode:  v (coded latent), EntropyParameters(scales, means)
             -> SymbolEncoding: symbols and their CDF-table indexes (in stream order),
                                the reconstruction of v, the element-wise likelihoods
    decode:  read(indexes) -> symbols      (called once, or step by step, on one stream)
             -> the reconstruction of v, bit-exactly the encoder's

Every strategy owns one :class:`SymbolCoding` (``QuantizationStrategy.symbol_coding``),
which also says which CDF tables its symbols need (:meth:`SymbolCoding.cdf_tables`); the
latent coders and the staged rANS coder only carry symbols between this seam and rANS.
The hard path of every backbone (the eval-mode forward pass, ``compress``, the estimated
bpp and the gap metrics) is :meth:`SymbolCoding.encode`, and ``decompress`` is
:meth:`SymbolCoding.decode`, so what the decoder rebuilds is what the encoder computed.

:class:`ScalarSymbols` is scalar rounding, ``round(v - offset) + offset``, with
CompressAI's scale-indexed tables and, for a strategy that rounds off the mean's grid,
tables for fractional mean offsets; :mod:`licexp.quant.trellis` holds trellis-coded
quantisation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class EntropyParameters:
    """The conditional Gaussian ``N(means, scales)`` of each element of a latent."""

    scales: Tensor
    means: Tensor | None = None
    """``None`` for a zero-mean model (Balle et al.'s scale hyperprior)."""

    def map(self, function: Callable[[Tensor], Tensor]) -> EntropyParameters:
        """The parameters with ``function`` applied to scales and means (selection, detach)."""
        means = None if self.means is None else function(self.means)
        return EntropyParameters(function(self.scales), means)

    def centred(self, coded: Tensor) -> Tensor:
        """``v - mu`` (``v`` for a zero-mean model)."""
        return coded if self.means is None else coded - self.means


@dataclass(frozen=True)
class CdfTables:
    """Quantised CDFs as CompressAI's rANS coder takes them: one row per table."""

    cdf: Tensor
    """``int32 [T, L]``: row ``t`` holds ``lengths[t]`` valid entries (the rest is padding)."""
    lengths: Tensor
    """``int32 [T]``: entries of each CDF (pmf length + 2: CompressAI's escape symbol)."""
    offsets: Tensor
    """``int32 [T]``: the value of each table's first symbol."""

    def __len__(self) -> int:
        return self.cdf.size(0)

    @staticmethod
    def concatenate(*tables: CdfTables) -> CdfTables:
        """The tables of several blocks, one after another (rows padded to the longest)."""
        width = max(t.cdf.size(1) for t in tables)
        return CdfTables(
            torch.cat([torch.nn.functional.pad(t.cdf, (0, width - t.cdf.size(1))) for t in tables]),
            torch.cat([t.lengths for t in tables]),
            torch.cat([t.offsets for t in tables]),
        )


def scale_table_rows(scales: Tensor, table: Tensor) -> Tensor:
    """The scale-table row of each element (``int64``): the smallest table scale at or above
    its scale, the last row above the table (and for NaN). CompressAI's ``build_indexes``
    picks the same row with one comparison pass per row; this is one binary search."""
    boundaries = table[:-1].to(scales.device, scales.dtype)
    return torch.searchsorted(boundaries, scales.detach().contiguous())


class GaussianTableModel(Protocol):
    """What a symbol coding needs of the Gaussian entropy model that holds the tables
    (:class:`licexp.backbones.latent_coders.SymbolTableConditional`)."""

    num_scales: int
    scale_table: Tensor

    def tail_multiplier(self) -> float:
        """The Gaussian quantile ``m`` below which the tables leave CompressAI's tail mass."""

    def scale_indexes(self, scales: Tensor) -> Tensor:
        """The scale-table entry of every element (CompressAI's ``build_indexes``)."""

    def likelihood(self, values: Tensor, scales: Tensor, means: Tensor | None) -> Tensor:
        """Lower-bounded mass of ``N(mu, sigma)`` over ``[v - 1/2, v + 1/2]``."""

    def centred_tables(self) -> CdfTables:
        """CompressAI's tables of ``round(v - mu)``, one per scale."""

    def interval_tables(
        self, scales: Tensor, lower: Tensor, upper: Tensor, valid: Tensor, first: Tensor
    ) -> CdfTables:
        """One table per row: symbol ``j`` has the mass of ``N(0, scales)`` over
        ``[lower[:, j], upper[:, j]]`` where ``valid``; ``first`` is symbol 0's value."""


@dataclass
class SymbolEncoding:
    """What the encoder writes for one latent, and what it reconstructs."""

    symbols: Tensor
    """``int32 [B, n]``: each image's symbols in the order the decoder reads them."""
    indexes: Tensor
    """``int32 [B, n]``: the CDF table of each symbol."""
    reconstruction: Tensor
    """The quantised coded latent (shape of ``v``): what decoding the symbols gives."""
    likelihoods: Tensor
    """The model's probability of each element's symbol (shape of ``v``)."""


SymbolReader = Callable[[Tensor], Tensor]
"""``read(indexes [B, m]) -> symbols [B, m]``: the next ``m`` symbols of each image's
stream, decoded with the given CDF tables. May be called repeatedly on one stream."""


class SymbolCoding(ABC):
    """One strategy's symbols: its CDF tables, its encoder and its decoder (module docstring).

    Instances are frozen dataclasses: two codings are equal when they need the same
    tables, which the entropy model checks before coding with the tables it holds.
    """

    @abstractmethod
    def cdf_tables(self, model: GaussianTableModel) -> CdfTables:
        """Every CDF table a symbol of this coding may name."""

    @abstractmethod
    def encode(
        self, coded: Tensor, parameters: EntropyParameters, model: GaussianTableModel
    ) -> SymbolEncoding:
        """Quantises ``coded`` (``[B, ...]``) into symbols; the encoder's hard path."""

    @abstractmethod
    def decode(
        self, read: SymbolReader, parameters: EntropyParameters, model: GaussianTableModel
    ) -> Tensor:
        """Rebuilds the reconstruction of :meth:`encode` from the symbols ``read`` returns."""


MEAN_OFFSET_LEVELS = 16
"""Resolution of the mean-offset grid of :class:`ScalarSymbols` off the mean's grid."""


@dataclass(frozen=True)
class ScalarSymbols(SymbolCoding):
    """Scalar rounding: symbols ``round(v - offset)``, reconstruction ``symbols + offset``.

    ``centred=True`` rounds around the predicted mean (``offset = mu``) and codes with
    CompressAI's scale-indexed tables of ``N(0, sigma)``. ``centred=False`` rounds
    plainly, ``v_hat = round(v)`` (Pan et al.'s "noise" at test time): the symbols
    ``round(v) - round(mu)`` then follow a pmf ``Phi((s + 1/2 - d) / sigma) - Phi((s - 1/2
    - d) / sigma)`` centred on ``d = mu - round(mu)`` in ``[-1/2, 1/2]``, and are coded
    with tables for the scale table times ``L + 1`` offsets ``d_j = -1/2 + j / L``
    (``L`` = :data:`MEAN_OFFSET_LEVELS`), each symbol with its scale's and nearest offset's
    table, after CompressAI's centred block. A zero-mean model (no ``mu``) has ``d = 0``
    and codes with the centred block either way: the same symbols cost the same bytes.
    """

    centred: bool = True

    def cdf_tables(self, model: GaussianTableModel) -> CdfTables:
        centred = model.centred_tables()
        if self.centred:
            return centred
        return CdfTables.concatenate(centred, mean_offset_tables(model))

    def offset(self, means: Tensor | None) -> Tensor | None:
        """The symbols' offset: ``mu`` around the mean, ``round(mu)`` off its grid."""
        if means is None or self.centred:
            return means
        return torch.round(means)

    def indexes(self, parameters: EntropyParameters, model: GaussianTableModel) -> Tensor:
        """The CDF table of every element: its scale, and (off the grid) its mean offset."""
        indexes = model.scale_indexes(parameters.scales)
        if self.centred or parameters.means is None:
            return indexes
        mean_offsets = parameters.means - torch.round(parameters.means)
        position = torch.round((mean_offsets + 0.5) * MEAN_OFFSET_LEVELS)
        block = 1 + position.clamp(0, MEAN_OFFSET_LEVELS).int()
        return indexes + block * model.num_scales

    def encode(
        self, coded: Tensor, parameters: EntropyParameters, model: GaussianTableModel
    ) -> SymbolEncoding:
        offset = self.offset(parameters.means)
        symbols = torch.round(coded if offset is None else coded - offset)
        reconstruction = symbols if offset is None else symbols + offset
        batch = coded.size(0)
        return SymbolEncoding(
            symbols=symbols.int().reshape(batch, -1),
            indexes=self.indexes(parameters, model).reshape(batch, -1),
            reconstruction=reconstruction,
            likelihoods=model.likelihood(reconstruction, parameters.scales, parameters.means),
        )

    def decode(
        self, read: SymbolReader, parameters: EntropyParameters, model: GaussianTableModel
    ) -> Tensor:
        indexes = self.indexes(parameters, model)
        symbols = read(indexes.reshape(indexes.size(0), -1)).reshape(indexes.shape)
        values = symbols.to(parameters.scales.dtype)
        offset = self.offset(parameters.means)
        return values if offset is None else values + offset


def mean_offset_tables(model: GaussianTableModel) -> CdfTables:
    """Tables of ``round(v) - round(mu)`` for the mean offsets ``d_j`` of :class:`ScalarSymbols`.

    For scale ``sigma`` and offset ``d``: symbols ``s`` in ``[-c, c]``, ``c = ceil(sigma *
    m + 1/2)`` with ``m`` the Gaussian quantile of CompressAI's tail mass, each with the mass
    of ``N(d, sigma)`` over ``[s - 1/2, s + 1/2]``.
    """
    scale_table = model.scale_table
    offsets = torch.linspace(-0.5, 0.5, MEAN_OFFSET_LEVELS + 1, device=scale_table.device)
    scales = scale_table.repeat(len(offsets))
    means = offsets.repeat_interleave(len(scale_table))
    centre = torch.ceil(scales * model.tail_multiplier() + 0.5).int()
    width = int((2 * centre + 1).max())
    samples = torch.arange(width, device=scales.device) - centre[:, None]
    centred = samples.float() - means[:, None]
    return model.interval_tables(
        scales, centred - 0.5, centred + 0.5, samples.abs() <= centre[:, None], -centre
    )
