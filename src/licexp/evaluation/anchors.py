"""Classical codec anchors (JPEG, WebP, JPEG 2000) measured live through Pillow.

Each anchor encodes the evaluation images with Pillow at a range of qualities, decodes them
and measures rate, PSNR, MS-SSIM and timings with :mod:`licexp.evaluation.metrics`, so the
anchors are computed on exactly the same images as the learned models.

Pillow codes 8-bit images, so the float input is first quantised to 8 bit
(``round(clamp(x, 0, 1) * 255)``) and the anchors' distortion is measured against that
8-bit-quantised original. For photographs loaded from 8-bit files this is the original itself.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image, features
from torch import Tensor

from licexp.evaluation.metrics import bpp_from_bytes, ms_ssim_if_measurable, psnr
from licexp.evaluation.results import RDCurve

__all__ = [
    "ANCHOR_CODECS",
    "DEFAULT_QUALITIES",
    "CodedImage",
    "AnchorResult",
    "quantize_8bit",
    "coded_pixels",
    "encode_decode",
    "anchor_settings",
    "anchor_curve",
]

#: Codecs available as anchors.
ANCHOR_CODECS: tuple[str, ...] = ("jpeg", "webp", "jpeg2000")

#: Default quality sweep per codec. JPEG/WebP: Pillow ``quality`` (0-100, higher is better).
#: JPEG 2000: compression ratio relative to the raw 24-bit RGB size (lower is better;
#: ratio r gives about 24 / r bpp).
DEFAULT_QUALITIES: dict[str, tuple[float, ...]] = {
    "jpeg": (5, 10, 20, 30, 40, 50, 60, 70, 80, 90),
    "webp": (5, 10, 20, 30, 40, 50, 60, 70, 80, 90),
    "jpeg2000": (200, 100, 64, 48, 32, 24, 16, 12, 8),
}

# Pillow format name and the feature that must be compiled into Pillow, per codec.
_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "jpeg2000": "JPEG2000"}
_PIL_FEATURE = {"jpeg": "jpg", "webp": "webp", "jpeg2000": "jpg_2000"}
_QUALITY_MEANING = {
    "jpeg": "quality = Pillow/libjpeg quality factor",
    "webp": "quality = Pillow/libwebp quality factor",
    "jpeg2000": "quality = compression ratio vs raw 24-bit RGB",
}


@dataclass
class CodedImage:
    """One image coded and decoded by a classical codec.

    Attributes:
        num_bytes: Size of the bitstream (``len(data)``).
        x_hat: Decoded image, float ``[3, H, W]`` in ``[0, 1]`` (multiples of 1/255).
        encoding_time: Seconds spent in Pillow's encoder (``time.perf_counter``).
        decoding_time: Seconds spent opening and decoding the bitstream.
        data: The bitstream itself.
    """

    num_bytes: int
    x_hat: Tensor
    encoding_time: float
    decoding_time: float
    data: bytes = field(default=b"", repr=False)


@dataclass
class AnchorResult:
    """An anchor codec's results on a set of images.

    Attributes:
        rows: One dict per (image, quality): name, codec, quality, bpp, psnr, ms_ssim,
            encoding_time, decoding_time.
        curve: Means over the images per quality, sorted by bpp ascending; ``curve.extra``
            holds the codec's ``"quality"`` per point.
    """

    rows: list[dict[str, Any]]
    curve: RDCurve

    def to_json_dict(self) -> dict[str, Any]:
        """The per-quality means in CompressAI's ``eval_model`` JSON schema."""
        return self.curve.to_json_dict()


def _check_codec(codec: str) -> None:
    """Raise if ``codec`` is unknown or not compiled into this Pillow."""
    if codec not in ANCHOR_CODECS:
        raise ValueError(f"unknown anchor codec {codec!r}; choose one of {ANCHOR_CODECS}")
    feature = _PIL_FEATURE[codec]
    if not features.check(feature):
        raise RuntimeError(
            f"this Pillow ({PIL.__version__}) was built without {codec} support "
            f"(PIL.features.check({feature!r}) is False)"
        )


