"""Tests for licexp.evaluation.anchors (Pillow codecs measured live)."""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import PIL
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from licexp.evaluation import anchors
from licexp.evaluation.anchors import (
    ANCHOR_CODECS,
    DEFAULT_QUALITIES,
    anchor_curve,
    encode_decode,
    quantize_8bit,
)
from licexp.evaluation.evaluate import COMPARISON_COLUMNS, compare_with_anchor
from licexp.evaluation.metrics import psnr
from licexp.evaluation.results import RDCurve

MAGIC = {
    "jpeg": b"\xff\xd8\xff",
    "webp": b"RIFF",
    "jpeg2000": b"\xff\x4f\xff\x51",  # J2K codestream: SOC + SIZ markers
}


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    """A 128x128 crop of a real photograph as float [3, H, W] in [0, 1]."""
    crop = skdata.astronaut()[100:228, 180:308]
    return torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 255.0


@pytest.fixture(scope="module")
def curves(astronaut: torch.Tensor) -> dict[str, anchors.AnchorResult]:
    images = [("astronaut", astronaut), ("astronaut-flipped", astronaut.flip(-1))]
    return {codec: anchor_curve(images, codec) for codec in ANCHOR_CODECS}


@pytest.mark.parametrize("codec", ANCHOR_CODECS)
def test_encode_decode_bitstream(astronaut: torch.Tensor, codec: str) -> None:
    quality = DEFAULT_QUALITIES[codec][4]
    coded = encode_decode(astronaut, codec, quality)
    assert coded.num_bytes == len(coded.data) > 0
    assert coded.data.startswith(MAGIC[codec])
    assert coded.x_hat.shape == astronaut.shape
    assert coded.x_hat.dtype == torch.float32
    assert coded.x_hat.min() >= 0.0 and coded.x_hat.max() <= 1.0
    assert coded.encoding_time > 0 and coded.decoding_time > 0
    # The bitstream decodes independently to the same reconstruction.
    decoded = np.asarray(Image.open(io.BytesIO(coded.data)).convert("RGB"))
    assert torch.equal(
        torch.from_numpy(decoded.copy()).permute(2, 0, 1),
        torch.round(coded.x_hat * 255).to(torch.uint8),
    )
    assert 20.0 < psnr(astronaut, coded.x_hat) < 60.0


def test_jpeg_high_quality(astronaut: torch.Tensor) -> None:
    coded = encode_decode(astronaut[None], "jpeg", 95)
    assert coded.x_hat.shape == astronaut.shape
    assert psnr(astronaut, coded.x_hat) > 30.0


def test_jpeg_subsampling_parameter(astronaut: torch.Tensor) -> None:
    full = encode_decode(astronaut, "jpeg", 75, subsampling="4:4:4")
    sub = encode_decode(astronaut, "jpeg", 75)  # 4:2:0
    assert full.num_bytes > sub.num_bytes
    assert psnr(astronaut, full.x_hat) > psnr(astronaut, sub.x_hat)


def test_jpeg2000_rate_follows_ratio(astronaut: torch.Tensor) -> None:
    coded = encode_decode(astronaut, "jpeg2000", 16)
    bpp = 8 * coded.num_bytes / (128 * 128)
    assert bpp == pytest.approx(24 / 16, rel=0.1)


@pytest.mark.parametrize("codec", ANCHOR_CODECS)
def test_anchor_curve_monotone(curves: dict[str, anchors.AnchorResult], codec: str) -> None:
    curve = curves[codec].curve
    qualities = list(DEFAULT_QUALITIES[codec])
    assert len(curve.bpp) == len(qualities)
    assert curve.bpp == sorted(curve.bpp)
    # Better quality = higher quality factor (JPEG, WebP) or lower ratio (JPEG 2000).
    expected_order = sorted(qualities, reverse=codec == "jpeg2000")
    assert curve.extra["quality"] == expected_order
    assert all(a < b for a, b in zip(curve.bpp, curve.bpp[1:], strict=False))
    assert all(a < b for a, b in zip(curve.psnr, curve.psnr[1:], strict=False))
    assert curve.ms_ssim[0] < curve.ms_ssim[-1] <= 1.0
    # The per-image rows are monotone as well.
    for name in ("astronaut", "astronaut-flipped"):
        rows = {r["quality"]: r for r in curves[codec].rows if r["name"] == name}
        bpps = [rows[q]["bpp"] for q in expected_order]
        psnrs = [rows[q]["psnr"] for q in expected_order]
        assert all(a < b for a, b in zip(bpps, bpps[1:], strict=False))
        assert all(a < b for a, b in zip(psnrs, psnrs[1:], strict=False))


@pytest.mark.parametrize("codec", ANCHOR_CODECS)
def test_anchor_curve_schema_and_means(curves: dict[str, anchors.AnchorResult], codec: str) -> None:
    result = curves[codec]
    n = len(DEFAULT_QUALITIES[codec])
    assert len(result.rows) == 2 * n
    assert set(result.rows[0]) == {
        "name", "codec", "quality", "bpp", "psnr", "ms_ssim", "encoding_time", "decoding_time",
    }  # fmt: skip
    as_json = result.to_json_dict()
    assert as_json["name"] == f"pillow-{codec}"
    assert PIL.__version__ in as_json["description"]
    for key in ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time"):
        assert len(as_json["results"][key]) == n
    # Each point is the mean over the two images at that quality.
    for i, quality in enumerate(result.curve.extra["quality"]):
        rows = [r for r in result.rows if r["quality"] == quality]
        assert result.curve.psnr[i] == pytest.approx(np.mean([r["psnr"] for r in rows]))
        assert result.curve.bpp[i] == pytest.approx(np.mean([r["bpp"] for r in rows]))


