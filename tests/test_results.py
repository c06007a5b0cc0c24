"""Tests for licexp.evaluation.results."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from licexp.evaluation.results import (
    RDCurve,
    format_results_table,
    interpolate_bpp_at_psnr,
    interpolate_psnr_at_bpp,
    load_curve,
    print_results_table,
    save_curve,
    write_per_image_csv,
)

ANCHOR_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "anchors" / "kodak"
ANCHOR_FILES = sorted(ANCHOR_DIR.rglob("*.json")) if ANCHOR_DIR.is_dir() else []


def _log_linear_curve() -> RDCurve:
    """PSNR exactly linear in log(bpp): psnr = 30 + 4 * ln(bpp)."""
    bpps = [0.1, 0.25, 0.5, 1.0, 2.0]
    return RDCurve(name="loglin", bpp=bpps, psnr=[30 + 4 * math.log(b) for b in bpps])


def test_round_trip(tmp_path: Path) -> None:
    curve = RDCurve(
        name="model",
        description="test model",
        bpp=[0.2, 0.5],
        psnr=[28.0, 31.5],
        ms_ssim=[0.95, 0.98],
        encoding_time=[0.1, 0.2],
        decoding_time=[0.05, 0.06],
        extra={"estimated_bpp": [0.19, 0.48], "lmbda": [0.0018, 0.0067]},
        metadata={"meta": {"dataset": "kodak"}},
    )
    path = tmp_path / "sub" / "model.json"
    save_curve(curve, path)
    assert load_curve(path) == curve
    written = json.loads(path.read_text())
    assert list(written) == ["name", "description", "meta", "results"]
    assert written["results"]["psnr-rgb"] == [28.0, 31.5]
    assert written["results"]["ms-ssim-rgb"] == [0.95, 0.98]
    assert written["results"]["estimated_bpp"] == [0.19, 0.48]


def test_missing_metrics_are_omitted_not_empty(tmp_path: Path) -> None:
    data = {
        "name": "paper",
        "description": "",
        "results": {"bpp": [0.1, 0.2], "psnr-rgb": [27, 29]},
    }
    curve = RDCurve.from_json_dict(data)
    assert curve.ms_ssim == [] and curve.encoding_time == [] and len(curve) == 2
    assert curve.to_json_dict() == data


def test_inconsistent_lengths_rejected() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        RDCurve(name="bad", bpp=[0.1, 0.2], psnr=[30.0])
    with pytest.raises(ValueError, match="clash"):
        RDCurve(name="bad", bpp=[0.1], extra={"psnr-rgb": [30.0]})
    with pytest.raises(ValueError, match="results"):
        RDCurve.from_json_dict({"name": "x"})


def test_load_name_defaults_to_stem(tmp_path: Path) -> None:
    path = tmp_path / "nameless.json"
    path.write_text(json.dumps({"results": {"bpp": [1.0], "psnr-rgb": [30.0]}}))
    assert load_curve(path).name == "nameless"


@pytest.mark.skipif(not ANCHOR_FILES, reason=f"no anchor files under {ANCHOR_DIR}")
@pytest.mark.parametrize("path", ANCHOR_FILES, ids=lambda p: p.name)
def test_load_real_anchor_files(path: Path, tmp_path: Path) -> None:
    original = json.loads(path.read_text())
    curve = load_curve(path)
    assert curve.name == original["name"]
    assert len(curve) == len(original["results"]["bpp"]) > 0
    assert curve.bpp == original["results"]["bpp"]
    assert curve.psnr == original["results"].get("psnr-rgb", [])
    assert curve.ms_ssim == original["results"].get("ms-ssim-rgb", [])
    assert curve.psnr or "ms-ssim-db-rgb" in curve.extra
    # Written back unchanged.
    assert curve.to_json_dict() == original
    save_curve(curve, tmp_path / path.name)
    assert load_curve(tmp_path / path.name) == curve


@pytest.mark.skipif(not ANCHOR_FILES, reason=f"no anchor files under {ANCHOR_DIR}")
def test_interpolation_on_real_jpeg_anchor() -> None:
    jpeg = load_curve(ANCHOR_DIR / "jpeg.json")
    assert interpolate_psnr_at_bpp(jpeg, jpeg.bpp[3]) == pytest.approx(jpeg.psnr[3])
    bpp = interpolate_bpp_at_psnr(jpeg, 30.0)
    assert bpp is not None and jpeg.bpp[0] < bpp < jpeg.bpp[-1]
    # PCHIP in the two directions is not an exact inverse, but close.
    assert interpolate_psnr_at_bpp(jpeg, bpp) == pytest.approx(30.0, abs=0.01)


def test_interpolation_exact_on_log_linear_curve() -> None:
    curve = _log_linear_curve()
    for bpp in (0.1, 0.13, 0.3, 0.77, 1.0, 1.9, 2.0):
        assert interpolate_psnr_at_bpp(curve, bpp) == pytest.approx(30 + 4 * math.log(bpp))
    for target in (21.0, 27.5, 30.0, 32.0):
        assert interpolate_bpp_at_psnr(curve, target) == pytest.approx(math.exp((target - 30) / 4))


def test_interpolation_order_independent_and_out_of_range() -> None:
    curve = _log_linear_curve()
    shuffled = RDCurve(name="s", bpp=curve.bpp[::-1], psnr=curve.psnr[::-1])
    assert interpolate_psnr_at_bpp(shuffled, 0.4) == pytest.approx(30 + 4 * math.log(0.4))
    assert interpolate_psnr_at_bpp(curve, 0.09) is None
    assert interpolate_psnr_at_bpp(curve, 2.01) is None
    assert interpolate_psnr_at_bpp(curve, 0.0) is None
    assert interpolate_bpp_at_psnr(curve, 10.0) is None
    assert interpolate_bpp_at_psnr(curve, 40.0) is None


def test_interpolation_errors() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        interpolate_psnr_at_bpp(RDCurve(name="one", bpp=[1.0], psnr=[30.0]), 1.0)
    with pytest.raises(ValueError, match="no PSNR"):
        interpolate_psnr_at_bpp(RDCurve(name="nopsnr", bpp=[1.0, 2.0]), 1.5)
    non_monotone = RDCurve(name="nm", bpp=[0.5, 1.0, 2.0], psnr=[30.0, 32.0, 30.0])
    with pytest.raises(ValueError, match="repeated"):
        interpolate_bpp_at_psnr(non_monotone, 31.0)


def test_per_image_csv(tmp_path: Path) -> None:
    rows = [
        {"name": "a", "bpp": 0.5, "psnr": 30.25},
        {"name": "b", "psnr": 31.0, "ms_ssim": 0.97},
    ]
    path = tmp_path / "out" / "per_image.csv"
    write_per_image_csv(rows, path)
    with path.open(newline="") as handle:
        read = list(csv.reader(handle))
    assert read[0] == ["name", "bpp", "psnr", "ms_ssim"]
    assert read[1] == ["a", "0.5", "30.25", ""]
    assert read[2] == ["b", "", "31.0", "0.97"]


def test_results_table() -> None:
    rows = [
        {"name": "kodim01", "bpp": 0.123456, "psnr": 30.0, "extra": 1},
        {"name": "kodim02", "bpp": 0.5, "psnr": math.inf},
    ]
    table = format_results_table(rows, ["name", "bpp", "psnr"], title="Per image")
    assert table.title == "Per image"
    assert [c.header for c in table.columns] == ["name", "bpp", "psnr"]
    assert table.row_count == 2
    assert [c.justify for c in table.columns] == ["left", "right", "right"]

    buffer = io.StringIO()
    print_results_table(rows, ["name", "bpp", "psnr"], "Per image", console=Console(file=buffer))
    text = buffer.getvalue()
    assert "Per image" in text and "kodim02" in text
    assert "0.1235" in text and "30.0000" in text and "inf" in text
    assert "extra" not in text
