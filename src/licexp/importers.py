"""Pretrained weights from elsewhere: the Tiny-LIC release and CompressAI's model zoo.

The names map one to one onto licexp's, so each importer renames keys:

- **Tiny-LIC release** (lumingzzz/TinyLIC, for ``backbone=tiny_lic``): its modules
  ``g_a0`` ... ``g_a7`` (likewise ``g_s``, ``h_a``, ``h_s``) are the entries of licexp's
  ``nn.Sequential`` transforms; a ``ResViTBlock``'s ``residual_group.blocks`` are an RNAB's
  ``blocks``, with ``mlp.fc1`` / ``mlp.fc2`` as ``mlp.0`` / ``mlp.2`` and NATTEN's ``rpb``,
  ``qkv`` and ``proj`` unchanged; ``sc_transform_k``, ``entropy_parameters_k`` and
  ``cc_transforms`` are the context model's ``spatial_context[k-1]``,
  ``entropy_parameters[k-1]`` and ``channel_context``. The masks of its
  ``MultistageMaskedConv2d`` are applied to their weights (as its forward pass does) and
  dropped.
- **CompressAI zoo** (``bmshj2018-hyperprior`` for ``bmshj2018``, ``mbt2018-mean`` for
  ``mean_scale``): the transforms keep their names; ``entropy_bottleneck`` and
  ``gaussian_conditional`` move under ``hyper_latent`` and ``latent``.

Both may come wrapped (``{"state_dict": ...}``) and with DataParallel's ``module.``
prefixes, and both may name the entropy bottleneck's parameters the old way
(``_matrix0``); CompressAI's own ``remap_old_keys`` renames those. The CDF tables are not
imported: ``prepare_for_coding`` rebuilds them from the weights, as ``update()`` does there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from compressai.models.utils import remap_old_keys
from torch import Tensor

from licexp.backbones import LearnedCodec, MeanScaleHyperprior, ScaleHyperprior, TinyLIC

REBUILT = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table", "target", "bound", "pedestal")
"""Buffers that licexp builds itself (CDF tables, scale table, bounds, GDN's reparametrisation
constants, which older files lack), never imported."""

Rename = tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]

COMPRESSAI_PREFIXES = {
    "entropy_bottleneck.": "hyper_latent.entropy_bottleneck.",
    "gaussian_conditional.": "latent.gaussian_conditional.",
}
"""CompressAI's entropy-model prefixes -> licexp's; every other key keeps its name (the
mapping :mod:`licexp.export` inverts)."""
COMPRESSAI_NAMES: list[Rename] = [
    (re.compile(f"^{re.escape(theirs)}"), ours) for theirs, ours in COMPRESSAI_PREFIXES.items()
]

RELEASE_NAMES: list[Rename] = [
    (re.compile(r"^(g_a|g_s|h_a|h_s)(\d+)\."), r"\1.\2."),
    (re.compile(r"\.residual_group\.blocks\."), ".blocks."),
    (re.compile(r"\.mlp\.fc1\."), ".mlp.0."),
    (re.compile(r"\.mlp\.fc2\."), ".mlp.2."),
    (
        re.compile(r"^sc_transform_(\d+)\."),
        lambda m: f"context_model.spatial_context.{int(m[1]) - 1}.",
    ),
    (
        re.compile(r"^entropy_parameters_(\d+)\."),
        lambda m: f"context_model.entropy_parameters.{int(m[1]) - 1}.",
    ),
    (re.compile(r"^cc_transforms\."), "context_model.channel_context."),
    *COMPRESSAI_NAMES,  # the release names its entropy models as CompressAI does
]

FORMATS = {
    "the Tiny-LIC release": (RELEASE_NAMES, (TinyLIC,), "backbone=tiny_lic"),
    "CompressAI's zoo": (
        COMPRESSAI_NAMES,
        (MeanScaleHyperprior, ScaleHyperprior),
        "backbone=mean_scale (mbt2018-mean) or backbone=bmshj2018 (bmshj2018-hyperprior)",
    ),
}


def unwrap(raw: Any) -> dict[str, Tensor] | None:
    """The tensors of a bare or wrapped state dict, ``module.`` prefixes removed."""
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not raw:
        return None
    if not all(isinstance(key, str) and isinstance(value, Tensor) for key, value in raw.items()):
        return None
    return {key.removeprefix("module."): value for key, value in raw.items()}


def detect_format(state: Mapping[str, Tensor]) -> str | None:
    """``"the Tiny-LIC release"``, ``"CompressAI's zoo"`` or ``None`` by the key layout."""
    keys = list(state)
    if any(re.match(r"^g_a\d+\.", key) for key in keys):
        return "the Tiny-LIC release"
    if "g_a.0.weight" in state and any(key.startswith("entropy_bottleneck.") for key in keys):
        return "CompressAI's zoo"
    return None


def rename(key: str, names: list[Rename]) -> str:
    for pattern, replacement in names:
        key = pattern.sub(replacement, key)
    return key


def apply_masks(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Multiplies every ``<conv>.weight`` by its ``<conv>.mask`` and drops the masks."""
    masks = {key[: -len(".mask")]: value for key, value in state.items() if key.endswith(".mask")}
    result = {key: value for key, value in state.items() if not key.endswith(".mask")}
    for conv, mask in masks.items():
        result[f"{conv}.weight"] = result[f"{conv}.weight"] * mask
    return result


def imported_state(raw: Any, codec: LearnedCodec, source: str) -> dict[str, Tensor]:
    """A full state dict for ``codec`` from a foreign checkpoint ``raw`` read from ``source``.

    Raises ``ValueError`` naming the problem: an unknown layout, a backbone that does not
    match the format, or keys and shapes that do not fit.
    """
    state = unwrap(raw)
    kind = detect_format(state) if state is not None else None
    if kind is None:
        raise ValueError(
            f"{source} is neither a licexp checkpoint nor a state dict of the Tiny-LIC release "
            "or CompressAI's zoo (no g_a0.* or g_a.0.weight + entropy_bottleneck.* keys)"
        )
    names, backbones, hint = FORMATS[kind]
    if type(codec) not in backbones:
        raise ValueError(f"{source} is a state dict of {kind}: it needs {hint}")
    state = apply_masks(remap_old_keys("entropy_bottleneck", state))
    imported = {rename(key, names): value for key, value in state.items()}
    imported = {k: v for k, v in imported.items() if not k.endswith(REBUILT)}
    expected = codec.state_dict()
    unexpected = sorted(set(imported) - set(expected))
    missing = sorted(k for k in set(expected) - set(imported) if not k.endswith(REBUILT))
    if unexpected or missing:
        raise ValueError(
            f"{source} ({kind}) does not fit {type(codec).__name__}: "
            f"unexpected keys {unexpected[:5]}, missing keys {missing[:5]}"
        )
    wrong = [
        f"{key} {tuple(value.shape)} (expected {tuple(expected[key].shape)})"
        for key, value in imported.items()
        if value.shape != expected[key].shape
    ]
    if wrong:
        raise ValueError(
            f"{source} ({kind}) has other sizes than this backbone's config: {wrong[:3]}; "
            "the paper-size config (N, M, depths) must match the release's"
        )
    full = {key: value.detach().clone() for key, value in expected.items()}
    full.update({key: value.to(expected[key].dtype) for key, value in imported.items()})
    return full
