"""Datasets over a folder of image files, and the Kodak set.

Problems surface when the dataset is built, in the main process, with the folder or file named:
a missing folder, a folder without images, or (when cropping) images smaller than the crop,
whose sizes are read from the file headers. A file that cannot be decoded raises
:class:`~licexp.data.images.ImageReadError` naming it when the item is loaded.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset

from licexp.data.images import IMAGE_EXTENSIONS, center_crop, image_size, load_rgb

KODAK_ENV = "LICEXP_KODAK"
KODAK_NUM_IMAGES = 24
_REPO_ROOT = Path(__file__).resolve().parents[3]
_SHOWN_SMALL_FILES = 5


class DecodedImages:
    """Decoded images kept in memory up to a budget, so that a folder is decoded once per run.

    An image whose values are exactly ``k / 255`` (any 8-bit file) is kept as ``uint8`` (3
    bytes a pixel) and restored bit-identically; any other (16-bit TIFFs, alpha composited
    over white) as ``float32`` (12 bytes a pixel). Once the budget is spent, further images
    are decoded on every use. Each DataLoader worker holds its own cache (persistent
    workers keep it between epochs), so the memory is ``budget x num_workers`` at most.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self.images: dict[Path, torch.Tensor] = {}

    def get(self, path: Path) -> torch.Tensor:
        """The image's pixels: ``uint8`` levels or ``float32`` in ``[0, 1]`` (crop, then
        :func:`as_float`: converting only the crop is what makes a cached read cheap)."""
        cached = self.images.get(path)
        if cached is not None:
            return cached
        image = load_rgb(path)
        if self.used_bytes >= self.budget_bytes:
            return image
        levels = (image * 255).round()
        compact = levels.to(torch.uint8) if torch.equal(levels / 255, image) else image
        size = compact.numel() * compact.element_size()
        if self.used_bytes + size <= self.budget_bytes:
            self.images[path] = compact
            self.used_bytes += size
        return compact


def as_float(pixels: torch.Tensor) -> torch.Tensor:
    """``float32`` in ``[0, 1]`` from :meth:`DecodedImages.get`'s pixels."""
    return pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels


