"""Neighbourhood attention against a dense masked reference; gradients, memory, RNAB."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from licexp.backbones.neighborhood_attention import (
    RNAB,
    DropPath,
    NeighborhoodAttention2d,
    dense_neighborhood_attention,
    natten_operators,
    neighborhood_attention,
    window_starts,
)


def random_problem(
    batch: int, heads: int, height: int, width: int, dim: int, kernel: int, **kwargs
) -> tuple[torch.Tensor, ...]:
    q, k, v = (torch.randn(batch, heads, height, width, dim, **kwargs) for _ in range(3))
    table = torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, **kwargs)
    return q, k, v, table


def test_windows_start_centred_and_shift_inward_at_the_borders() -> None:
    assert window_starts(10, 7).tolist() == [0, 0, 0, 0, 1, 2, 3, 3, 3, 3]
    assert window_starts(7, 7).tolist() == [0] * 7
    assert window_starts(5, 1).tolist() == [0, 1, 2, 3, 4]
    for length, kernel in [(9, 3), (13, 5), (8, 7)]:
        starts = window_starts(length, kernel)
        positions = torch.arange(length)
        assert ((starts <= positions) & (positions < starts + kernel)).all(), "query in window"
        assert starts.min() >= 0 and (starts + kernel).max() <= length, "window inside"


@pytest.mark.parametrize(
    "shape",
    [
        (2, 2, 7, 7, 4, 7),  # the map is one window: every query sees every key
        (1, 3, 9, 13, 5, 3),  # non-square
        (2, 1, 12, 8, 3, 5),
        (1, 2, 16, 11, 4, 7),  # wide borders on both axes
        (1, 2, 3, 20, 2, 3),  # a map exactly one kernel high
        (1, 2, 5, 6, 2, 1),  # a 1x1 neighbourhood: the query's own value
    ],
)
def test_matches_dense_masked_attention_to_float64_precision(shape) -> None:
    q, k, v, table = random_problem(*shape, dtype=torch.float64)
    kernel = shape[-1]
    fast = neighborhood_attention(q, k, v, table, kernel)
    dense = dense_neighborhood_attention(q, k, v, table, kernel)
    assert fast.shape == q.shape
    assert torch.allclose(fast, dense, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "shape",
    [(2, 2, 7, 7, 4, 7), (1, 3, 9, 13, 5, 3), (1, 2, 16, 11, 4, 7), (1, 2, 5, 6, 2, 1)],
)
def test_the_flex_backend_matches_dense_masked_attention(shape) -> None:
    """FlexAttention with the window block mask and the bias score modification (its eager
    reference on CPU; the compiled kernels are checked on CUDA in test_gpu.py)."""
    q, k, v, table = random_problem(*shape, dtype=torch.float64)
    kernel = shape[-1]
    flex = neighborhood_attention(q, k, v, table, kernel, backend="flex")
    dense = dense_neighborhood_attention(q, k, v, table, kernel)
    assert torch.allclose(flex, dense, rtol=0, atol=1e-12)


def test_the_flex_backend_refuses_to_train_on_cpu_naming_the_setting() -> None:
    """FlexAttention has no CPU backward (its gradients are checked on CUDA, test_gpu.py)."""
    q, k, v, table = random_problem(1, 2, 5, 6, 2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="attention=flex.*CUDA.*attention=tiled"):
        neighborhood_attention(q, k, v, table, 3, backend="flex")


def test_an_unknown_backend_is_named() -> None:
    with pytest.raises(ValueError, match="attention backend must be one of .*'fast'"):
        neighborhood_attention(*random_problem(1, 1, 5, 5, 2, 3), kernel_size=3, backend="fast")
    with pytest.raises(ValueError, match="'fast'"):
        NeighborhoodAttention2d(8, 2, 3, backend="fast")


def test_gradients_pass_gradcheck() -> None:
    q, k, v, table = random_problem(1, 2, 4, 5, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *tensors: neighborhood_attention(*tensors, kernel_size=3), (q, k, v, table)
    )


def test_gradients_match_autograd_through_the_dense_reference() -> None:
    inputs = random_problem(2, 2, 11, 9, 4, 5, dtype=torch.float64)
    weights = torch.randn(2, 2, 11, 9, 4, dtype=torch.float64)
    gradients = []
    for attention in (neighborhood_attention, dense_neighborhood_attention):
        leaves = [tensor.clone().requires_grad_(True) for tensor in inputs]
        (attention(*leaves, kernel_size=5) * weights).sum().backward()
        gradients.append([leaf.grad for leaf in leaves])
    for fast, dense in zip(*gradients, strict=True):
        assert fast.abs().max() > 0
        assert torch.allclose(fast, dense, rtol=0, atol=1e-11)


def saved_bytes(height: int, width: int, kernel: int) -> int:
    """Bytes autograd keeps for the backward pass of one attention call."""
    inputs = random_problem(1, 2, height, width, 8, kernel, requires_grad=True)
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        neighborhood_attention(*inputs, kernel_size=kernel)
    return total


def test_memory_grows_with_the_map_not_with_its_square() -> None:
    small, large = saved_bytes(32, 32, 7), saved_bytes(64, 64, 7)
    assert 3.5 < large / small < 4.5  # linear in H * W; dense attention would give 16
    # The tiles' weights ((T + 2r)^2 = 100 keys a query here), kept by the softmax and the
    # product, and the halo copies of the keys and values: under 8 k^2 floats a pixel and
    # head, where dense attention would keep H * W = 4096.
    pixels, kernel, heads = 64 * 64, 7, 2
    assert large < 4 * heads * pixels * 8 * kernel**2


def test_maps_smaller_than_the_kernel_are_refused() -> None:
    q, k, v, table = random_problem(1, 1, 6, 9, 2, 7)
    with pytest.raises(ValueError, match="at least 7x7"):
        neighborhood_attention(q, k, v, table, 7)


@pytest.mark.skipif(
    natten_operators() is None or not torch.cuda.is_available(),
    reason="needs NATTEN (0.15 to 0.17) and a CUDA device",
)
def test_natten_fast_path_agrees_with_the_pure_pytorch_operators() -> None:
    q, k, v, table = (t.cuda() for t in random_problem(2, 4, 19, 23, 16, 7))
    fast = neighborhood_attention(q, k, v, table, 7)
    pure = neighborhood_attention(q, k, v, table, 7, backend="tiled")
    assert torch.allclose(fast, pure, atol=1e-5)


def test_multi_head_module_splits_heads_and_keeps_channels_last_shape() -> None:
    attention = NeighborhoodAttention2d(dim=12, num_heads=3, kernel_size=3)
    x = torch.randn(2, 5, 7, 12)
    assert attention(x).shape == x.shape
    assert attention.rpb.shape == (3, 5, 5)
    with pytest.raises(ValueError, match="heads"):
        NeighborhoodAttention2d(dim=10, num_heads=3, kernel_size=3)
    with pytest.raises(ValueError, match="odd"):
        NeighborhoodAttention2d(dim=12, num_heads=3, kernel_size=4)


def test_rnab_parameters_follow_the_block_structure() -> None:
    dim, heads, kernel, depth = 32, 2, 3, 2
    block = RNAB(dim, depth, heads, kernel, mlp_ratio=2.0)
    per_block = (
        2 * 2 * dim  # two LayerNorms
        + 3 * dim * dim
        + 3 * dim  # qkv
        + heads * (2 * kernel - 1) ** 2  # relative position bias
        + dim * dim
        + dim  # proj
        + dim * 2 * dim
        + 2 * dim
        + 2 * dim * dim
        + dim  # MLP C -> 2C -> C
    )
    assert sum(p.numel() for p in block.parameters()) == depth * per_block


def test_rnab_adds_its_input_to_residual_blocks() -> None:
    block = RNAB(16, 1, 2, 3).eval()
    x = torch.randn(2, 16, 6, 5)
    with torch.no_grad():
        for linear in (block.blocks[0].attn.proj, block.blocks[0].mlp[2]):
            linear.weight.zero_()
            linear.bias.zero_()
        assert torch.equal(block(x), 2 * x)  # x + (x + NA + MLP) with silent branches
        block.blocks[0].mlp[2].bias.fill_(1.0)
        assert torch.allclose(block(x), 2 * x + 1.0)


def test_drop_path_drops_whole_samples_in_training_only() -> None:
    drop = DropPath(0.5)
    x = torch.ones(2000, 3, 2)
    kept = drop(x)[:, 0, 0]
    assert set(kept.unique().tolist()) == {0.0, 2.0}
    dropped = drop(x)
    assert (dropped == dropped[:, :1, :1]).all(), "one decision per sample"
    assert 0.45 < (kept > 0).float().mean() < 0.55
    assert torch.equal(drop.eval()(x), x)


def test_tables_first_built_in_inference_mode_serve_a_later_training_step() -> None:
    """An evaluation under ``torch.inference_mode`` first builds the cached index tables of a
    map size; a training step on that size then saves them for backward (an inference
    tensor could not be) and gets gradients."""
    generator = torch.Generator().manual_seed(5)
    queries, keys, values = (torch.randn(1, 2, 13, 11, 4, generator=generator) for _ in range(3))
    table = torch.randn(2, 5, 5, generator=generator)
    with torch.inference_mode():
        expected = neighborhood_attention(queries, keys, values, table, 3, backend="tiled")
    trained = table.clone().requires_grad_(True)
    output = neighborhood_attention(queries, keys, values, trained, 3, backend="tiled")
    output.sum().backward()
    assert torch.equal(output.detach(), expected)
    assert trained.grad is not None and trained.grad.abs().sum() > 0
