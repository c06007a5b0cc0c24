"""``torch.compile`` of a codec's transforms for the training and validation steps.

Only the neural transforms are compiled (``model.compile``); the quantiser, the entropy
models and CompressAI's C++ rANS coder stay eager. The compiled wrappers are swapped into
the codec for the duration of a step and out again, so that everything outside the steps
(checkpoints, the real-bitstream evaluation, ``licexp-codec``) sees the eager modules: the
state dict keeps its keys (no ``_orig_mod.``) and bitstreams are those of the eager model.

The compiled modules share one code object in TorchDynamo's cache (its wrapper of a
module's call), and so share its recompile limit: 8 graphs, which 4 transforms use up in
training and validation (grad mode and shapes are guarded). The steps run with the limit
raised to 8 per transform, else validation would silently fall back to eager code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch._dynamo
from torch import nn

TRANSFORMS = ("g_a", "g_s", "h_a", "h_s")
"""The analysis, synthesis, hyper analysis and hyper synthesis transforms of every backbone."""

RECOMPILES_PER_TRANSFORM = 8
"""TorchDynamo's default recompile limit (``torch._dynamo.config.recompile_limit``)."""


def compile_transforms(codec: nn.Module, options: Mapping[str, Any]) -> dict[str, nn.Module]:
    """``torch.compile(module, **options)`` of each of :data:`TRANSFORMS` that ``codec`` has.

    Compilation itself happens on the first call; bad ``options`` fail here.
    """
    names = [name for name in TRANSFORMS if isinstance(getattr(codec, name, None), nn.Module)]
    if not names:
        raise ValueError(
            f"model.compile=true: {type(codec).__name__} has none of the transforms "
            f"{', '.join(TRANSFORMS)} to compile"
        )
    try:
        return {name: torch.compile(getattr(codec, name), **options) for name in names}
    except (RuntimeError, TypeError) as error:  # an unknown backend, mode or keyword
        raise ValueError(f"model.compile_options: {error}") from error


@contextmanager
def modules_replaced(parent: nn.Module, replacements: Mapping[str, nn.Module]) -> Iterator[None]:
    """Sets ``parent.<name>`` to each replacement for the ``with`` block, then restores them."""
    originals = {name: getattr(parent, name) for name in replacements}
    for name, module in replacements.items():
        setattr(parent, name, module)
    try:
        yield
    finally:
        for name, module in originals.items():
            setattr(parent, name, module)


@contextmanager
def compiled_transforms_in(codec: nn.Module, compiled: Mapping[str, nn.Module]) -> Iterator[None]:
    """The codec runs with its ``compiled`` transforms, and room in TorchDynamo's cache for
    all of them (the module docstring says why); nothing changes when ``compiled`` is empty."""
    if not compiled:
        yield
        return
    limit = RECOMPILES_PER_TRANSFORM * len(compiled)
    with torch._dynamo.config.patch(recompile_limit=limit), modules_replaced(codec, compiled):
        yield