class ImageFolder(Dataset):
    """All images under ``root`` (recursively), in sorted path order.

    Args:
        root: the folder.
        crop_size: side of square crops; ``None`` gives full images.
        train: ``True``: a random ``crop_size`` crop (if ``crop_size`` is set) and random
            horizontal and vertical flips, each with probability 1/2, drawn from torch's global
            generator (seeded by Lightning, per worker). ``False``: the full image, or its
            central crop if ``crop_size`` is set.
        pattern: glob pattern for file names, matched in every subfolder (e.g. ``"kodim*.png"``);
            only files with an extension in :data:`~licexp.data.images.IMAGE_EXTENSIONS` count.
        skip_small: drop images smaller than ``crop_size`` with a warning, instead of raising.
        crops_per_image: in training, the random crops each image gives per epoch: the epoch
            has ``len(files) * crops_per_image`` items, item ``i`` a crop of file
            ``i // crops_per_image`` (the sampler shuffles the items, so an image's crops are
            spread over the epoch, each crop uniformly random and independent).
        cache_mib: memory for decoded images (:class:`DecodedImages`), per worker process;
            0 decodes every item from its file.

    Items are ``{"image": FloatTensor[3, H, W] in [0, 1], "name": <path relative to root,
    without extension>}``.
    """

    def __init__(
        self,
        root: str | Path,
        crop_size: int | None = None,
        train: bool = False,
        pattern: str = "*",
        skip_small: bool = False,
        crops_per_image: int = 1,
        cache_mib: float = 0,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise FileNotFoundError(f"image folder {self.root} {what}")
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"crop_size must be positive or None, got {crop_size}")
        if isinstance(crops_per_image, bool) or not isinstance(crops_per_image, int):
            raise ValueError(f"crops_per_image must be a positive integer, got {crops_per_image!r}")
        if crops_per_image < 1 or cache_mib < 0:
            raise ValueError(
                f"need crops_per_image >= 1 and cache_mib >= 0, got {crops_per_image}, {cache_mib}"
            )
        self.crop_size = crop_size
        self.train = train
        self.crops_per_image = crops_per_image if train else 1
        self.decoded = DecodedImages(int(cache_mib * 2**20))
        self.files = self._list_images(pattern)
        if crop_size is not None:
            self.files = self._drop_or_report_small(crop_size, skip_small)

    def _list_images(self, pattern: str) -> list[Path]:
        files = sorted(
            (p for p in self.root.rglob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS),
            key=lambda p: p.relative_to(self.root).as_posix(),
        )
        files = [p for p in files if p.is_file()]
        if not files:
            raise ValueError(
                f"no images matching {pattern!r} under {self.root} "
                f"(looked for extensions {', '.join(IMAGE_EXTENSIONS)}, in all subfolders)"
            )
        return files

    def _drop_or_report_small(self, crop_size: int, skip_small: bool) -> list[Path]:
        sizes = {path: image_size(path) for path in self.files}
        small = [path for path, (w, h) in sizes.items() if min(w, h) < crop_size]
        if not small:
            return self.files
        listed = ", ".join(
            f"{path.relative_to(self.root)} ({sizes[path][0]}x{sizes[path][1]})"
            for path in small[:_SHOWN_SMALL_FILES]
        )
        more = (
            f" and {len(small) - _SHOWN_SMALL_FILES} more"
            if len(small) > _SHOWN_SMALL_FILES
            else ""
        )
        summary = (
            f"{len(small)} of {len(self.files)} images under {self.root} are smaller than "
            f"crop_size={crop_size}: {listed}{more}"
        )
        if not skip_small:
            raise ValueError(
                f"{summary}. Use a smaller crop_size, or skip_small=true to leave them out."
            )
        if len(small) == len(self.files):
            raise ValueError(f"{summary}; skip_small would leave no images.")
        warnings.warn(f"{summary}; skipping them (skip_small=true).", UserWarning, stacklevel=3)
        dropped = set(small)
        return [path for path in self.files if path not in dropped]

    def __len__(self) -> int:
        return len(self.files) * self.crops_per_image

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} of {len(self)}")
        path = self.files[index // self.crops_per_image]
        image = self.decoded.get(path)
        if self.train:
            image = self._augment(image)
        elif self.crop_size is not None:
            image = center_crop(image, self.crop_size)
        name = path.relative_to(self.root).with_suffix("").as_posix()
        return {"image": as_float(image).contiguous(), "name": name}

    def _augment(self, image: torch.Tensor) -> torch.Tensor:
        if self.crop_size is not None:
            height, width = image.shape[-2:]
            top = int(torch.randint(height - self.crop_size + 1, ()))
            left = int(torch.randint(width - self.crop_size + 1, ()))
            image = image[:, top : top + self.crop_size, left : left + self.crop_size]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        if torch.rand(()) < 0.5:
            image = image.flip(-2)
        return image


def default_kodak_root() -> Path:
    """Where the Kodak images are: ``$LICEXP_KODAK``, else ``<repo>/../shared/data/kodak``.

    Raises:
        FileNotFoundError: neither exists; the message says how to point to the images.
    """
    candidates = []
    env = os.environ.get(KODAK_ENV)
    if env:
        candidates.append(Path(env).expanduser())
    candidates.append(_REPO_ROOT.parent / "shared" / "data" / "kodak")
    for candidate in candidates:
        if candidate.is_dir():
            if env and candidate != candidates[0]:
                warnings.warn(
                    f"{KODAK_ENV}={env} is not a folder; using {candidate}",
                    UserWarning,
                    stacklevel=2,
                )
            return candidate
    raise FileNotFoundError(
        f"Kodak images not found (looked in {', '.join(map(str, candidates))}). Point to the "
        f"folder holding kodim01.png ... kodim24.png with the override data.val.root=/path "
        f"(data=kodak; data.test.root follows it) or the environment variable {KODAK_ENV}."
    )


class Kodak(ImageFolder):
    """The 24 Kodak images ``kodim01.png`` ... ``kodim24.png`` (768x512 or 512x768).

    Args:
        root: the folder holding them; ``None`` means :func:`default_kodak_root`.
        crop_size, train: as for :class:`ImageFolder`.

    Raises:
        ValueError: the folder does not hold exactly 24 ``kodim*.png`` images (results on a
            partial set would not compare with published ones).
    """

    def __init__(
        self, root: str | Path | None = None, crop_size: int | None = None, train: bool = False
    ) -> None:
        super().__init__(
            default_kodak_root() if root is None else root,
            crop_size=crop_size,
            train=train,
            pattern="kodim*.png",
        )
        if len(self.files) != KODAK_NUM_IMAGES:
            raise ValueError(
                f"expected {KODAK_NUM_IMAGES} Kodak images kodim*.png under {self.root}, "
                f"found {len(self.files)}"
            )
