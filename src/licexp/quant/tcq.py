"""Trellis-coded quantisation of the latent (``quant=tcq``; Borzechowski et al., seed 003).

::

    v = y - mu                                      (levels relative to the predicted mean)
    chains of v  --Viterbi, J = D + rd_lambda R-->  indices k, states s
    y_hat = mu + level(k, Q(s)) * step              Q0: 2k, Q1: 2k - sgn(k)
    rate:  P(k | s) = mass of N(0, sigma) over k's decision cell in Q(s)

The trellis, quantisers and search are in :mod:`licexp.quant.trellis`. The rate model is
the mass of the predicted Gaussian over the decision cell of an index's level in the
quantiser of its state (midpoints between that quantiser's neighbouring levels), so a
symbol's CDF table is indexed by its scale and its quantiser; levels are relative to the
mean, so no mean-offset tables are needed, and a zero-mean model takes ``mu = 0``. The
search and the estimated rate use each element's *table* scale, the scale its symbol is
coded with (the smallest of the coder's scales at or above the predicted one): TCQ's
cells are half as wide as rounding's, which makes the code length of a small-scale
element sensitive to the table's ~13 % steps, and the search then minimises what rANS
spends.

**Chains** (``scan``): ``"row"`` makes every row of every channel plane a chain (of the
latent's width), ``"plane"`` every channel plane in raster order (for a context model's
stage: every parity plane of every channel). All chains of a tensor are searched at once;
the decoder reads one symbol of every chain per step (one rANS call per step, so rows
cost as many calls as the latent is wide, planes as many as it has positions). Every
chain starts in state 0; a context model's stages are separate tensors, so the state
does not carry from one stage to the next.

**Distortion** ``D`` is the squared error in the latent domain (weighted per channel by
``quant=tcq``'s default ``channel_weights=sensitivity``, unweighted by this class's);
``R`` is in bits. ``rd_lambda`` is thus in squared latent units per bit: for a latent
trained for integer rounding, the high-rate slope of uniform scalar quantisation with step
1 is ``dD/dR = 2 ln 2 / 12 = 0.116``. ``channel_weights`` ``w_c`` (mean 1) make it
``w_c (v - level)^2`` for an element of channel ``c``: the synthesis transform's
sensitivity per channel (:mod:`licexp.quant.sensitivity`), so the search spends its error
where the image suffers least. Only the encoder's choice changes; the bitstream and the
decoder do not.

**Training** (``quantize_train``): the straight-through trellis. The decoder sees the
TCQ reconstruction of the current latent with the identity gradient (as STE does for
rounding); the rate is the code length of the chosen indices under the state-dependent
pmfs at the coded (table) scales, differentiable in the scales (straight through the
table) and in the means (the cells stay where the search put them, so a moving mean moves
the Gaussian under fixed cells). The search itself has no gradient. This is the quantiser
the stage-2 finetune trains the decoder on with a frozen encoder; from scratch it is an
STE with a trellis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from compressai.models import get_scale_table
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
from licexp.quant.trellis import (
    TRELLISES,
    Trellis,
    TrellisPath,
    decision_cell,
    gaussian_cell_mass,
    reconstruction_level,
    viterbi,
)

SCANS = ("row", "plane")
SEARCH_ELEMENTS = 1 << 19
"""Elements searched at once, in whole chains (a Kodak-sized latent in one group)."""


def scale_table(table: Tensor | None, like: Tensor) -> Tensor:
    """The coder's scale table (CompressAI's default 64 before the tables are built)."""
    if table is None or table.numel() == 0:
        table = get_scale_table()
    return table.to(like.device, like.dtype)


def channel_weight_map(weights: tuple[float, ...] | None, like: Tensor) -> Tensor | None:
    """``w_c`` of every element of ``like [B, C, ...]`` (``None``: unweighted)."""
    if weights is None:
        return None
    if len(weights) != like.size(1):
        raise ValueError(
            f"quant.channel_weights has {len(weights)} values, the latent {like.size(1)} channels"
        )
    shape = (1, -1) + (1,) * (like.dim() - 2)
    return torch.tensor(weights, dtype=like.dtype, device=like.device).view(shape).expand_as(like)


def coded_scales(scales: Tensor, table: Tensor | None = None) -> Tensor:
    """The scale each element's symbol is coded with (the row
    :func:`~licexp.quant.symbols.scale_table_rows` picks in ``table``); straight-through
    gradient."""
    table = scale_table(table, scales)
    coded = table[scale_table_rows(scales, table)]
    return scales + (coded - scales).detach()


@dataclass(frozen=True)
class TrellisSearch:
    """The outcome of the trellis search over a latent, in the layout of its chains."""

    indices: Tensor
    """``int64 [B, R, T]``: index of each element of each image's ``R`` chains."""
    quantisers: Tensor
    """``int64 [B, R, T]``: the quantiser each index belongs to."""


