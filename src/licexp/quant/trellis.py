"""Trellis-coded (dependent) quantisation: two quantisers, a trellis and a Viterbi search.

Dependent quantisation as in VVC (vvenc ``DepQuant.cpp``) and ECM, and as Borzechowski et
al. (seed 003) apply it to a learned codec's latents. Two scalar quantisers share the step
``Delta`` of their union; index ``k`` of a quantiser reconstructs (in units of ``Delta``)::

    Q0:  2k              (the even multiples)
    Q1:  2k - sgn(k)     (the odd multiples and zero)

A trellis state selects the quantiser of the next element, and the parity of the chosen
index selects the next state; every chain starts in state 0 (:class:`Trellis`):

    4 states (VVC; Q0 in states 0, 1, Q1 in 2, 3), next state for k even / k odd:
        0 -> 0 / 2    1 -> 2 / 0    2 -> 1 / 3    3 -> 3 / 1
    8 states (ECM's TCQ_8STATES; Q0 in the even states, Q1 in the odd ones):
        0 -> 0 / 2    1 -> 5 / 7    2 -> 1 / 3    3 -> 6 / 4
        4 -> 2 / 0    5 -> 4 / 6    6 -> 3 / 1    7 -> 7 / 5

The encoder (:func:`viterbi`) chooses the index sequence of each chain minimising
``J = sum_t D_t + lambda * R_t`` over every path through the trellis, for all chains at
once in vectorised torch (CPU or CUDA alike). Per element and state the candidates are
zero and the ``2 n`` indices of the state's quantiser nearest to the target, ``n`` on each
side (``neighbours``; VVC's choice is ``n = 1``: two levels around the target, plus zero).
A fixed window can miss the optimum when ``lambda`` is large against the step (a level
farther away may save enough bits); given a lower bound on the cost's distortion
(``distortion_weight``), :func:`viterbi` widens the window to every level that can be
optimal (:func:`exact_window`), and the search is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor


@dataclass(frozen=True)
class Trellis:
    """A dependent-quantisation trellis: the quantiser of each state and its successors."""

    quantisers: tuple[int, ...]
    """Quantiser (0: Q0, 1: Q1) used in each state."""
    successors: tuple[tuple[int, int], ...]
    """``(next state if k is even, next state if k is odd)`` of each state."""

    @property
    def num_states(self) -> int:
        return len(self.quantisers)

    @cached_property
    def predecessors(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """For each state, the ``(state, parity)`` edges that lead into it."""
        edges: list[list[tuple[int, int]]] = [[] for _ in self.quantisers]
        for state, following in enumerate(self.successors):
            for parity, target in enumerate(following):
                edges[target].append((state, parity))
        return tuple(tuple(e) for e in edges)

    def quantiser_table(self, device: torch.device | None = None) -> Tensor:
        return torch.tensor(self.quantisers, dtype=torch.long, device=device)

    def successor_table(self, device: torch.device | None = None) -> Tensor:
        """``[S, 2]``: the next state by state and parity."""
        return torch.tensor(self.successors, dtype=torch.long, device=device)


VVC_4_STATES = Trellis(quantisers=(0, 0, 1, 1), successors=((0, 2), (2, 0), (1, 3), (3, 1)))
"""VVC's 4-state table (the constant 32040 of its decoder, REFERENCE.md)."""

ECM_8_STATES = Trellis(
    quantisers=(0, 1, 0, 1, 0, 1, 0, 1),
    successors=((0, 2), (5, 7), (1, 3), (6, 4), (2, 0), (4, 6), (3, 1), (7, 5)),
)
"""ECM's 8-state table (``TCQ_8STATES``): quantiser ``state & 1``."""

TRELLISES = {4: VVC_4_STATES, 8: ECM_8_STATES}


def reconstruction_level(indices: Tensor, quantisers: Tensor | int) -> Tensor:
    """``2k - sgn(k) q`` in units of the step: Q0 (``q = 0``) or Q1 (``q = 1``)."""
    doubled = 2 * indices.float()
    if isinstance(quantisers, int) and quantisers == 0:
        return doubled
    return doubled - torch.sign(indices) * quantisers


def decision_cell(indices: Tensor, quantisers: Tensor | int) -> tuple[Tensor, Tensor]:
    """The interval of index ``k``'s decision cell in its quantiser, in units of the step.

    Its edges are the midpoints between ``k``'s level and its neighbours' in the same
    quantiser: ``[2k - 1, 2k + 1]`` in Q0; in Q1 ``[-1/2, 1/2]`` for ``k = 0``, ``[1/2,
    2]`` for ``k = 1``, ``[2k - 2, 2k]`` above, mirrored below zero.
    """
    level = reconstruction_level(indices, quantisers)
    lower = (reconstruction_level(indices - 1, quantisers) + level) / 2
    upper = (reconstruction_level(indices + 1, quantisers) + level) / 2
    return lower, upper


