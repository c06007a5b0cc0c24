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

The implementation is pure PyTorch and runs on any device. Like NATTEN it splits the
attention into two operators with hand-written gradients, ``QK`` (the neighbourhood
logits) and ``AV`` (the neighbourhood average); both loop over the ``k`` row offsets of
the window and gather ``k`` keys of every query at a time. Memory therefore grows as
``H * W * k^2`` (the attention weights, saved for the backward pass) plus ``H * W * k * d``
transiently, never as ``(H * W)^2``. When the ``natten`` package with its unfused
``na2d_qk`` / ``na2d_av`` operators (versions 0.15 to 0.17, which take ``rpb``) is
installed, CUDA tensors go through it instead (:func:`natten_operators`).

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
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable


def window_starts(length: int, kernel_size: int, device: torch.device | None = None) -> Tensor:
    """``s(i) = clamp(i - floor(k / 2), 0, length - k)`` for every position ``i``."""
    if length < kernel_size:
        raise ValueError(
            f"neighbourhood attention needs maps of at least {kernel_size} (the kernel), "
            f"got a side of {length}"
        )
    positions = torch.arange(length, device=device)
    return (positions - kernel_size // 2).clamp(0, length - kernel_size)


def _neighbour_indices(height: int, width: int, kernel_size: int, device: torch.device) -> Tensor:
    """Flat key index ``p * W + q`` of window row ``a`` of every query: ``(k, H, W, k)``."""
    offsets = torch.arange(kernel_size, device=device)
    rows = window_starts(height, kernel_size, device)[None, :] + offsets[:, None]  # (k, H)
    cols = window_starts(width, kernel_size, device)[:, None] + offsets[None, :]  # (W, k)
    return rows[:, :, None, None] * width + cols[None, None, :, :]


def _gather_row(values: Tensor, indices: Tensor) -> Tensor:
    """The ``k`` keys of window row ``a`` of every query: ``(B, h, H, W, d) -> (..., k, d)``."""
    batch, heads, height, width, dim = values.shape
    flat = values.reshape(batch, heads, height * width, dim)
    return flat[:, :, indices.reshape(-1)].reshape(batch, heads, height, width, -1, dim)


def _scatter_row(target: Tensor, indices: Tensor, contributions: Tensor) -> None:
    """Adds ``(B, h, H, W, k, d)`` contributions onto their keys in ``target`` (``B, h, HW, d``)."""
    batch, heads = contributions.shape[:2]
    target.index_add_(
        2, indices.reshape(-1), contributions.reshape(batch, heads, -1, target.size(-1))
    )


def neighborhood_dot(queries: Tensor, keys: Tensor, kernel_size: int) -> Tensor:
    """``L[i, j, a, b] = q_ij . k_{s(i) + a, s(j) + b}``: ``(B, h, H, W, d) -> (..., k^2)``."""
    batch, heads, height, width, _ = queries.shape
    indices = _neighbour_indices(height, width, kernel_size, queries.device)
    logits = queries.new_empty(batch, heads, height, width, kernel_size, kernel_size)
    for row, row_indices in enumerate(indices):
        neighbours = _gather_row(keys, row_indices)
        logits[..., row, :] = torch.matmul(neighbours, queries.unsqueeze(-1)).squeeze(-1)
    return logits.flatten(-2)


def neighborhood_average(weights: Tensor, values: Tensor, kernel_size: int) -> Tensor:
    """``o_ij = sum_{a, b} W[i, j, a, b] v_{s(i) + a, s(j) + b}``: ``-> (B, h, H, W, d)``."""
    batch, heads, height, width, _ = values.shape
    indices = _neighbour_indices(height, width, kernel_size, values.device)
    weights = weights.unflatten(-1, (kernel_size, kernel_size))
    output = torch.zeros_like(values)
    for row, row_indices in enumerate(indices):
        neighbours = _gather_row(values, row_indices)
        output += torch.matmul(weights[..., row, :].unsqueeze(-2), neighbours).squeeze(-2)
    return output


def neighborhood_scatter(weights: Tensor, sources: Tensor, kernel_size: int) -> Tensor:
    """The adjoint of the gather: ``g_pq = sum_{(i, j, a, b) -> (p, q)} W[i, j, a, b] x_ij``."""
    batch, heads, height, width, dim = sources.shape
    indices = _neighbour_indices(height, width, kernel_size, sources.device)
    weights = weights.unflatten(-1, (kernel_size, kernel_size))
    output = sources.new_zeros(batch, heads, height * width, dim)
    for row, row_indices in enumerate(indices):
        contributions = weights[..., row, :].unsqueeze(-1) * sources.unsqueeze(-2)
        _scatter_row(output, row_indices, contributions)
    return output.reshape(batch, heads, height, width, dim)


class NeighborhoodDot(Function):
    """``QK``: the neighbourhood logits, with the gradients ``dq = AV(dL, k)``, ``dk = scatter``."""

    @staticmethod
    def forward(ctx: Any, queries: Tensor, keys: Tensor, kernel_size: int) -> Tensor:
        ctx.save_for_backward(queries, keys)
        ctx.kernel_size = kernel_size
        return neighborhood_dot(queries, keys, kernel_size)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_logits: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        queries, keys = ctx.saved_tensors
        grad_logits = grad_logits.contiguous()
        grad_queries = grad_keys = None
        if ctx.needs_input_grad[0]:
            grad_queries = neighborhood_average(grad_logits, keys, ctx.kernel_size)
        if ctx.needs_input_grad[1]:
            grad_keys = neighborhood_scatter(grad_logits, queries, ctx.kernel_size)
        return grad_queries, grad_keys, None


class NeighborhoodAverage(Function):
    """``AV``: the attention-weighted values, with ``dA = QK(dout, v)``, ``dv = scatter``."""

    @staticmethod
    def forward(ctx: Any, weights: Tensor, values: Tensor, kernel_size: int) -> Tensor:
        ctx.save_for_backward(weights, values)
        ctx.kernel_size = kernel_size
        return neighborhood_average(weights, values, kernel_size)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        weights, values = ctx.saved_tensors
        grad_output = grad_output.contiguous()
        grad_weights = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_weights = neighborhood_dot(grad_output, values, ctx.kernel_size)
        if ctx.needs_input_grad[1]:
            grad_values = neighborhood_scatter(weights, grad_output, ctx.kernel_size)
        return grad_weights, grad_values, None


def relative_position_bias(table: Tensor, height: int, width: int) -> Tensor:
    """``B[h, p - i + k - 1, q - j + k - 1]`` for every query and window key: ``(h, H, W, k^2)``."""
    kernel_size = (table.size(-1) + 1) // 2
    offsets = torch.arange(kernel_size, device=table.device)

    def relative(length: int) -> Tensor:  # (length, k): p - i + k - 1 for key p = s(i) + a
        positions = torch.arange(length, device=table.device)
        starts = window_starts(length, kernel_size, table.device)
        return starts[:, None] + offsets[None, :] - positions[:, None] + kernel_size - 1

    rows, cols = relative(height), relative(width)
    bias = table[:, rows[:, None, :, None], cols[None, :, None, :]]  # (h, H, W, k, k)
    return bias.flatten(-2)


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


def neighborhood_attention(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    bias_table: Tensor,
    kernel_size: int,
    *,
    use_natten: bool = True,
) -> Tensor:
    """Neighbourhood attention of ``(B, heads, H, W, d)`` tensors with NATTEN's semantics.

    ``bias_table`` is the ``(heads, 2k - 1, 2k - 1)`` relative position bias; queries are
    scaled by ``1 / sqrt(d)``. CUDA tensors use NATTEN when :func:`natten_operators` finds
    it and ``use_natten`` is set; everything else runs the pure PyTorch operators.
    """
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
    operators = natten_operators() if use_natten and queries.is_cuda else None
    if operators is not None:
        natten_qk, natten_av = operators
        logits = natten_qk(queries, keys, kernel_size, 1, rpb=bias_table)
        return natten_av(logits.softmax(dim=-1), values, kernel_size, 1)
    queries, keys, values = queries.contiguous(), keys.contiguous(), values.contiguous()
    logits = NeighborhoodDot.apply(queries, keys, kernel_size)
    logits = logits + relative_position_bias(bias_table, height, width)
    return NeighborhoodAverage.apply(logits.softmax(dim=-1), values, kernel_size)


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

    def __init__(self, dim: int, num_heads: int, kernel_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{dim} channels do not split into {num_heads} heads")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"the kernel size must be odd and positive, got {kernel_size}")
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, dim = x.shape
        qkv = self.qkv(x).reshape(batch, height, width, 3, self.num_heads, dim // self.num_heads)
        queries, keys, values = qkv.permute(3, 0, 4, 1, 2, 5)
        attended = neighborhood_attention(queries, keys, values, self.rpb, self.kernel_size)
        return self.proj(attended.permute(0, 2, 3, 1, 4).reshape(batch, height, width, dim))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, kernel_size={self.kernel_size}"


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
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2d(dim, num_heads, kernel_size)
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
    authors' release. ``drop_path`` gives each block's stochastic-depth probability.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        kernel_size: int,
        mlp_ratio: float = 2.0,
        drop_path: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        rates = list(drop_path) if drop_path is not None else [0.0] * depth
        if len(rates) != depth:
            raise ValueError(f"need {depth} drop-path rates, got {len(rates)}")
        self.blocks = nn.Sequential(
            *(
                NeighborhoodTransformerBlock(dim, num_heads, kernel_size, mlp_ratio, rate)
                for rate in rates
            )
        )
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.blocks(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