@dataclass(frozen=True)
class TrellisSymbols(SymbolCoding):
    """TCQ symbols: indices chosen by a Viterbi search, CDF tables by scale and quantiser.

    Args:
        states: 4 (VVC) or 8 (ECM).
        step: the step ``Delta`` of the union of both quantisers, in latent units.
        rd_lambda: ``lambda`` of ``J = D + lambda R`` (squared latent units per bit).
        neighbours: candidate levels of a state's quantiser on each side of the target
            (plus zero).
        scan: ``"row"`` or ``"plane"``, the chains (module docstring).
        exact: widen the candidates to every level that can be optimal (the rate is at
            least 0 bits, so the cost is at least ``w step^2`` times the squared distance
            in steps; :func:`~licexp.quant.trellis.exact_radius`): the search then finds
            the least cost over all index sequences. ``False``: the fixed window only.
        channel_weights: ``w_c`` per latent channel, the distortion's weights (module
            docstring); ``None``: unweighted.
    """

    states: int = 8
    step: float = 0.5
    rd_lambda: float = 0.025
    neighbours: int = 1
    scan: str = "row"
    exact: bool = True
    # The encoder's choice alone: not in the repr (the bitstream's model fingerprint) nor in
    # equality (which CDF tables fit), as neither the tables nor the decoder depend on it.
    channel_weights: tuple[float, ...] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.states not in TRELLISES:
            raise ValueError(f"quant.states must be one of {sorted(TRELLISES)}, got {self.states}")
        if not self.step > 0:
            raise ValueError(f"quant.step must be > 0, got {self.step}")
        if self.rd_lambda < 0:
            raise ValueError(f"quant.rd_lambda must be >= 0, got {self.rd_lambda}")
        if self.neighbours < 1:
            raise ValueError(f"quant.neighbours must be >= 1, got {self.neighbours}")
        if self.scan not in SCANS:
            raise ValueError(f"quant.scan must be one of {SCANS}, got {self.scan!r}")
        check_channel_weights(self.channel_weights)

    @property
    def trellis(self) -> Trellis:
        return TRELLISES[self.states]

    def chains(self, x: Tensor) -> Tensor:
        """``[B, ..., H, W] -> [B, R, T]``: each image's chains (``T = W`` or ``H W``)."""
        length = x.size(-1) if self.scan == "row" else x.size(-1) * x.size(-2)
        return x.reshape(x.size(0), -1, length)

    def cell_likelihoods(
        self, indices: Tensor, quantisers: Tensor, scales: Tensor, shift: Tensor | float = 0.0
    ) -> Tensor:
        """``P(k | state)``: the mass of ``N(shift, sigma)`` over ``k``'s decision cell."""
        lower, upper = decision_cell(indices, quantisers)
        return gaussian_cell_mass(lower * self.step - shift, upper * self.step - shift, scales)

    def search(self, coded: Tensor, parameters: EntropyParameters) -> TrellisSearch:
        """The Viterbi decision for every chain of ``coded`` (no gradient).

        Chains are independent: they are searched in groups of at most
        :data:`SEARCH_ELEMENTS` elements, which bounds the memory and keeps the time linear.
        """
        with torch.no_grad():
            residual = self.chains(parameters.centred(coded))
            batch, rows, length = residual.shape
            residual = residual.reshape(-1, length)
            scales = self.chains(parameters.scales).reshape(-1, length, 1)
            weights = channel_weight_map(self.channel_weights, coded)
            if weights is not None:
                weights = self.chains(weights).reshape(-1, length)
            group = max(1, SEARCH_ELEMENTS // max(length, 1))
            indices, states = [], []
            for start in range(0, residual.size(0), group):
                part = slice(start, start + group)
                path = self.search_chains(
                    residual[part], scales[part], None if weights is None else weights[part]
                )
                indices.append(path.indices)
                states.append(path.states)
            quantisers = self.trellis.quantiser_table(coded.device)[torch.cat(states)]
        shape = (batch, rows, length)
        return TrellisSearch(torch.cat(indices).reshape(shape), quantisers.reshape(shape))

    def search_chains(
        self, residual: Tensor, scales: Tensor, weights: Tensor | None = None
    ) -> TrellisPath:
        """Viterbi over chains ``residual [N, T]`` (latent units) with ``scales [N, T, 1]``
        and the distortion's ``weights [N, T]`` (``None``: 1)."""
        weights = torch.ones_like(residual) if weights is None else weights

        def branch_cost(indices: Tensor, quantiser: int) -> Tensor:
            level = reconstruction_level(indices, quantiser) * self.step
            distortion = weights.unsqueeze(-1) * (residual.unsqueeze(-1) - level) ** 2
            bits = -torch.log2(self.cell_likelihoods(indices, quantiser, scales.expand_as(level)))
            return distortion + self.rd_lambda * bits

        bound = weights * self.step**2 if self.exact else None
        return viterbi(residual / self.step, branch_cost, self.trellis, self.neighbours, bound)

    def reconstruct(
        self, search: TrellisSearch, parameters: EntropyParameters, like: Tensor
    ) -> Tensor:
        """``mu + level(k, Q) * step`` in the shape of ``like``."""
        levels = reconstruction_level(search.indices, search.quantisers) * self.step
        levels = levels.to(like.dtype).reshape(like.shape)
        return levels if parameters.means is None else parameters.means + levels

    def indexes(self, quantisers: Tensor, scales: Tensor, model: GaussianTableModel) -> Tensor:
        """The CDF table of each symbol: its quantiser's block, its scale's row."""
        rows = self.chains(scale_table_rows(scales, scale_table(model.scale_table, scales)))
        return (quantisers * model.num_scales + rows).int()

    def cdf_tables(self, model: GaussianTableModel) -> CdfTables:
        """For each quantiser and scale: indices ``-K .. K`` with the cell masses.

        ``K`` covers ``sigma`` times the tail quantile ``m`` of CompressAI's tables: ``K =
        ceil((m sigma / step + 1) / 2)``; larger indices take the coder's escape.
        """
        scales = model.scale_table
        reach = torch.ceil((model.tail_multiplier() * scales / self.step + 1) / 2).long()
        samples = torch.arange(int(2 * reach.max() + 1), device=scales.device) - reach[:, None]
        valid = samples.abs() <= reach[:, None]
        blocks = []
        for quantiser in (0, 1):
            lower, upper = decision_cell(samples, quantiser)
            blocks.append(
                model.interval_tables(
                    scales, lower * self.step, upper * self.step, valid, -reach.int()
                )
            )
        return CdfTables.concatenate(*blocks)

    def stream_order(self, chains: Tensor) -> Tensor:
        """``[B, R, T] -> [B, T R]``: step by step, every chain's element of that step."""
        return chains.transpose(1, 2).reshape(chains.size(0), -1)

    def encode(
        self, coded: Tensor, parameters: EntropyParameters, model: GaussianTableModel
    ) -> SymbolEncoding:
        scales = coded_scales(parameters.scales, model.scale_table)
        coded_with = EntropyParameters(scales, parameters.means)
        search = self.search(coded, coded_with)
        likelihoods = self.cell_likelihoods(
            search.indices, search.quantisers, self.chains(coded_with.scales)
        )
        return SymbolEncoding(
            symbols=self.stream_order(search.indices).int(),
            indexes=self.stream_order(self.indexes(search.quantisers, parameters.scales, model)),
            reconstruction=self.reconstruct(search, parameters, coded),
            likelihoods=likelihoods.reshape(coded.shape),
        )

    def decode(
        self, read: SymbolReader, parameters: EntropyParameters, model: GaussianTableModel
    ) -> Tensor:
        """Reads one symbol of every chain per step, each with its state's table."""
        scales = parameters.scales
        table = scale_table(model.scale_table, scales)
        scale_rows = self.chains(scale_table_rows(scales, table))
        batch, rows, length = scale_rows.shape
        quantiser_of = self.trellis.quantiser_table(scales.device)
        successor = self.trellis.successor_table(scales.device)
        state = torch.zeros(batch, rows, dtype=torch.long, device=scales.device)
        indices = torch.empty_like(scale_rows)
        quantisers = torch.empty_like(scale_rows)
        for t in range(length):
            quantiser = quantiser_of[state]
            table = quantiser * model.num_scales + scale_rows[:, :, t]
            index = read(table.int()).long()
            indices[:, :, t], quantisers[:, :, t] = index, quantiser
            state = successor[state, torch.remainder(index, 2)]
        return self.reconstruct(TrellisSearch(indices, quantisers), parameters, scales)


class TrellisCodedQuantization(QuantizationStrategy):
    """TCQ at inference, the straight-through trellis in training (module docstring).

    Args: those of :class:`TrellisSymbols` (``quant.states``, ``quant.step``,
    ``quant.rd_lambda``, ``quant.neighbours``, ``quant.scan``, ``quant.exact``,
    ``quant.channel_weights``).
    ``channel_weights`` may also be ``"sensitivity"``: unweighted until :meth:`calibrate`
    measures them on the codec (:mod:`licexp.quant.sensitivity`).
    """

    def __init__(
        self,
        states: int = 8,
        step: float = 0.5,
        rd_lambda: float = 0.025,
        neighbours: int = 1,
        scan: str = "row",
        exact: bool = True,
        channel_weights: str | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.measures_weights, fixed = channel_weights_setting(channel_weights)
        self.coding = TrellisSymbols(states, step, rd_lambda, neighbours, scan, exact, fixed)

    @property
    def symbol_coding(self) -> TrellisSymbols:
        return self.coding

    def quantize_train(
        self, coded: Tensor, parameters: EntropyParameters, likelihood_fn: LikelihoodFunction
    ) -> QuantizedLatent:
        del likelihood_fn
        coding = self.coding
        parameters = EntropyParameters(coded_scales(parameters.scales), parameters.means)
        fixed = parameters.map(Tensor.detach)
        search = coding.search(coded.detach(), fixed)
        reconstruction = coding.reconstruct(search, fixed, coded)
        decoder_input = coded + (reconstruction - coded).detach()
        # The cells sit where the search put them (around the detached mean): a moving mean
        # moves the Gaussian under them, and the rate's gradient reaches it.
        shift = 0.0 if fixed.means is None else coding.chains(parameters.means - fixed.means)
        likelihoods = coding.cell_likelihoods(
            search.indices, search.quantisers, coding.chains(parameters.scales), shift
        )
        return QuantizedLatent(
            rate_input=decoder_input,
            decoder_input=decoder_input,
            likelihoods=likelihoods.reshape(coded.shape),
        )

    def calibrate(self, codec: nn.Module) -> None:
        """``channel_weights=sensitivity``: measures them on ``codec``
        (:func:`~licexp.quant.sensitivity.calibrated`: not on a context model's stages)."""
        self.coding = calibrated(self.coding, codec, self.measures_weights)

    def extra_repr(self) -> str:
        return repr(self.coding)
