"""Evaluation past bad images: unreadable or uncodable ones are skipped with their error,
the others are evaluated, and ``licexp-eval`` exits with status 1; the pixel-weighted bpp."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from licexp import eval as licexp_eval
from licexp.backbones import MeanScaleHyperprior
from licexp.data import ImageFolder
from licexp.evaluation.evaluate import EvaluationError, evaluate_codec, mean_row, read_images
from licexp.evaluation.results import load_curve
from licexp.quant import StraightThroughQuantization

CONFIG = {
    "backbone": {"_target_": "licexp.backbones.MeanScaleHyperprior", "N": 16, "M": 24},
    "quant": {"_target_": "licexp.quant.StraightThroughQuantization"},
    "lmbda": 0.0067,
    "run_name": "small",
}


def small_codec() -> MeanScaleHyperprior:
    return MeanScaleHyperprior(16, 24, StraightThroughQuantization()).eval()


def png_bytes(width: int, height: int) -> bytes:
    pixels = (torch.rand(height, width, 3) * 255).byte().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_folder(folder: Path) -> Path:
    """Two good 64x64 PNGs, ``a`` and ``b``, beside an empty file, a text file and a PNG
    cut in half, all named ``.png``."""
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.png").write_bytes(png_bytes(64, 64))
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image\n")
    whole = png_bytes(64, 64)
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    return folder


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as file:
        return {row["name"]: row for row in csv.DictReader(file)}


@pytest.mark.slow
def test_eval_skips_unreadable_images_writes_the_rest_and_exits_1(
    tmp_path, monkeypatch, capfd
) -> None:
    checkpoint = tmp_path / "last.ckpt"
    state = small_codec().state_dict()
    torch.save(
        {"state_dict": {f"codec.{k}": v for k, v in state.items()}, "licexp_config": CONFIG},
        checkpoint,
    )
    folder, out = image_folder(tmp_path / "images"), tmp_path / "eval"
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)
    argv = ["licexp-eval", f"ckpt_path={checkpoint}", f"images={folder}", "anchors=[]"]
    monkeypatch.setattr(sys, "argv", [*argv, f"hydra.run.dir={out}"])
    with pytest.raises(SystemExit) as stop:
        licexp_eval.main()

    captured = capfd.readouterr()
    assert stop.value.code == 1, captured.err
    assert (
        "licexp-eval: error: 3 of 5 images could not be read or coded and were skipped"
        in captured.err
    )
    assert "Traceback" not in captured.err
    assert "3 of 5 images skipped" in captured.out + captured.err  # the closing warning
    rows = read_csv(out / "per_image.csv")
    assert list(rows) == ["a", "b", "empty", "notes", "truncated"]
    for name in ("a", "b"):
        assert rows[name]["error"] == "" and float(rows[name]["bpp"]) > 0
        assert (out / "bitstreams" / f"{name}.lic").is_file()
    for name in ("empty", "notes", "truncated"):
        assert rows[name]["error"].startswith(f"cannot read image {folder / name}.png: ")
        assert rows[name]["bpp"] == rows[name]["psnr"] == ""
    assert "truncated" in rows["truncated"]["error"]
    results = json.loads((out / "results.json").read_text())
    assert [entry["name"] for entry in results["skipped"]] == ["empty", "notes", "truncated"]
    assert results["skipped"][0]["error"] == rows["empty"]["error"]
    bits = 8 * sum(int(rows[name]["bytes"]) for name in ("a", "b"))
    assert results["bpp_pixel_weighted"] == pytest.approx(bits / (2 * 64 * 64))
    curve = load_curve(out / "results.json")
    assert curve.bpp == [pytest.approx((float(rows["a"]["bpp"]) + float(rows["b"]["bpp"])) / 2)]
    assert curve.metadata["skipped"] == results["skipped"]
    assert (out / "rd.png").is_file()


def test_unreadable_images_are_named_as_the_folder_names_images_with_their_error(
    tmp_path,
) -> None:
    folder = image_folder(tmp_path / "images")
    images, unreadable = read_images(ImageFolder(folder))
    assert [name for name, _ in images] == ["a", "b"]
    assert [row["name"] for row in unreadable.values()] == ["empty", "notes", "truncated"]
    assert list(unreadable) == [2, 3, 4]
    assert unreadable[4]["error"] == (
        f"cannot read image {folder / 'truncated.png'}: OSError: image file is truncated"
    )


def test_an_evaluation_that_codes_no_image_fails_after_writing_the_errors(tmp_path) -> None:
    dataset = [{"name": "flat", "image": torch.rand(3, 0, 8)}]
    with pytest.raises(EvaluationError, match="none of the 1 images could be read and coded"):
        evaluate_codec(small_codec(), dataset, tmp_path, name="toy", anchors=[])
    rows = read_csv(tmp_path / "per_image.csv")
    assert rows["flat"]["error"] == "cannot code an empty image of size 0x8"
    assert not (tmp_path / "results.json").exists()


def test_pixel_weighted_bpp_is_all_bits_over_all_pixels_beside_the_per_image_mean() -> None:
    def row(name: str, size: int, length: int) -> dict[str, object]:
        bpp = 8 * length / size**2
        return {
            "name": name,
            "height": size,
            "width": size,
            "bytes": length,
            "bpp": bpp,
            "bpp_file": 8 * (length + 100) / size**2,
            "estimated_bpp": bpp,
            "psnr": 30.0,
            "ms_ssim": None,
            "encoding_time": 0.1,
            "decoding_time": 0.1,
            "decode_error": 0.0,
        }

    rows = [row("dot", 1, 14), row("photo", 64, 512), {"name": "bad", "error": "unreadable"}]
    mean = mean_row(rows)
    assert mean["bpp"] == (112 + 1) / 2
    assert mean["bpp_pixel_weighted"] == 8 * (14 + 512) / (1 + 64 * 64)
