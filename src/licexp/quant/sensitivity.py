"""How much the synthesis transform cares about each latent channel: TCQ's and RDOQ's
distortion weights (``quant.channel_weights``).

The search of :mod:`licexp.quant.tcq` minimises the squared error in the *latent*; the
codec is judged on the image. To first order an error ``e`` in latent element ``i`` moves
the reconstruction by ``J e_i`` (``J = d g_s / d y_hat`` at the coded latent), so its image
squared error is ``||J_{:,i}||^2 e_i^2``. Per channel ``c`` the weight is the mean squared
Jacobian column norm over the channel's elements,

    w_c = mean_{i in c} ||J_{:,i}||^2,    normalised so that mean_c w_c = 1,

estimated without forming ``J`` (Hutchinson): for ``r`` with independent +-1 entries in image
space, ``E[(J^T r)_i^2] = sum_k J_ki^2 = ||J_{:,i}||^2``, and ``J^T r`` is one backward pass
of ``g_s``. Cross terms between elements (errors that cancel in the image) are left out.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from licexp.backbones.base import LearnedCodec


def synthesis_sensitivity(
    codec: LearnedCodec, images: Iterable[Tensor], probes: int = 4, seed: int = 0
) -> Tensor:
    """``[C]``: ``w_c`` (module docstring) of ``codec`` over ``images`` (``[1, 3, H, W]`` in
    [0, 1], sides multiples of the codec's downsampling factor), at the eval-mode latent,
    ``probes`` Rademacher vectors per image; mean 1 over channels."""
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    generator = torch.Generator().manual_seed(seed)
    total, count = None, 0
    was_training = codec.training
    codec.eval()
    try:
        for image in images:
            with torch.no_grad():
                y_hat = codec(image).latents["y_hat"]
            y_hat = y_hat.detach().requires_grad_(True)
            x_hat = codec.synthesize(y_hat)
            for probe in range(probes):
                signs = torch.randint(0, 2, x_hat.shape, generator=generator) * 2.0 - 1.0
                (column,) = torch.autograd.grad(
                    x_hat, y_hat, signs.to(x_hat), retain_graph=probe < probes - 1
                )
                per_channel = column.pow(2).mean(dim=(0, *range(2, column.dim())))
                total = per_channel if total is None else total + per_channel
                count += 1
    finally:
        codec.train(was_training)
    if total is None:
        raise ValueError("synthesis_sensitivity needs at least one image")
    weights = total / count
    return weights / weights.mean()
