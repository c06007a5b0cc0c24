"""Neighbourhood attention (Hassani et al., 2023) and Tiny-LIC's residual block (RNAB).

Hassani, Walton, Li, Li and Shi, "Neighborhood Attention Transformer" (CVPR 2023), with
the semantics of their NATTEN library: the query at ``(i, j)`` of an ``H x W`` map attends
to exactly ``k x k`` keys, the window whose rows start at

    s(i) = clamp(i - floor(k / 2), 0, H - k)

(columns likewise): windows are centred on the query and shifted inward at the borders,
never padded, so the map needs ``H, W >= k``. The logits get a relative position bias
``B[h, p - i + k - 1, q - j + k - 1]`` from a table of shape ``(heads, 2k - 1, 2k - 1)``
for the key at ``(p, q)``::

    A_ij = softmax_{(p, q) in N(i, j)}(q_ij . k_pq / sqrt(d) + B[h, p - i + k - 1, q - j + k - 1])
    o_ij = sum_{(p, q) in N(i, j)} A_ij,pq v_pq

The implementation is pure PyTorch and runs on any device
(:func:`tiled_neighborhood_attention`): the map is cut into tiles of ``T x T`` queries,
and every tile attends densely to its halo of ``(T + 2r)^2`` keys (``r = floor(k / 2)``)
with the keys outside each query's window masked out, by batched matrix products and
plain autograd. Memory therefore grows as ``H * W * (T + 2r)^2``, with ``T`` of the order
of ``k`` (the attention weights of the tiles, saved for the backward pass), never as
``(H * W)^2``. Two other backends compute the same attention on CUDA
(:data:`BACKENDS`): NATTEN's unfused ``na2d_qk`` / ``na2d_av`` operators (versions 0.15 to
0.17, which take ``rpb``; :func:`natten_operators`), chosen by default where installed, and
PyTorch's FlexAttention with the window as a block mask and the bias as a score
modification (:func:`flex_neighborhood_attention`, compiled on CUDA), chosen by name.

Lu and Ma, "High-Efficiency Lossy Image Coding Through Adaptive Neighborhood Information
Aggregation" (Tiny-LIC, 2022), build their transforms from residual neighbourhood
attention blocks (:class:`RNAB`): ``x + blocks(x)`` in channels-last layout, each block
pre-norm, ``x += NA(LN(x))``, ``x += MLP(LN(x))``, with stochastic depth.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

T = TypeVar("T")


def cached_tables(maxsize: int) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """``functools.lru_cache`` for the index tables below, built outside inference mode:
    a table first made under ``torch.inference_mode`` (an evaluation) would otherwise be an
    inference tensor that a later training step cannot save for backward."""

    def decorate(build: Callable[..., T]) -> Callable[..., T]:
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(build)
        def cached(*args: Any) -> T:
            with torch.inference_mode(False):
                return build(*args)

        return cached

    return decorate


def window_starts(length: int, kernel_size: int, device: torch.device | None = None) -> Tensor:
    """``s(i) = clamp(i - floor(k / 2), 0, length - k)`` for every position ``i``."""
    if length < kernel_size:
        raise ValueError(
            f"neighbourhood attention needs maps of at least {kernel_size} (the kernel), "
            f"got a side of {length}"
        )
    positions = torch.arange(length, device=device)
    return (positions - kernel_size // 2).clamp(0, length - kernel_size)


def tile_size(kernel_size: int) -> int:
    """Queries per tile side: at least ``floor(k / 2) + 1``, so a halo holds every window."""
    return max(4, kernel_size // 2 + 1)


@dataclass(frozen=True)
class AxisTiling:
    """The tiles of one axis of the map: which queries, which halo keys, which windows.

    Tiles of ``T`` queries start at ``0, T, 2T, ...``; the last one is moved back to end at
    the border (it may overlap its neighbour). A tile's halo holds the keys from ``r =
    floor(k / 2)`` before its first query to ``r`` after its last, which contains the window
    of every query of the tile, the windows shifted inward at the borders included.
    """

    queries: Tensor
    """``(n, T)``: the query positions of every tile."""
    keys: Tensor
    """``(n, T + 2r)``: the halo's key positions, clamped into the map (see ``inside``)."""
    inside: Tensor
    """``(n, T, T + 2r)``: whether a halo key lies in a query's window ``[s(i), s(i) + k)``."""
    bias_index: Tensor
    """``(n, T, T + 2r)``: the bias-table index ``p - i + k - 1`` (clamped where outside)."""
    tile_of: Tensor
    """``(length,)``: the tile each position's output is taken from."""
    position_in_tile: Tensor
    """``(length,)``: its query index in that tile."""


