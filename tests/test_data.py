"""Tests of licexp.data: image loading, the datasets, the data module and the data configs."""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from licexp.data import (
    AVAILABLE_PHOTOS,
    DEFAULT_PHOTOS,
    DeadLeavesDataset,
    ImageDataModule,
    ImageFolder,
    ImageReadError,
    Kodak,
    PhotoSamples,
    dead_leaves_image,
    default_kodak_root,
    load_rgb,
    sample_radii,
)
from licexp.data.dead_leaves import leaf_labels

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
SHARED_KODAK = REPO_ROOT.parent / "shared" / "data" / "kodak"


def save(array: np.ndarray, path: Path, mode: str | None = None, **params: object) -> Path:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **params)
    return path


def mode_of(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


def assert_rgb_image(image: torch.Tensor, height: int, width: int) -> None:
    assert image.dtype == torch.float32
    assert image.shape == (3, height, width)
    assert image.min() >= 0.0 and image.max() <= 1.0


# --- images ------------------------------------------------------------------------------------


def test_rgb_8_bit_is_divided_by_255(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = load_rgb(save(pixels, tmp_path / "rgb.png"))
    assert_rgb_image(image, 5, 7)
    torch.testing.assert_close(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


def test_greyscale_is_replicated_to_three_equal_channels(tmp_path: Path) -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    image = load_rgb(save(pixels, tmp_path / "grey.png"))
    assert_rgb_image(image, 3, 4)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    torch.testing.assert_close(image[0], torch.from_numpy(pixels).float() / 255)


def test_16_bit_greyscale_keeps_full_precision(tmp_path: Path) -> None:
    pixels = np.array([[0, 257, 65535, 1]], dtype=np.uint16)
    path = save(pixels, tmp_path / "grey16.png")
    assert mode_of(path) == "I;16"
    image = load_rgb(path)
    expected = torch.tensor([0, 257, 65535, 1], dtype=torch.float64) / 65535
    torch.testing.assert_close(image[1, 0].double(), expected, rtol=0, atol=1e-7)
    assert image[0, 0, 3] > 0  # 1/65535 would be 0 at 8-bit precision


def test_16_bit_pgm_keeps_full_precision(tmp_path: Path) -> None:
    path = tmp_path / "grey16.pgm"
    path.write_bytes(b"P5\n2 1\n65535\n" + np.array([257, 65535], dtype=">u2").tobytes())
    image = load_rgb(path)
    torch.testing.assert_close(image[:, 0], torch.tensor([[257 / 65535, 1.0]] * 3))


def test_16_bit_colour_tiff_keeps_full_precision(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    pixels = np.array([[[65535, 257, 1], [0, 32768, 3]]], dtype=np.uint16)
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, pixels, photometric="rgb")
    image = load_rgb(path)
    expected = torch.from_numpy(pixels.astype(np.float64) / 65535).permute(2, 0, 1)
    torch.testing.assert_close(image.double(), expected, rtol=0, atol=1e-7)


def test_16_bit_colour_png_warns_about_8_bit_decoding(tmp_path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    row = b"\x00" + np.array([65535, 0, 0, 0, 65535, 0], dtype=">u2").tobytes()
    header = (2).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([16, 2, 0, 0, 0])
    path = tmp_path / "rgb16.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row))
        + chunk(b"IEND", b"")
    )
    with pytest.warns(UserWarning, match="8 bits"):
        image = load_rgb(path)
    torch.testing.assert_close(image[:, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))


def test_transparent_pixels_are_composited_over_white(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[..., 0] = 200
    pixels[0, 0, 3] = 0  # fully transparent -> white
    pixels[0, 1, 3] = 255  # opaque -> its colour
    pixels[1, :, 3] = 51  # 20 % opaque -> 0.2 * colour + 0.8 * white
    image = load_rgb(save(pixels, tmp_path / "rgba.png"))
    torch.testing.assert_close(image[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(image[:, 0, 1], torch.tensor([200 / 255, 0, 0]))
    torch.testing.assert_close(image[:, 1, 0], 0.2 * torch.tensor([200 / 255, 0, 0]) + 0.8)
    grey_alpha = save(pixels[..., [1, 3]], tmp_path / "la.png")
    assert mode_of(grey_alpha) == "LA"
    torch.testing.assert_close(load_rgb(grey_alpha)[:, 0, 0], torch.ones(3))


def test_palette_image_is_converted_to_rgb(tmp_path: Path) -> None:
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    pixels[:2] = (255, 0, 0)
    pixels[2:] = (0, 0, 255)
    path = save(pixels, tmp_path / "palette.png", mode="P")
    assert mode_of(path) == "P"
    image = load_rgb(path)
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(image[:, 3, 3], torch.tensor([0.0, 0.0, 1.0]))


def test_palette_transparency_and_cmyk(tmp_path: Path) -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 10, 20, 30])
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    image = load_rgb(tmp_path / "p.png")
    torch.testing.assert_close(
        image[:, 0], torch.tensor([[1.0, 10 / 255], [1, 20 / 255], [1, 30 / 255]])
    )
    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    torch.testing.assert_close(load_rgb(tmp_path / "cmyk.tif")[:, 1, 2], torch.tensor([1.0, 0, 0]))


def test_corrupt_file_raises_image_read_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.png"
    path.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(ImageReadError, match="corrupt.png") as error:
        load_rgb(path)
    assert error.value.path == path


def test_truncated_png_raises_image_read_error(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = save(pixels, tmp_path / "full.png").read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageReadError, match="truncated.png"):
        load_rgb(path)


def test_missing_file_raises_image_read_error(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="nothing.png.*no such file"):
        load_rgb(tmp_path / "nothing.png")


def test_float_image_out_of_range_is_an_error(tmp_path: Path) -> None:
    path = save(np.array([[0.5, 2.0]], dtype=np.float32), tmp_path / "float.tif")
    with pytest.raises(ImageReadError, match=r"float.tif.*\[0, 1\]"):
        load_rgb(path)


# --- dead leaves -------------------------------------------------------------------------------


def test_dead_leaves_items_are_deterministic_per_seed_and_index() -> None:
    first, again = DeadLeavesDataset(length=10, size=64, seed=3), DeadLeavesDataset(size=64, seed=3)
    item = first[5]
    assert torch.equal(item["image"], first[5]["image"])
    assert torch.equal(item["image"], again[5]["image"])
    assert not torch.equal(item["image"], first[6]["image"])
    assert not torch.equal(item["image"], DeadLeavesDataset(size=64, seed=4)[5]["image"])
    assert item["name"] == "dead_leaves_000005"
    assert_rgb_image(item["image"], 64, 64)
    assert len(first) == 10
    with pytest.raises(IndexError):
        first[10]


def test_dead_leaves_cover_the_image_front_to_back() -> None:
    rng = np.random.default_rng(0)
    labels, centres, radii = leaf_labels(rng, 128, min_radius=2.0, max_radius=60.0, alpha=3.0)
    assert labels.min() == 0 and labels.max() == len(radii) - 1
    assert len(np.unique(labels)) == len(radii) > 100  # every returned leaf is visible
    # Every pixel lies inside the disc of the leaf it shows (no unpainted background).
    y, x = np.mgrid[:128, :128]
    distance2 = (y - centres[labels, 0]) ** 2 + (x - centres[labels, 1]) ** 2
    assert np.all(distance2 <= radii[labels] ** 2)
    # Front to back: no pixel shows a leaf while an earlier leaf's disc also covers it.
    for leaf in range(0, len(radii), 25):
        inside = (y - centres[leaf, 0]) ** 2 + (x - centres[leaf, 1]) ** 2 <= radii[leaf] ** 2
        assert np.all(labels[inside] <= leaf)


def test_dead_leaves_image_statistics_look_natural() -> None:
    image = dead_leaves_image(np.random.default_rng(1), 128)
    assert image.shape == (128, 128, 3) and image.dtype == np.float32
    assert image.std() > 0.1
    saturation = image.max(-1) - image.min(-1)
    assert np.median(saturation) < 0.4  # mostly muted colours


def test_texture_makes_leaves_non_flat() -> None:
    textured = DeadLeavesDataset(size=96, seed=0, textured=True)[0]["image"]
    flat = DeadLeavesDataset(size=96, seed=0, textured=False)[0]["image"]
    assert not torch.equal(textured, flat)
    # Untextured images are piecewise constant: far fewer distinct colours.
    distinct = [len(torch.unique(img.reshape(3, -1), dim=1).T) for img in (textured, flat)]
    assert distinct[0] > 3 * distinct[1]


def test_radius_sampler_matches_the_power_law_cdf() -> None:
    r_min, r_max = 2.0, 100.0
    for alpha in (3.0, 1.0, 2.5):
        radii = np.sort(sample_radii(np.random.default_rng(0), 20_000, r_min, r_max, alpha))
        assert radii.min() >= r_min and radii.max() <= r_max
        if alpha == 1.0:
            cdf = np.log(radii / r_min) / math.log(r_max / r_min)
        else:
            b = 1.0 - alpha
            cdf = (radii**b - r_min**b) / (r_max**b - r_min**b)
        empirical = np.arange(1, len(radii) + 1) / len(radii)
        ks = np.max(np.maximum(empirical - cdf, cdf - (empirical - 1 / len(radii))))
        assert ks < 1.63 / math.sqrt(len(radii))  # 1 % significance level


def test_dead_leaves_sensor_noise_is_gaussian_with_the_set_deviation() -> None:
    clean = DeadLeavesDataset(length=2, size=128, seed=5)
    noisy = DeadLeavesDataset(length=2, size=128, seed=5, noise_std=0.02)
    assert torch.equal(noisy[1]["image"], noisy[1]["image"]), "deterministic per index"
    difference = noisy[1]["image"] - clean[1]["image"]
    inside = (clean[1]["image"] > 0.1) & (clean[1]["image"] < 0.9)  # away from the clipping
    assert abs(difference[inside].std().item() - 0.02) < 0.001
    assert abs(difference[inside].mean().item()) < 0.001
    assert noisy[1]["image"].min() >= 0 and noisy[1]["image"].max() <= 1
    with pytest.raises(ValueError, match="noise_std"):
        DeadLeavesDataset(noise_std=-0.1)


def test_dead_leaves_rejects_bad_radii() -> None:
    with pytest.raises(ValueError, match="min_radius"):
        DeadLeavesDataset(min_radius=10.0, max_radius=5.0)


# --- photos ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DEFAULT_PHOTOS)
def test_default_photos_load(name: str) -> None:
    item = PhotoSamples([name])[0]
    assert item["name"] == name
    assert_rgb_image(item["image"], *item["image"].shape[1:])
    assert item["image"].std() > 0.05


def test_photo_pixels_match_scikit_image() -> None:
    import skimage.data

    expected = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(PhotoSamples(["astronaut"])[0]["image"], expected)
    assert set(DEFAULT_PHOTOS) <= set(AVAILABLE_PHOTOS)


def test_photo_crop_and_unknown_name() -> None:
    photos = PhotoSamples(["coffee", "chelsea"], crop_size=256)
    assert [photos[i]["image"].shape for i in range(2)] == [(3, 256, 256)] * 2
    full = PhotoSamples(["coffee"])[0]["image"]  # 600 x 400: the crop starts at (72, 172)
    torch.testing.assert_close(photos[0]["image"], full[:, 72:328, 172:428])
    with pytest.raises(ValueError, match="available: astronaut"):
        PhotoSamples(["astronot"])
    with pytest.raises(ValueError, match="chelsea"):
        PhotoSamples(["chelsea"], crop_size=400)


# --- folders -----------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for name, (h, w) in {"a.png": (40, 50), "sub/b.jpg": (64, 48), "c.bmp": (48, 48)}.items():
        save(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_lists_images_recursively_in_sorted_order(folder: Path) -> None:
    dataset = ImageFolder(folder)
    assert [dataset[i]["name"] for i in range(len(dataset))] == ["a", "c", "sub/b"]
    assert dataset[2]["image"].shape == (3, 64, 48)


def test_folder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("")
    with pytest.raises(ValueError, match=r"empty.*\.png"):
        ImageFolder(tmp_path / "empty")


def test_images_smaller_than_the_crop_are_reported_or_skipped(folder: Path) -> None:
    with pytest.raises(ValueError, match=r"a\.png \(50x40\).*skip_small"):
        ImageFolder(folder, crop_size=48, train=True)
    with pytest.warns(UserWarning, match="a.png"):
        dataset = ImageFolder(folder, crop_size=48, train=True, skip_small=True)
    assert len(dataset) == 2
    assert all(dataset[i]["image"].shape == (3, 48, 48) for i in range(2))


def test_unreadable_file_in_a_folder_is_named_when_loaded(folder: Path) -> None:
    (folder / "broken.png").write_bytes(b"not a png at all")
    dataset = ImageFolder(folder)
    index = [p.name for p in dataset.files].index("broken.png")
    with pytest.raises(ImageReadError, match="broken.png"):
        dataset[index]


def test_training_crops_are_random_and_flipped(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    save(pixels, tmp_path / "x.png")
    full = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    dataset = ImageFolder(tmp_path, crop_size=16, train=True)
    torch.manual_seed(0)
    seen = {}
    for _ in range(200):
        image = dataset[0]["image"]
        for flips in [(), (-1,), (-2,), (-1, -2)]:
            if torch.equal(image, full.flip(flips) if flips else full):
                seen[flips] = seen.get(flips, 0) + 1
    assert sum(seen.values()) == 200
    assert all(30 <= seen.get(flips, 0) <= 70 for flips in [(), (-1,), (-2,), (-1, -2)])
    crops = ImageFolder(tmp_path, crop_size=8, train=True)
    assert len({crops[0]["image"].sum().item() for _ in range(20)}) > 5


def test_evaluation_crop_is_central(folder: Path) -> None:
    dataset = ImageFolder(folder, crop_size=32)
    full = ImageFolder(folder)[0]["image"]  # a.png, 50 x 40
    torch.testing.assert_close(dataset[0]["image"], full[:, 4:36, 9:41])


def test_kodak_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LICEXP_KODAK", str(tmp_path))
    assert default_kodak_root() == tmp_path
    with pytest.raises(ValueError, match="no images matching 'kodim"):
        Kodak()
    save(np.zeros((8, 8, 3), dtype=np.uint8), tmp_path / "kodim01.png")
    with pytest.raises(ValueError, match="expected 24 Kodak images.*found 1"):
        Kodak()
    monkeypatch.delenv("LICEXP_KODAK")
    monkeypatch.setattr("licexp.data.folder._REPO_ROOT", tmp_path / "repo")
    with pytest.raises(FileNotFoundError, match="data.val.root=.*LICEXP_KODAK"):
        default_kodak_root()
    monkeypatch.undo()
    monkeypatch.delenv("LICEXP_KODAK", raising=False)
    if not SHARED_KODAK.is_dir():
        pytest.skip(f"{SHARED_KODAK} absent")
    kodak = Kodak()
    assert len(kodak) == 24
    assert kodak[0]["name"] == "kodim01"
    assert_rgb_image(kodak[0]["image"], 512, 768)


# --- data module and configs -------------------------------------------------------------------


def test_data_module_batches() -> None:
    module = ImageDataModule(
        DeadLeavesDataset(length=20, size=128), PhotoSamples(["astronaut", "coffee"], 64)
    )
    batches = list(module.train_dataloader())
    assert len(batches) == 2  # 20 items, batch 8, last incomplete batch dropped
    assert batches[0]["image"].shape == (8, 3, 128, 128)
    assert len(batches[0]["name"]) == 8 and batches[0]["name"][0].startswith("dead_leaves_")
    val = next(iter(module.val_dataloader()))
    assert val["image"].shape == (1, 3, 64, 64) and val["name"] == ["astronaut"]
    assert module.eval_dataset is module.val_set
    assert len(list(module.test_dataloader())) == 2
    with pytest.raises(ValueError, match="fewer than batch_size"):
        ImageDataModule(DeadLeavesDataset(length=4), module.val_set).train_dataloader()


def compose_data(option: str, *overrides: str) -> ImageDataModule:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(overrides=[f"+data={option}", "+seed=7", *overrides])
    return hydra.utils.instantiate(cfg.data)


def test_default_config_builds() -> None:
    module = compose_data("default")
    assert isinstance(module.train_set, DeadLeavesDataset) and module.train_set.seed == 7
    assert module.train_set.size % 64 == 0, "training crops must be codable sizes"
    assert module.val_set.crop_size is not None and module.eval_dataset.crop_size is None
    assert module.eval_dataset.names == module.val_set.names


def test_folder_config_builds(folder: Path) -> None:
    module = compose_data("folder", f"data.train.root={folder}", "data.train.crop_size=32")
    assert isinstance(module.train_set, ImageFolder) and module.train_set.train
    assert module.val_set.root == folder and not module.val_set.train
    assert isinstance(module.eval_dataset, PhotoSamples)


@pytest.mark.skipif(
    not SHARED_KODAK.is_dir() and "LICEXP_KODAK" not in os.environ, reason="no Kodak images"
)
def test_kodak_config_builds() -> None:
    module = compose_data("kodak")
    assert isinstance(module.val_set, Kodak) and isinstance(module.eval_dataset, Kodak)
    assert len(module.eval_dataset) == 24


def _photo_folder(tmp_path: Path, count: int = 3, size: tuple[int, int] = (40, 30)) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(count):
        Image.effect_noise(size, 60 + index).convert("RGB").save(folder / f"{index}.png")
    return folder


def test_cached_crops_are_the_uncached_crops_bit_for_bit(tmp_path: Path) -> None:
    folder = _photo_folder(tmp_path)
    tiff = folder / "deep.tif"
    deep = (np.random.default_rng(0).random((30, 40, 3)) * 65535).astype(np.uint16)
    Image.fromarray(deep[..., 0]).save(tiff)  # 16-bit greyscale: kept as float32
    plain = ImageFolder(folder, crop_size=16, train=True)
    cached = ImageFolder(folder, crop_size=16, train=True, cache_mib=16)
    for epoch in range(2):  # the second epoch reads the cache
        for index in range(len(plain)):
            torch.manual_seed(100 * epoch + index)
            expected = plain[index]["image"]
            torch.manual_seed(100 * epoch + index)
            assert torch.equal(cached[index]["image"], expected)
    dtypes = {path.suffix: image.dtype for path, image in cached.decoded.images.items()}
    assert dtypes == {".png": torch.uint8, ".tif": torch.float32}
    assert cached.decoded.used_bytes == 3 * (3 * 40 * 30) + 3 * 40 * 30 * 4


def test_the_cache_keeps_to_its_budget_and_decodes_the_rest_each_time(
    tmp_path: Path, monkeypatch
) -> None:
    import licexp.data.folder as folder_module

    folder = _photo_folder(tmp_path, count=4)
    reads: list[str] = []
    original = folder_module.load_rgb
    monkeypatch.setattr(
        folder_module, "load_rgb", lambda path: reads.append(path.name) or original(path)
    )
    budget_mib = 2.5 * 3 * 40 * 30 / 2**20  # room for two of the four images
    dataset = ImageFolder(folder, crop_size=16, train=True, cache_mib=budget_mib)
    for _ in range(3):
        for index in range(len(dataset)):
            dataset[index]
    assert len(dataset.decoded.images) == 2
    assert dataset.decoded.used_bytes <= budget_mib * 2**20
    assert sorted(reads) == sorted(["0.png", "1.png"] + ["2.png", "3.png"] * 3)


def test_crops_per_image_define_the_epoch_and_stay_uniformly_random(tmp_path: Path) -> None:
    folder = _photo_folder(tmp_path, count=2, size=(10, 10))
    dataset = ImageFolder(folder, crop_size=8, train=True, crops_per_image=5, cache_mib=1)
    assert len(dataset) == 10
    assert [dataset[i]["name"] for i in (0, 4, 5, 9)] == ["0", "0", "1", "1"]
    with pytest.raises(IndexError):
        dataset[10]
    assert len(ImageFolder(folder, crop_size=8, crops_per_image=5)) == 2  # evaluation: once each
    # 3 x 3 crop positions of an 8x8 crop in a 10x10 image, each drawn uniformly.
    full = torch.as_tensor(np.asarray(Image.open(folder / "0.png"))).permute(2, 0, 1).float() / 255
    counts = torch.zeros(3, 3)
    torch.manual_seed(0)
    draws = 4500
    for _ in range(draws):
        crop = dataset[0]["image"]
        for top in range(3):
            for left in range(3):
                window = full[:, top : top + 8, left : left + 8]
                if any(
                    torch.equal(crop, w)
                    for w in (window, window.flip(-1), window.flip(-2), window.flip(-1).flip(-2))
                ):
                    counts[top, left] += 1
                    break
    expected = draws / 9
    assert counts.sum() == draws
    assert ((counts - expected).abs() < 4 * math.sqrt(expected)).all(), counts