def _save_options(codec: str, quality: float, subsampling: str) -> dict[str, Any]:
    """Keyword arguments for ``Image.save`` for ``codec`` at ``quality``."""
    if codec == "jpeg":
        if not 0 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in [0, 100], got {quality}")
        return {"quality": round(quality), "optimize": True, "subsampling": subsampling}
    if codec == "webp":
        if not 0 <= quality <= 100:
            raise ValueError(f"WebP quality must be in [0, 100], got {quality}")
        return {"quality": float(quality), "lossless": False}
    if quality < 1:
        raise ValueError(f"JPEG 2000 compression ratio must be >= 1, got {quality}")
    return {
        "quality_mode": "rates",
        "quality_layers": [float(quality)],
        "irreversible": True,  # CDF 9/7 wavelet (lossy)
        "mct": 1,  # colour transform to YCbCr (ICT with the irreversible wavelet)
        "no_jp2": True,  # raw J2K codestream, no JP2 container overhead
    }


def _settings_text(codec: str, subsampling: str) -> str:
    """Human-readable encoder settings for a curve's description."""
    if codec == "jpeg":
        return f"optimize=True, subsampling={subsampling}"
    if codec == "webp":
        return "lossless=False, method=4 (Pillow default)"
    return 'quality_mode="rates", irreversible=True, mct=1, J2K codestream (no_jp2=True)'


def quantize_8bit(image: Tensor) -> Tensor:
    """``round(clamp(image, 0, 1) * 255) / 255``: the 8-bit image the anchors actually code."""
    return torch.round(image.clamp(0.0, 1.0) * 255.0) / 255.0


def _as_chw(image: Tensor) -> Tensor:
    """Validate a ``[3, H, W]`` or ``[1, 3, H, W]`` image and return it as ``[3, H, W]``."""
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"image must have shape [3, H, W] or [1, 3, H, W], got {list(image.shape)}"
        )
    return image


