"""Datasets and the data module.

Every dataset item is ``{"image": FloatTensor[3, H, W] in [0, 1], "name": str}``.
"""

from licexp.data.datamodule import ImageDataModule
from licexp.data.dead_leaves import DeadLeavesDataset, dead_leaves_image, sample_radii
from licexp.data.folder import ImageFolder, Kodak, default_kodak_root
from licexp.data.images import IMAGE_EXTENSIONS, ImageReadError, center_crop, load_rgb
from licexp.data.photos import AVAILABLE_PHOTOS, DEFAULT_PHOTOS, PhotoSamples, load_photo

__all__ = [
    "AVAILABLE_PHOTOS",
    "DEFAULT_PHOTOS",
    "IMAGE_EXTENSIONS",
    "DeadLeavesDataset",
    "ImageDataModule",
    "ImageFolder",
    "ImageReadError",
    "Kodak",
    "PhotoSamples",
    "center_crop",
    "dead_leaves_image",
    "default_kodak_root",
    "load_photo",
    "load_rgb",
    "sample_radii",
]