def inverse_level(levels: Tensor, quantiser: int) -> Tensor:
    """The continuous inverse of :func:`reconstruction_level`, non-decreasing in the level:
    ``u / 2`` in Q0, ``(u + sgn(u)) / 2`` in Q1; it maps index ``k``'s level to ``k``."""
    return levels / 2 if quantiser == 0 else (levels + torch.sign(levels)) / 2


def candidate_indices(targets: Tensor, quantiser: int, neighbours: int = 1) -> Tensor:
    """Zero and the ``2 n`` indices of ``quantiser`` around each target (in step units).

    ``k* = u / 2`` in Q0 and ``(u + sgn(u)) / 2`` in Q1 inverts the levels; the window
    ``floor(k*) - n + 1 .. floor(k*) + n`` holds the ``n`` nearest levels on each side of
    ``u``. Returns ``[..., 2 n + 1]`` integer values in the dtype of ``targets`` (zero last;
    it may repeat a window index): the search works in floating point throughout.
    """
    if neighbours < 1:
        raise ValueError(f"neighbours must be >= 1, got {neighbours}")
    base = torch.floor(inverse_level(targets, quantiser))
    window = torch.arange(1 - neighbours, neighbours + 1, device=targets.device)
    around = base.unsqueeze(-1) + window.to(targets.dtype)
    return torch.cat([around, torch.zeros_like(around[..., :1])], dim=-1)


def exact_window(targets: Tensor, quantiser: int, radius: Tensor, neighbours: int) -> Tensor:
    """The indices of ``quantiser`` whose levels lie within ``radius`` of their target and
    outside :func:`candidate_indices`'s window of ``neighbours``.

    Levels increase with the index, so the levels within the radius are the contiguous
    indices ``ceil(f(u - r)) .. floor(f(u + r))`` (``f`` = :func:`inverse_level`); the
    fixed window is ``b - n + 1 .. b + n``, ``b = floor(f(u))``. Returns ``[..., W]``, the
    indices below the fixed window and then those above it, ``W`` the most of any element;
    an element with fewer repeats ``b`` (a duplicate candidate changes no minimum).
    """
    base = torch.floor(inverse_level(targets, quantiser))
    low = torch.ceil(inverse_level(targets - radius, quantiser))
    high = torch.floor(inverse_level(targets + radius, quantiser))
    below = (base - neighbours + 1 - low).clamp_min(0)
    above = (high - base - neighbours).clamp_min(0)
    width = int((below + above).max().item()) if targets.numel() else 0
    slot = torch.arange(width, device=targets.device).to(targets.dtype)
    lower = low.unsqueeze(-1) + slot
    upper = (base + neighbours + 1 - below).unsqueeze(-1) + slot
    index = torch.where(slot < below.unsqueeze(-1), lower, upper)
    return torch.where(slot < (below + above).unsqueeze(-1), index, base.unsqueeze(-1))


def exact_radius(
    targets: Tensor, candidates: Tensor, cost: Tensor, distortion_weight: float | Tensor
) -> Tensor:
    """The radius (in steps) beyond which no index can be the cheapest of its parity, given
    the ``cost`` of some ``candidates`` of one quantiser and a cost ``>= w (u - level(k))^2``.

    Proof: let ``J_p`` be the least cost of the candidates of parity ``p``. An index ``k``
    of parity ``p`` whose level lies farther than ``sqrt(J_p / w)`` from the target costs
    ``J(k) >= w (u - level(k))^2 > J_p``, so it is not the cheapest index of its parity,
    the only one the Viterbi keeps (both edges of one parity lead to the same successor).
    The radius is the larger of the two parities'; a parity whose candidates all cost
    infinity adds nothing (exact only if every index of that parity does).
    """
    odd = torch.remainder(candidates, 2) != 0
    radius = targets.new_zeros(targets.shape)
    for wrong in (odd, ~odd):
        least = cost.masked_fill(wrong, torch.inf).amin(dim=-1)
        reach = torch.sqrt(least.clamp_min(0) / distortion_weight)
        radius = torch.maximum(radius, torch.where(torch.isfinite(reach), reach, 0))
    return radius


BranchCost = Callable[[Tensor, int], Tensor]
"""``cost(indices [N, T, C], quantiser) -> J [N, T, C]``: the cost of coding each candidate
index of each element with that quantiser (distortion plus lambda times its bits)."""


@dataclass
class TrellisPath:
    """The Viterbi decision for ``N`` chains of ``T`` elements."""

    indices: Tensor
    """``int64 [N, T]``: the chosen index of each element."""
    states: Tensor
    """``int64 [N, T]``: the state each element was quantised in (its quantiser's state)."""
    cost: Tensor
    """``[N]``: the minimum total cost of each chain."""