@cached_tables(maxsize=128)
def axis_tiling(length: int, kernel_size: int, device: torch.device) -> AxisTiling:
    """The :class:`AxisTiling` of an axis of ``length`` positions (cached)."""
    tile = min(tile_size(kernel_size), length)
    radius = kernel_size // 2
    starts = list(range(0, length - tile + 1, tile))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    first = torch.tensor(starts, device=device)
    queries = first[:, None] + torch.arange(tile, device=device)
    keys = first[:, None] - radius + torch.arange(tile + 2 * radius, device=device)
    window = window_starts(length, kernel_size, device)[queries][:, :, None]
    inside = (keys[:, None, :] >= window) & (keys[:, None, :] < window + kernel_size)
    bias_index = (keys[:, None, :] - queries[:, :, None] + kernel_size - 1).clamp(
        0, 2 * kernel_size - 2
    )
    positions = torch.arange(length, device=device)
    tile_of = (positions // tile).clamp(max=len(starts) - 1)
    return AxisTiling(
        queries=queries,
        keys=keys.clamp(0, length - 1),
        inside=inside,
        bias_index=bias_index,
        tile_of=tile_of,
        position_in_tile=positions - first[tile_of],
    )


@cached_tables(maxsize=16)
def halo_bias_index(height: int, width: int, kernel_size: int, device: torch.device) -> Tensor:
    """``(tiles, T^2, (T + 2r)^2)`` int32: where each tile's query-key pair reads the bias.

    The entry is ``(p - i + k - 1) (2k - 1) + (q - j + k - 1)``, the pair's place in the
    flattened ``(2k - 1)^2`` table, for keys inside the query's window, and ``(2k - 1)^2``,
    one past the table, for the others: :func:`tiled_neighborhood_attention` appends a
    ``-inf`` there, so one gather gives the bias and the window mask together (cached per
    map size: it depends on the sizes only)."""
    row, col = (axis_tiling(n, kernel_size, device) for n in (height, width))
    side = 2 * kernel_size - 1
    flat = (
        row.bias_index[:, None, :, None, :, None] * side + col.bias_index[None, :, None, :, None, :]
    )
    inside = row.inside[:, None, :, None, :, None] & col.inside[None, :, None, :, None, :]
    flat = torch.where(inside, flat, side * side).to(torch.int32)
    tiles, queries, keys = (
        row.queries.size(0) * col.queries.size(0),
        row.queries.size(1) * col.queries.size(1),
        row.keys.size(1) * col.keys.size(1),
    )
    return flat.reshape(tiles, queries, keys)


def _tiles(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``(B, h, H, W, d) -> (B, h, tiles, positions, d)`` at the given row/column tables."""
    batch, heads, _, _, dim = x.shape
    gathered = x[:, :, rows[:, :, None, None], cols[None, None, :, :]]  # (B, h, n, R, m, C, d)
    gathered = gathered.permute(0, 1, 2, 4, 3, 5, 6)
    return gathered.reshape(batch, heads, rows.size(0) * cols.size(0), -1, dim)


@functools.cache
def natten_operators() -> tuple[Callable[..., Tensor], Callable[..., Tensor]] | None:
    """NATTEN's unfused ``(na2d_qk, na2d_av)`` if installed with ``rpb`` support, else ``None``.

    Those operators (NATTEN 0.15 to 0.17) take ``(B, heads, H, W, d)`` tensors, add the
    relative position bias inside ``na2d_qk`` and follow the windowing above; later
    releases dropped the bias and changed the layout, so they are not used.
    """
    try:
        from natten import functional
    except ImportError:
        return None
    qk, av = getattr(functional, "na2d_qk", None), getattr(functional, "na2d_av", None)
    if qk is None or av is None or "rpb" not in inspect.signature(qk).parameters:
        return None
    return qk, av


BACKENDS = ("auto", "tiled", "flex")
"""How :func:`neighborhood_attention` computes: ``auto`` uses NATTEN for CUDA tensors where
:func:`natten_operators` finds it (and ``k > 1``: its kernels start at 3) and the tiled
pure-PyTorch attention otherwise; ``tiled`` always the latter (the reference of the
tests, and the CPU path); ``flex`` :func:`flex_neighborhood_attention`."""


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")


def neighborhood_attention(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    bias_table: Tensor,
    kernel_size: int,
    *,
    backend: str = "auto",
) -> Tensor:
    """Neighbourhood attention of ``(B, heads, H, W, d)`` tensors with NATTEN's semantics.

    ``bias_table`` is the ``(heads, 2k - 1, 2k - 1)`` relative position bias; queries are
    scaled by ``1 / sqrt(d)``; ``backend`` is one of :data:`BACKENDS`.
    """
    check_backend(backend)
    height, width = queries.shape[2:4]
    if min(height, width) < kernel_size:
        raise ValueError(
            f"neighbourhood attention with a {kernel_size}x{kernel_size} kernel needs maps of at "
            f"least {kernel_size}x{kernel_size}, got {height}x{width}"
        )
    if bias_table.shape[-2:] != (2 * kernel_size - 1, 2 * kernel_size - 1):
        raise ValueError(
            f"bias table of shape {tuple(bias_table.shape)} does not fit kernel {kernel_size}"
        )
    queries = queries * queries.size(-1) ** -0.5
    if backend == "flex":
        if not queries.is_cuda and torch.is_grad_enabled() and queries.requires_grad:
            raise ValueError(
                "attention=flex trains on CUDA only (FlexAttention has no CPU backward); "
                "on the CPU use attention=tiled (or auto)"
            )
        return flex_neighborhood_attention(queries, keys, values, bias_table, kernel_size)
    auto = backend == "auto" and queries.is_cuda and kernel_size > 1
    operators = natten_operators() if auto else None
    if operators is not None:
        natten_qk, natten_av = operators
        logits = natten_qk(queries, keys, kernel_size, 1, rpb=bias_table)
        return natten_av(logits.softmax(dim=-1), values, kernel_size, 1)
    return tiled_neighborhood_attention(queries, keys, values, bias_table, kernel_size)


def tiled_neighborhood_attention(
    queries: Tensor, keys: Tensor, values: Tensor, bias_table: Tensor, kernel_size: int
) -> Tensor:
    """Neighbourhood attention by tiles: dense attention from a tile to its halo, masked.

    Each ``T x T`` tile of (already scaled) queries attends to its ``(T + 2r)^2`` halo keys
    by two batched matrix products; keys outside a query's window get ``-inf`` and the
    others the relative position bias, both by one gather (:func:`halo_bias_index`). This
    trades ``((T + 2r) / k)^2`` (2 for ``k = 7``) times the arithmetic of the ``k^2``
    products for large, fast matrix products with plain autograd; memory stays linear in
    ``H * W``.
    """
    batch, heads, height, width, dim = queries.shape
    row, col = (axis_tiling(n, kernel_size, queries.device) for n in (height, width))
    logits = _tiles(queries, row.queries, col.queries) @ _tiles(keys, row.keys, col.keys).transpose(
        -1, -2
    )
    index = halo_bias_index(height, width, kernel_size, queries.device)
    outside = bias_table.new_full((heads, 1), float("-inf"))
    table = torch.cat([bias_table.reshape(heads, -1), outside], dim=1)
    bias = table.index_select(1, index.reshape(-1)).reshape(heads, *index.shape)
    attended = (logits + bias).softmax(dim=-1) @ _tiles(values, row.keys, col.keys)
    tiles = attended.reshape(
        batch, heads, row.queries.size(0), col.queries.size(0), row.queries.size(1), -1, dim
    )
    return tiles[
        :,
        :,
        row.tile_of[:, None],
        col.tile_of[None, :],
        row.position_in_tile[:, None],
        col.position_in_tile[None, :],
    ]


@cached_tables(maxsize=32)
def neighborhood_block_mask(
    height: int, width: int, kernel_size: int, device: torch.device
) -> BlockMask:
    """FlexAttention's block mask of the windows ``N(i, j)`` on a row-major ``H x W`` map
    (cached: one per map size; the blocks outside every window are skipped)."""
    rows, cols = (window_starts(n, kernel_size, device) for n in (height, width))

    def in_window(batch: Tensor, head: Tensor, query: Tensor, key: Tensor) -> Tensor:
        row, col = rows[query // width], cols[query % width]
        key_row, key_col = key // width, key % width
        return (
            (key_row >= row)
            & (key_row < row + kernel_size)
            & (key_col >= col)
            & (key_col < col + kernel_size)
        )

    length = height * width
    return create_block_mask(in_window, None, None, length, length, device=device)


@functools.cache
def compiled_flex_attention() -> Callable[..., Tensor]:
    """FlexAttention compiled once: its fused kernels need ``torch.compile`` (CUDA)."""
    return torch.compile(flex_attention, dynamic=False)


def flex_neighborhood_attention(
    queries: Tensor, keys: Tensor, values: Tensor, bias_table: Tensor, kernel_size: int
) -> Tensor:
    """The same attention by FlexAttention: the windows as a block mask
    (:func:`neighborhood_block_mask`), ``B[h, p - i + k - 1, q - j + k - 1]`` added as a
    score modification, on (already scaled) queries. CUDA tensors run the compiled kernels;
    others FlexAttention's eager reference, which forms all ``(H W)^2`` scores (tests only)."""
    batch, heads, height, width, dim = queries.shape
    last = 2 * kernel_size - 2

    def add_bias(score: Tensor, batch: Tensor, head: Tensor, query: Tensor, key: Tensor) -> Tensor:
        # clamped: the kernels also evaluate masked pairs inside a partly masked block
        row = (key // width - query // width + kernel_size - 1).clamp(0, last)
        col = (key % width - query % width + kernel_size - 1).clamp(0, last)
        return score + bias_table[head, row, col]

    attend = compiled_flex_attention() if queries.is_cuda else flex_attention
    attended = attend(
        *(t.reshape(batch, heads, height * width, dim) for t in (queries, keys, values)),
        score_mod=add_bias,
        block_mask=neighborhood_block_mask(height, width, kernel_size, queries.device),
        scale=1.0,
    )
    return attended.reshape(batch, heads, height, width, dim)


def dense_neighborhood_attention(
    queries: Tensor, keys: Tensor, values: Tensor, bias_table: Tensor, kernel_size: int
) -> Tensor:
    """The same attention as full ``HW x HW`` attention with a window mask: the reference.

    Builds every query-key pair, masks the keys outside ``N(i, j)`` and adds the bias by its
    definition; memory ``O((H W)^2)``. For tests and benchmarks, not for training.
    """
    batch, heads, height, width, dim = queries.shape
    device = queries.device

    def membership(length: int) -> tuple[Tensor, Tensor]:  # (query, key) in window; p - i
        positions = torch.arange(length, device=device)
        starts = window_starts(length, kernel_size, device)
        inside = (positions[None, :] >= starts[:, None]) & (
            positions[None, :] < starts[:, None] + kernel_size
        )
        return inside, positions[None, :] - positions[:, None]

    inside_rows, delta_rows = membership(height)
    inside_cols, delta_cols = membership(width)
    inside = inside_rows[:, None, :, None] & inside_cols[None, :, None, :]  # (H, W, H, W)
    row_index = (delta_rows + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
    col_index = (delta_cols + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
    bias = bias_table[:, row_index[:, None, :, None], col_index[None, :, None, :]]
    logits = torch.einsum("bhijd,bhpqd->bhijpq", queries, keys) / math.sqrt(dim) + bias
    logits = logits.masked_fill(~inside, float("-inf")).reshape(batch, heads, height, width, -1)
    weights = logits.softmax(dim=-1).reshape(batch, heads, height, width, height, width)
    return torch.einsum("bhijpq,bhpqd->bhijd", weights, values)


class NeighborhoodAttention2d(nn.Module):
    """Multi-head neighbourhood attention on channels-last maps ``(B, H, W, C)``.

    ``qkv = Linear(C, 3C)``, heads of ``C / heads`` channels, the relative position bias
    table ``(heads, 2k - 1, 2k - 1)`` (truncated normal, std 0.02), ``proj = Linear(C, C)``.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int, backend: str = "auto") -> None:
        super().__init__()
        check_backend(backend)
        if dim % num_heads:
            raise ValueError(f"{dim} channels do not split into {num_heads} heads")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"the kernel size must be odd and positive, got {kernel_size}")
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, dim = x.shape
        qkv = self.qkv(x).reshape(batch, height, width, 3, self.num_heads, dim // self.num_heads)
        queries, keys, values = qkv.permute(3, 0, 4, 1, 2, 5)
        attended = neighborhood_attention(
            queries, keys, values, self.rpb, self.kernel_size, backend=self.backend
        )
        return self.proj(attended.permute(0, 2, 3, 1, 4).reshape(batch, height, width, dim))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, kernel_size={self.kernel_size}, backend={self.backend}"


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): drops a residual branch per sample in training.

    A kept branch is scaled by ``1 / (1 - p)`` so that its expectation is unchanged.
    """

    def __init__(self, probability: float) -> None:
        super().__init__()
        if not 0 <= probability < 1:
            raise ValueError(f"drop-path probability must lie in [0, 1), got {probability}")
        self.probability = probability

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.probability == 0:
            return x
        keep = 1 - self.probability
        mask = x.new_empty((x.size(0),) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"probability={self.probability}"


class NeighborhoodTransformerBlock(nn.Module):
    """Pre-norm block: ``x += DP(NA(LN(x)))``, ``x += DP(MLP(LN(x)))``, channels last.

    The MLP is ``Linear(C, rC) - GELU - Linear(rC, C)`` with ratio ``r`` (2 in Tiny-LIC).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        mlp_ratio: float = 2.0,
        drop_path: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2d(dim, num_heads, kernel_size, backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class RNAB(nn.Module):
    """Residual neighbourhood attention block of Tiny-LIC: ``x + blocks(x)`` on ``(B, C, H, W)``.

    The blocks (:class:`NeighborhoodTransformerBlock`) run in channels-last layout; the
    linear layers start from a truncated normal (std 0.02) with zero biases, as in the
    authors' release. ``drop_path`` gives each block's stochastic-depth probability;
    ``backend`` how the attention computes (:data:`BACKENDS`).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        kernel_size: int,
        mlp_ratio: float = 2.0,
        drop_path: Sequence[float] | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        rates = list(drop_path) if drop_path is not None else [0.0] * depth
        if len(rates) != depth:
            raise ValueError(f"need {depth} drop-path rates, got {len(rates)}")
        self.blocks = nn.Sequential(
            *(
                NeighborhoodTransformerBlock(dim, num_heads, kernel_size, mlp_ratio, rate, backend)
                for rate in rates
            )
        )
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.blocks(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