def coded_pixels(image: Tensor) -> np.ndarray:
    """The 8-bit RGB ``[H, W, 3]`` array Pillow codes for a float ``[3, H, W]`` (or
    ``[1, 3, H, W]``) image in [0, 1]: ``round(clamp(image, 0, 1) * 255)``."""
    array = torch.round(_as_chw(image).detach().clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return array.permute(1, 2, 0).cpu().numpy()


def _to_pil(image: Tensor) -> Image.Image:
    """Float ``[3, H, W]`` (or ``[1, 3, H, W]``) tensor in [0, 1] -> 8-bit RGB PIL image."""
    return Image.fromarray(coded_pixels(image))


def _library_text(codec: str) -> str:
    """Name and version of the C library behind ``codec`` in this Pillow."""
    if codec == "jpeg":
        if features.check("libjpeg_turbo"):
            return f"libjpeg-turbo {features.version('libjpeg_turbo')}"
        return f"libjpeg {features.version('jpg')}"
    if codec == "webp":
        return f"libwebp {features.version('webp')}"
    return f"OpenJPEG {features.version('jpg_2000')}"


def encode_decode(
    image: Tensor, codec: str, quality: float, *, subsampling: str = "4:2:0"
) -> CodedImage:
    """Encode ``image`` with a Pillow codec into memory and decode it again.

    Args:
        image: Float RGB image ``[3, H, W]`` or ``[1, 3, H, W]`` in ``[0, 1]``; converted to
            8 bit with ``round(clamp(image, 0, 1) * 255)``.
        codec: One of :data:`ANCHOR_CODECS`.
        quality: Quality factor 0-100 (JPEG, WebP) or compression ratio (JPEG 2000).
        subsampling: JPEG chroma subsampling (``"4:2:0"`` - Pillow's default -, ``"4:2:2"``,
            ``"4:4:4"``); ignored by the other codecs.

    Returns:
        The bitstream size, the decoded image (on the CPU) and the encoding/decoding times.
        Compare ``x_hat`` with :func:`quantize_8bit` of the input.

    Raises:
        ValueError: unknown codec or quality out of range.
        RuntimeError: the codec is not built into this Pillow.
    """
    _check_codec(codec)
    options = _save_options(codec, quality, subsampling)
    pil_image = _to_pil(image)

    buffer = io.BytesIO()
    start = time.perf_counter()
    pil_image.save(buffer, format=_PIL_FORMAT[codec], **options)
    encoding_time = time.perf_counter() - start
    data = buffer.getvalue()

    start = time.perf_counter()
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    decoding_time = time.perf_counter() - start

    array = np.asarray(decoded.convert("RGB"), dtype=np.uint8)
    x_hat = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0
    return CodedImage(
        num_bytes=len(data),
        x_hat=x_hat,
        encoding_time=encoding_time,
        decoding_time=decoding_time,
        data=data,
    )


def _resolve_qualities(codec: str, qualities: Sequence[float] | None) -> tuple[float, ...]:
    """``qualities``, or the codec's :data:`DEFAULT_QUALITIES` when ``None``; checked."""
    qualities = tuple(DEFAULT_QUALITIES[codec] if qualities is None else qualities)
    if not qualities:
        raise ValueError("anchor_curve needs at least one quality")
    if len(set(qualities)) != len(qualities):
        raise ValueError(f"qualities must be distinct, got {qualities}")
    return qualities


def anchor_settings(
    codec: str, qualities: Sequence[float] | None = None, *, subsampling: str = "4:2:0"
) -> dict[str, Any]:
    """Everything besides the images that decides :func:`anchor_curve`'s bitstreams: the
    codec, its qualities, Pillow's encoder options per quality, and the versions of Pillow
    and of the codec's C library. Plain JSON values, for keys of cached results."""
    _check_codec(codec)
    qualities = _resolve_qualities(codec, qualities)
    return {
        "codec": codec,
        "qualities": list(qualities),
        "save_options": [_save_options(codec, quality, subsampling) for quality in qualities],
        "pillow": PIL.__version__,
        "library": _library_text(codec),
    }


def anchor_curve(
    images: Sequence[tuple[str, Tensor]],
    codec: str,
    qualities: Sequence[float] | None = None,
    *,
    subsampling: str = "4:2:0",
) -> AnchorResult:
    """Rate-distortion curve of a Pillow codec on ``images``.

    Every image is coded at every quality; distortion is measured against the 8-bit-quantised
    image (see :func:`quantize_8bit`). The curve's points are the means over the images per
    quality (as CompressAI's ``eval_model`` averages per-image metrics), sorted by bpp.

    Args:
        images: ``(name, image)`` pairs; images are float RGB ``[3, H, W]`` in ``[0, 1]``.
        codec: One of :data:`ANCHOR_CODECS`.
        qualities: Quality sweep; :data:`DEFAULT_QUALITIES` of the codec by default.
        subsampling: JPEG chroma subsampling, see :func:`encode_decode`.

    Returns:
        Per-image rows and the mean curve named ``"pillow-<codec>"``.
    """
    _check_codec(codec)
    if not images:
        raise ValueError("anchor_curve needs at least one image")
    qualities = _resolve_qualities(codec, qualities)

    rows: list[dict[str, Any]] = []
    for name, image in images:
        reference = quantize_8bit(_as_chw(image).detach().cpu().float())
        height, width = reference.shape[-2:]
        for quality in qualities:
            coded = encode_decode(reference, codec, quality, subsampling=subsampling)
            rows.append(
                {
                    "name": name,
                    "codec": codec,
                    "quality": quality,
                    "bpp": bpp_from_bytes(coded.num_bytes, height, width),
                    "psnr": psnr(reference, coded.x_hat),
                    "ms_ssim": ms_ssim_if_measurable(reference, coded.x_hat),
                    "encoding_time": coded.encoding_time,
                    "decoding_time": coded.decoding_time,
                }
            )

    metrics = ("bpp", "psnr", "ms_ssim", "encoding_time", "decoding_time")
    means = []
    for quality in qualities:
        selected = [row for row in rows if row["quality"] == quality]
        point = {"quality": quality}
        for metric in metrics:  # over the images that have the metric (MS-SSIM needs 21 px)
            values = [r[metric] for r in selected if r[metric] is not None]
            point[metric] = float(np.mean(values)) if values else None
        means.append(point)
    means.sort(key=lambda point: point["bpp"])

    description = (
        f"{_PIL_FORMAT[codec]} via Pillow {PIL.__version__} ({_library_text(codec)}), "
        f"{_settings_text(codec, subsampling)}; "
        f"{_QUALITY_MEANING[codec]}; metrics against the 8-bit-quantised original; "
        f"mean over {len(images)} images"
    )
    curve = RDCurve(
        name=f"pillow-{codec}",
        description=description,
        extra={"quality": [point["quality"] for point in means]},
        **{m: [p[m] for p in means] for m in metrics if all(p[m] is not None for p in means)},
    )
    return AnchorResult(rows=rows, curve=curve)
