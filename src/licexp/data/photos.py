"""Real colour photographs bundled inside scikit-image: an evaluation set that needs no download.

The files ship in the ``skimage.data`` package directory (they are not fetched by ``pooch``) and
are read with :func:`licexp.data.images.load_rgb`, so they decode exactly as a folder of the same
files would. Sizes (W x H): astronaut 512x512, coffee 600x400, chelsea 451x300, rocket 640x427,
motorcycle_left / motorcycle_right 741x500, immunohistochemistry 512x512,
hubble_deep_field 1000x872, retina 1411x1411.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import as_file, files

import torch
from torch.utils.data import Dataset

from licexp.data.images import center_crop, image_size, load_rgb

# Name (as the skimage.data function, or the stereo pair's half) -> bundled file.
_PHOTO_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "immunohistochemistry": "ihc.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "retina": "retina.jpg",
}

AVAILABLE_PHOTOS: tuple[str, ...] = tuple(_PHOTO_FILES)
DEFAULT_PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "motorcycle_left", "rocket")


def load_photo(name: str) -> torch.Tensor:
    """Load one bundled photograph as ``float32`` ``[3, H, W]`` in ``[0, 1]``."""
    _check_names([name])
    with as_file(files("skimage.data").joinpath(_PHOTO_FILES[name])) as path:
        return load_rgb(path)


def _photo_size(name: str) -> tuple[int, int]:
    with as_file(files("skimage.data").joinpath(_PHOTO_FILES[name])) as path:
        return image_size(path)


def _check_names(names: Sequence[str]) -> None:
    unknown = [name for name in names if name not in _PHOTO_FILES]
    if unknown:
        raise ValueError(
            f"unknown photo name(s) {unknown}; available: {', '.join(AVAILABLE_PHOTOS)}"
        )


class PhotoSamples(Dataset):
    """A few real photographs from scikit-image, for validation and embedded evaluation.

    Args:
        names: which photos, from :data:`AVAILABLE_PHOTOS`.
        crop_size: if given, the central ``crop_size x crop_size`` window of each photo (quick
            validation during training); ``None`` keeps the full photo.

    Items are ``{"image": FloatTensor[3, H, W] in [0, 1], "name": <photo name>}``.
    """

    def __init__(self, names: Sequence[str] = DEFAULT_PHOTOS, crop_size: int | None = None) -> None:
        names = [names] if isinstance(names, str) else list(names)
        _check_names(names)
        if not names:
            raise ValueError("PhotoSamples needs at least one photo name")
        if crop_size is not None:
            too_small = [
                f"{name} ({w}x{h})"
                for name in names
                for w, h in [_photo_size(name)]
                if min(w, h) < crop_size
            ]
            if too_small:
                raise ValueError(
                    f"crop_size={crop_size} is larger than photo(s) {', '.join(too_small)}"
                )
        self.names = names
        self.crop_size = crop_size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        name = self.names[index]
        image = load_photo(name)
        if self.crop_size is not None:
            image = center_crop(image, self.crop_size).contiguous()
        return {"image": image, "name": name}