def test_anchor_measured_against_8bit_original() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 48, 48, generator=generator)  # not on the 8-bit grid
    result = anchor_curve([("noise", image)], "jpeg", [50])
    coded = encode_decode(image, "jpeg", 50)
    assert result.rows[0]["psnr"] == pytest.approx(psnr(quantize_8bit(image), coded.x_hat))
    assert result.rows[0]["bpp"] == pytest.approx(8 * coded.num_bytes / (48 * 48))
    assert torch.equal(quantize_8bit(quantize_8bit(image)), quantize_8bit(image))


def test_unknown_codec_and_bad_quality(astronaut: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="jpeg2000"):
        encode_decode(astronaut, "bpg", 30)
    with pytest.raises(ValueError, match="webp"):
        anchor_curve([("a", astronaut)], "avif")
    with pytest.raises(ValueError):
        encode_decode(astronaut, "jpeg", 150)
    with pytest.raises(ValueError):
        encode_decode(astronaut, "jpeg2000", 0.5)


def test_missing_pillow_feature(monkeypatch: pytest.MonkeyPatch, astronaut: torch.Tensor) -> None:
    monkeypatch.setattr(anchors.features, "check", lambda feature: feature != "jpg_2000")
    with pytest.raises(RuntimeError, match="jpeg2000"):
        encode_decode(astronaut, "jpeg2000", 16)


def three_db_per_doubling() -> RDCurve:
    """An anchor gaining 3 dB per doubling of the rate: PSNR = 31 + 3 log2(bpp / 0.5)."""
    return RDCurve(name="pillow-toy", bpp=[1.0, 0.25, 0.5], psnr=[34.0, 28.0, 31.0])


def test_comparison_with_an_anchor_between_its_points_is_read_off_the_log_rate_line() -> None:
    """The model at (2^-1/2 bpp, 34 dB): the anchor reaches 31 + 3 * 1/2 = 32.5 dB at that
    rate (1.5 dB less) and needs 1 bpp for 34 dB (the model saves 1 - 2^-1/2 of it)."""
    bpp = 2**-0.5
    comparison = compare_with_anchor({"bpp": bpp, "psnr": 34.0}, three_db_per_doubling())
    assert set(comparison) == set(COMPARISON_COLUMNS)
    assert comparison["anchor"] == "pillow-toy"
    assert comparison["anchor_psnr_at_model_bpp"] == pytest.approx(32.5)
    assert comparison["model_gain_db"] == pytest.approx(1.5)
    assert comparison["anchor_bpp_at_model_psnr"] == pytest.approx(1.0)
    assert comparison["model_rate_saving_pct"] == pytest.approx(100 * (1 - bpp))


def test_a_model_worse_than_the_anchor_has_a_negative_gain_and_saving() -> None:
    """(0.5 bpp, 29.5 dB): the anchor has 31 dB at 0.5 bpp and reaches 29.5 dB at
    0.5 * 2^-1/2 bpp, so the model spends 2^1/2 times its rate."""
    comparison = compare_with_anchor({"bpp": 0.5, "psnr": 29.5}, three_db_per_doubling())
    assert comparison["model_gain_db"] == pytest.approx(-1.5)
    assert comparison["anchor_bpp_at_model_psnr"] == pytest.approx(0.5 * 2**-0.5)
    assert comparison["model_rate_saving_pct"] == pytest.approx(100 * (1 - 2**0.5))


def test_a_model_outside_the_anchors_range_is_compared_where_it_can_be() -> None:
    # 2 bpp is past the anchor's last point; 33 dB lies within its PSNR range.
    beyond_rate = compare_with_anchor({"bpp": 2.0, "psnr": 33.0}, three_db_per_doubling())
    assert beyond_rate["anchor_psnr_at_model_bpp"] is None and beyond_rate["model_gain_db"] is None
    assert beyond_rate["anchor_bpp_at_model_psnr"] == pytest.approx(0.5 * 2 ** (2 / 3))
    assert beyond_rate["model_rate_saving_pct"] == pytest.approx(100 * (1 - 2 / 2 ** (-1 / 3)))
    # 36 dB is above the anchor's best PSNR; 0.25 bpp is its first point.
    beyond_psnr = compare_with_anchor({"bpp": 0.25, "psnr": 36.0}, three_db_per_doubling())
    assert beyond_psnr["model_gain_db"] == pytest.approx(8.0)
    assert beyond_psnr["anchor_bpp_at_model_psnr"] is None
    assert beyond_psnr["model_rate_saving_pct"] is None


def test_an_anchor_with_one_finite_point_gives_no_comparison_and_a_warning(caplog) -> None:
    lossless = RDCurve(name="pillow-png", bpp=[0.5, 1.0], psnr=[30.0, math.inf])
    with caplog.at_level(logging.WARNING, logger="licexp.evaluation.evaluate"):
        comparison = compare_with_anchor({"bpp": 0.7, "psnr": 31.0}, lossless)
    assert comparison == {
        "anchor": "pillow-png",
        "anchor_psnr_at_model_bpp": None,
        "model_gain_db": None,
        "anchor_bpp_at_model_psnr": None,
        "model_rate_saving_pct": None,
    }
    assert "no comparison with pillow-png" in caplog.text