def viterbi(
    targets: Tensor,
    branch_cost: BranchCost,
    trellis: Trellis,
    neighbours: int = 1,
    distortion_weight: float | Tensor | None = None,
) -> TrellisPath:
    """The minimum-cost index sequence of every chain (rows of ``targets``, in step units).

    Per element, quantiser and parity the cheapest candidate (:func:`candidate_indices`)
    is the only edge worth keeping, since both edges of a state with one parity lead to
    the same successor; the trellis then has two edges into every state, and the dynamic
    programme keeps the cheaper of the two per state and element. Ties go to the first
    edge (and the first candidate). Memory: ``O(N T S)`` for ``S`` states.

    ``distortion_weight`` ``w`` (a number or one per element of ``targets``), where
    ``branch_cost(k) >= w (u - level(k))^2`` for every index (TCQ's cost: ``w = step^2``
    times the element's distortion weight, as its rate term is at least zero), adds to the
    window every index that can be the cheapest of its parity (:func:`exact_radius`), so
    the search is exact; without it the window is fixed.
    """
    if targets.dim() != 2:
        raise ValueError(f"targets must be [chains, length], got {tuple(targets.shape)}")
    if distortion_weight is not None and not bool((torch.as_tensor(distortion_weight) > 0).all()):
        raise ValueError(f"distortion_weight must be > 0, got {distortion_weight}")
    chains, length = targets.shape
    device = targets.device
    best_cost = targets.new_empty(chains, length, 2, 2)
    best_index = targets.new_empty(chains, length, 2, 2)
    for quantiser in (0, 1):
        candidates = candidate_indices(targets, quantiser, neighbours)
        cost = branch_cost(candidates, quantiser)
        if distortion_weight is not None:
            radius = exact_radius(targets, candidates, cost, distortion_weight)
            window = exact_window(targets, quantiser, radius, neighbours)
            candidates = torch.cat([candidates, window], dim=-1)
            cost = torch.cat([cost, branch_cost(window, quantiser)], dim=-1)
        odd = torch.remainder(candidates, 2) != 0
        for parity, wrong in ((0, odd), (1, ~odd)):
            value, choice = cost.masked_fill(wrong, torch.inf).min(dim=-1)
            best_cost[:, :, quantiser, parity] = value
            best_index[:, :, quantiser, parity] = candidates.gather(-1, choice.unsqueeze(-1))[
                ..., 0
            ]

    edges = torch.tensor(trellis.predecessors, dtype=torch.long, device=device)  # [S, 2, 2]
    from_state, parity = edges[..., 0].reshape(-1), edges[..., 1].reshape(-1)
    edge_quantiser = trellis.quantiser_table(device)[from_state]
    num_states = trellis.num_states
    # [T, N, S * 2]: the cost of each edge into each state, time-major for the loop.
    edge_cost = best_cost[:, :, edge_quantiser, parity].permute(1, 0, 2).contiguous()
    cost = targets.new_full((chains, num_states), torch.inf)
    cost[:, 0] = 0
    decisions = torch.empty(length, chains, num_states, dtype=torch.bool, device=device)
    for t in range(length):
        total = (cost.index_select(1, from_state) + edge_cost[t]).view(chains, num_states, 2)
        first, second = total.unbind(-1)
        decisions[t] = second < first
        cost = torch.minimum(first, second)

    total, state = cost.min(dim=-1)
    flat_index = best_index.reshape(-1)
    rows = torch.arange(chains, device=device) * length
    indices, states = [], []
    for t in reversed(range(length)):
        edge = 2 * state + decisions[t].gather(1, state.unsqueeze(1))[:, 0]
        previous = from_state[edge]
        offset = ((rows + t) * 2 + edge_quantiser[edge]) * 2 + parity[edge]
        indices.append(flat_index[offset])
        states.append(previous)
        state = previous
    if not indices:
        empty = torch.empty(chains, 0, dtype=torch.long, device=device)
        return TrellisPath(empty, empty, total)
    return TrellisPath(
        torch.stack(indices[::-1], dim=1).long(), torch.stack(states[::-1], dim=1), total
    )


SCALE_BOUND = 0.11
"""Smallest scale of the rate model (CompressAI's ``GaussianConditional`` default)."""
LIKELIHOOD_BOUND = 1e-9
"""Smallest probability of the rate model (CompressAI's default likelihood bound)."""


def gaussian_cell_mass(lower: Tensor, upper: Tensor, scales: Tensor) -> Tensor:
    """The mass of ``N(0, sigma)`` over ``[lower, upper]``, at least :data:`LIKELIHOOD_BOUND`.

    ``sigma`` is bounded below by :data:`SCALE_BOUND`. A cell right of zero is mirrored to
    the left, where ``Phi`` has no cancellation (as CompressAI computes its likelihoods).
    """
    scales = scales.clamp_min(SCALE_BOUND)
    mirror = lower + upper > 0
    low = torch.where(mirror, -upper, lower)
    high = torch.where(mirror, -lower, upper)
    mass = torch.special.ndtr(high / scales) - torch.special.ndtr(low / scales)
    return mass.clamp_min(LIKELIHOOD_BOUND)
