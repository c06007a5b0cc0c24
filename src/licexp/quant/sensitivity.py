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

``quant.channel_weights=sensitivity`` (the default of ``quant=tcq`` and ``quant=rdoq``)
measures ``w_c`` once per model, when the codec is prepared for coding or a training run
starts (:meth:`~licexp.quant.QuantizationStrategy.calibrate`), on the central 256x256 crops
of the five embedded photos with four probes each: the setting experiments/README.md
("TCQ and RDOQ at inference") measured.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

from licexp.data.photos import DEFAULT_PHOTOS, PhotoSamples

if TYPE_CHECKING:
    from licexp.backbones.base import LearnedCodec

log = logging.getLogger(__name__)

SENSITIVITY = "sensitivity"
CALIBRATION_CROP = 256

ChannelWeights = tuple[float, ...] | None
Coding = TypeVar("Coding", bound=Any)


def check_channel_weights(weights: ChannelWeights) -> None:
    """A clear error unless ``weights`` is ``None`` or positive numbers."""
    if weights is not None and not all(float(w) > 0 for w in weights):
        raise ValueError(f"quant.channel_weights must all be > 0, got {list(weights)}")


def channel_weights_setting(value: str | Sequence[float] | None) -> tuple[bool, ChannelWeights]:
    """``quant.channel_weights`` as given (``None``, ``"sensitivity"`` or one positive number
    per channel) -> (measure them in ``calibrate``, the weights until then)."""
    if isinstance(value, str):
        if value != SENSITIVITY:
            raise ValueError(
                f"quant.channel_weights must be null, {SENSITIVITY!r} or one positive number "
                f"per latent channel, got {value!r}"
            )
        return True, None
    weights = None if value is None else tuple(map(float, value))
    check_channel_weights(weights)
    return False, weights


def calibration_images(factor: int) -> list[Tensor]:
    """``[1, 3, S, S]`` central crops of the embedded photos, ``S`` the largest multiple of
    ``factor`` up to :data:`CALIBRATION_CROP` (at least ``factor``)."""
    size = max(factor, CALIBRATION_CROP // factor * factor)
    photos = PhotoSamples(names=DEFAULT_PHOTOS, crop_size=size)
    return [photos[i]["image"].unsqueeze(0) for i in range(len(photos))]


def measured_channel_weights(codec: LearnedCodec) -> tuple[float, ...]:
    """``w_c`` of ``codec`` on :func:`calibration_images` (module docstring)."""
    device = next(codec.parameters()).device
    images = [image.to(device) for image in calibration_images(codec.downsampling_factor)]
    return tuple(synthesis_sensitivity(codec, images).tolist())


def calibrated(coding: Coding, codec: LearnedCodec, measure: bool) -> Coding:
    """``coding`` (a frozen dataclass with ``channel_weights``) with ``codec``'s measured
    weights if ``measure``. A codec whose search sees slices of ``y`` (a context model's
    stages) is searched unweighted, with a warning; weights given for it are refused."""
    if not codec.searches_whole_latent:
        name = type(codec).__name__
        if coding.channel_weights is not None:
            raise ValueError(
                f"quant.channel_weights are not supported by {name}: its context stages "
                f"search slices of the latent's channels; give quant.channel_weights=null"
            )
        if measure:
            log.warning(
                "quant.channel_weights=sensitivity: %s searches its context stages on slices "
                "of the latent, which are not weighted yet; the search is unweighted",
                name,
            )
        return coding
    if not measure:
        return coding
    return dataclasses.replace(coding, channel_weights=measured_channel_weights(codec))


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
