"""Training part of a codec (stage 2 of Borzechowski et al.): the rest frozen, in eval mode."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from licexp.backbones import LearnedCodec


def modules_of_roles(codec: LearnedCodec, roles: Sequence[str]) -> list[str]:
    """The codec's module names that play ``roles`` (keys of ``codec.module_roles``)."""
    unknown = [role for role in roles if role not in codec.module_roles]
    if unknown:
        raise ValueError(
            f"model.trainable: unknown role(s) {unknown} for {type(codec).__name__}; "
            f"its roles: {', '.join(codec.module_roles)}"
        )
    return [name for role in roles for name in codec.module_roles[role]]


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(f"{prefix}.")


def freeze_all_but(codec: nn.Module, trainable: Sequence[str]) -> list[str]:
    """Freezes every parameter outside the modules ``trainable``; returns the frozen modules.

    A frozen parameter gets ``requires_grad=False`` (no gradient, and no place in an
    optimiser). The returned names are the largest modules holding no trainable module;
    the caller keeps them in eval mode, so that nothing with train-time behaviour (drop
    path, spectral-norm power iterations, the latent coders' training approximation) runs
    in them: the frozen latent coders quantise exactly as at inference.
    """
    for name, parameter in codec.named_parameters():
        parameter.requires_grad_(any(_within(name, prefix) for prefix in trainable))
    frozen: list[str] = []
    for name, _ in codec.named_modules():
        if not name or any(_within(name, done) for done in frozen):
            continue
        touches = any(_within(name, prefix) or _within(prefix, name) for prefix in trainable)
        if not touches:
            frozen.append(name)
    return frozen
