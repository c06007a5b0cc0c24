"""Load any image file as an RGB float tensor, with errors that name the file.

``load_rgb(path)`` returns a ``float32`` tensor of shape ``[3, H, W]`` with values in ``[0, 1]``.
Pixels are taken as stored: no colour management (ICC profiles are ignored), no EXIF rotation,
and only the first frame of a multi-frame file. Conversions, by Pillow mode:

* ``RGB`` (8 bit): divided by 255.
* ``L`` (8 bit), ``1`` (bilevel): divided by 255 and replicated to 3 channels.
* ``I;16`` (16-bit greyscale PNG / TIFF): divided by 65535 and replicated; all 16 bits are kept.
* ``I`` (32-bit integer; Pillow uses it for 16-bit PGM, rescaling any ``maxval`` to 65535):
  divided by 65535 and replicated; a value outside ``[0, 65535]`` is an error, not clipped.
* ``F`` (32-bit float greyscale): taken as already in ``[0, 1]`` and replicated; a value outside
  ``[0, 1]`` or not finite is an error.
* 16-bit colour TIFF: Pillow would reduce it to 8 bits, so it is read with ``tifffile`` and
  divided by 65535; all 16 bits are kept.
* 16-bit colour PNG and PPM: Pillow decodes these to 8 bits per channel and offers no lossless
  path, so they are loaded at 8-bit precision and a ``UserWarning`` says so.
* ``RGBA``, ``LA``, ``PA``, ``RGBa`` and palette / greyscale / RGB images with a
  transparent colour (PNG ``tRNS``): composited over white, ``out = a * c + (1 - a) * 1``, because
  compression models take no alpha channel and white is the usual page background.
* ``P`` (palette), ``CMYK``, ``YCbCr``, ``HSV``, ``LAB``, ``RGBX``: converted to RGB by Pillow.

A missing, unreadable, truncated or non-image file raises :class:`ImageReadError`, whose message
names the file and the problem.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)

_UINT16_MAX = 65535.0
_CONVERT_TO_RGB = ("CMYK", "YCbCr", "HSV", "LAB", "RGBX")
_CONVERT_TO_RGBA = ("PA", "RGBa")


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"cannot read image {self.path}: {problem}")


def load_rgb(path: str | Path) -> torch.Tensor:
    """Read an image file as a ``float32`` tensor ``[3, H, W]`` in ``[0, 1]``.

    See the module docstring for how each kind of image is converted.

    Raises:
        ImageReadError: the file is missing, is not an image, or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
    try:
        image = Image.open(path)
    except Exception as error:
        raise ImageReadError(path, f"{type(error).__name__}: {error}") from error
    with image:
        try:
            bits_lost = _decodes_16_bit_colour_to_8(image)
            image.load()
            tiff_16_bit = _read_16_bit_tiff(path) if bits_lost and image.format == "TIFF" else None
        except ImageReadError:
            raise
        except Exception as error:  # Pillow reports corrupt data with many exception types
            raise ImageReadError(path, f"{type(error).__name__}: {error}") from error
        if tiff_16_bit is not None:
            pixels, white = tiff_16_bit, _UINT16_MAX
        else:
            if bits_lost:
                warnings.warn(
                    f"{path}: 16-bit colour {image.format} is decoded to 8 bits per channel by "
                    "Pillow; precision beyond 8 bits is lost",
                    UserWarning,
                    stacklevel=2,
                )
            pixels, white = _pixels_and_white_level(image, path)
    rgb = _to_rgb_over_white(pixels.astype(np.float32) / np.float32(white))
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(width, height)`` of an image file, reading only its header.

    Raises:
        ImageReadError: the file is missing or is not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:
        raise ImageReadError(path, f"{type(error).__name__}: {error}") from error


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Crop the central ``size x size`` window of a ``[C, H, W]`` tensor.

    Raises:
        ValueError: the image is smaller than ``size`` in either dimension.
    """
    height, width = image.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from an image of {width}x{height} (WxH)")
    top, left = (height - size) // 2, (width - size) // 2
    return image[..., top : top + size, left : left + size]


def _decodes_16_bit_colour_to_8(image: Image.Image) -> bool:
    """True when the file stores 16-bit colour that Pillow will decode to 8-bit ``RGB(A)``."""
    if image.mode not in ("RGB", "RGBA"):
        return False
    for tile in image.tile:
        args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
        if args and isinstance(args[0], str) and ";16" in args[0]:
            return True  # PNG and TIFF name a 16-bit raw mode
        if image.format == "PPM" and len(args) > 1 and isinstance(args[1], int):
            return args[1] > 255  # PPM passes its maxval
    return False


def _read_16_bit_tiff(path: Path) -> np.ndarray:
    """Read the first page of a 16-bit colour TIFF as ``uint16`` ``[H, W, C]`` (C = 3 or 4)."""
    import tifffile

    pixels = tifffile.imread(path, key=0)
    if pixels.dtype != np.uint16 or pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
        raise ImageReadError(
            path, f"unsupported 16-bit TIFF layout: {pixels.dtype} {tuple(pixels.shape)}"
        )
    return pixels


def _pixels_and_white_level(image: Image.Image, path: Path) -> tuple[np.ndarray, float]:
    """Return the pixels as ``[H, W, C]`` (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) and the value
    that maps to 1.0."""
    mode = image.mode
    transparent = image.info.get("transparency")
    if mode == "P":
        image = image.convert("RGBA" if transparent is not None else "RGB")
        transparent = None
    elif mode == "1":
        image = image.convert("L")
        transparent = None
    elif mode in _CONVERT_TO_RGBA:
        image = image.convert("RGBA")
    elif mode in _CONVERT_TO_RGB:
        image = image.convert("RGB")

    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]

    if image.mode in ("L", "LA", "RGB", "RGBA"):
        white = 255.0
    elif image.mode.startswith("I;16"):
        white = _UINT16_MAX
    elif image.mode == "I":
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > _UINT16_MAX:
            raise ImageReadError(
                path, f"32-bit integer pixels span [{low}, {high}], outside the 16-bit range"
            )
        white = _UINT16_MAX
    elif image.mode == "F":
        if not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
            raise ImageReadError(path, "float pixels are not all finite values in [0, 1]")
        white = 1.0
    else:
        raise ImageReadError(path, f"unsupported Pillow mode {image.mode!r}")

    if transparent is not None and pixels.shape[-1] in (1, 3):
        key = np.asarray(transparent).reshape(-1)
        opaque = ~np.all(pixels == key, axis=-1, keepdims=True)
        pixels = np.concatenate([pixels, opaque * np.asarray(white, pixels.dtype)], axis=-1)
    return pixels, white


def _to_rgb_over_white(pixels: np.ndarray) -> np.ndarray:
    """Map ``[H, W, C]`` floats in ``[0, 1]`` to ``[H, W, 3]`` RGB, compositing alpha over
    white."""
    channels = pixels.shape[-1]
    if channels in (2, 4):
        colour, alpha = pixels[..., :-1], pixels[..., -1:]
        pixels = colour * alpha + (np.float32(1.0) - alpha)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels.astype(np.float32, copy=False)
