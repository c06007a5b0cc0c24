"""Evaluation of a trained codec on real bitstreams, beside classical anchors.

For every image: pad, rANS-encode, write the container, decode it, check the decoded
latent against the encoder's (the hard-quantised forward pass's), and measure bpp from the
bytes, PSNR-RGB and
MS-SSIM. Results go to ``out_dir`` as CompressAI ``eval_model`` JSON, a per-image CSV, the
bitstreams, reconstructions and an RD figure (``rd.png``); Pillow's JPEG, WebP and JPEG
2000 are measured live on the same images and compared at equal rate.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.console import Console
from rich.progress import track
from torch.utils.data import Dataset

from licexp.backbones import LearnedCodec
from licexp.evaluation.anchors import anchor_curve
from licexp.evaluation.bitstream import identity_of
from licexp.evaluation.codec import code_image
from licexp.evaluation.metrics import ms_ssim_if_measurable, psnr
from licexp.evaluation.plots import plot_rd
from licexp.evaluation.results import (
    RDCurve,
    interpolate_bpp_at_psnr,
    interpolate_psnr_at_bpp,
    print_results_table,
    save_curve,
    write_per_image_csv,
)

log = logging.getLogger(__name__)

CURVE_METRICS = ("bpp", "psnr", "ms_ssim", "encoding_time", "decoding_time")
METRICS = ("bpp", "estimated_bpp", "psnr", "ms_ssim", "encoding_time", "decoding_time")


def save_png(image: torch.Tensor, path: Path) -> None:
    """Writes ``[3, H, W]`` in ``[0, 1]`` as an 8-bit RGB PNG."""
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)


def evaluate_images(
    codec: LearnedCodec,
    images: Sequence[tuple[str, torch.Tensor]],
    out_dir: Path,
    reconstructions: int = 1,
    run: str = "",
    padding: str = "replicate",
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Codes every image for real; writes bitstreams and reconstructions; returns the rows.

    The containers record ``run`` (the run name) with the model's fingerprint; ``padding``
    is how images are padded to the codec's multiple (``licexp.evaluation.bitstream.PADDINGS``).
    A progress bar on ``console`` counts the images (shown on a terminal only).
    """
    codec.prepare_for_coding()
    identity = identity_of(codec, run)
    (out_dir / "bitstreams").mkdir(parents=True, exist_ok=True)
    rows = []
    progress = track(
        images, description="Coding images", total=len(images), transient=True, console=console
    )
    for index, (name, image) in enumerate(progress):
        coding = code_image(codec, image, identity, padding)
        (out_dir / "bitstreams" / f"{name}.lic").write_bytes(coding.container)
        if index < reconstructions:
            save_png(coding.x_hat, out_dir / f"reconstruction_{name}.png")
        if coding.decode_error != 0:
            log.error(
                "DECODE MISMATCH on %s: the decoded latent differs from the encoder's by up "
                "to %.3g; encoder and decoder are out of sync",
                name,
                coding.decode_error,
            )
        row = {
            "name": name,
            "height": image.shape[-2],
            "width": image.shape[-1],
            "bytes": len(coding.container),
            "bpp": coding.bpp,
            "estimated_bpp": coding.estimated_bpp,
            "psnr": psnr(image, coding.x_hat),
            "ms_ssim": ms_ssim_if_measurable(image, coding.x_hat),
            "encoding_time": coding.encoding_time,
            "decoding_time": coding.decoding_time,
            "decode_error": coding.decode_error,
        }
        if row["ms_ssim"] is None:  # the other metrics still hold
            row["note"] = (
                f"MS-SSIM not measured: {image.shape[-2]}x{image.shape[-1]} is too small "
                "(it needs sides of at least 21 px)"
            )
            log.warning("%s: %s", name, row["note"])
        rows.append(row)
    return rows


def mean_row(rows: Sequence[dict[str, Any]], name: str = "mean") -> dict[str, Any]:
    """Per-image metrics averaged (CompressAI's ``eval_model`` averages per image).

    A metric an image lacks (MS-SSIM of an image too small for it) is averaged over the
    images that have it, and is ``None`` when none has.
    """
    mean = {}
    for key in METRICS:
        values = [row[key] for row in rows if row[key] is not None]
        mean[key] = statistics.fmean(values) if values else None
    mean["decode_error"] = max(row["decode_error"] for row in rows)
    return {"name": name, **mean}


COMPARISON_COLUMNS = (
    "anchor",
    "anchor_psnr_at_model_bpp",
    "model_gain_db",
    "anchor_bpp_at_model_psnr",
    "model_rate_saving_pct",
)


def compare_with_anchor(model: dict[str, Any], anchor: RDCurve) -> dict[str, Any]:
    """The anchor's PSNR at the model's rate and the rate it needs for the model's PSNR.

    ``None`` where the model's point lies outside the anchor curve's range, or where the
    curve has fewer than two finite points (lossless anchors of tiny images: PSNR inf).
    """
    try:
        anchor_psnr = interpolate_psnr_at_bpp(anchor, model["bpp"])
        anchor_bpp = interpolate_bpp_at_psnr(anchor, model["psnr"])
    except ValueError as error:
        log.warning("no comparison with %s: %s", anchor.name, error)
        anchor_psnr = anchor_bpp = None
    return {
        "anchor": anchor.name,
        "anchor_psnr_at_model_bpp": anchor_psnr,
        "model_gain_db": None if anchor_psnr is None else model["psnr"] - anchor_psnr,
        "anchor_bpp_at_model_psnr": anchor_bpp,
        "model_rate_saving_pct": (
            None if anchor_bpp is None else 100 * (1 - model["bpp"] / anchor_bpp)
        ),
    }


def evaluate_codec(
    codec: LearnedCodec,
    dataset: Dataset,
    out_dir: str | Path,
    name: str,
    anchors: Sequence[str] = ("jpeg", "webp", "jpeg2000"),
    reconstructions: int = 1,
    console: Console | None = None,
    padding: str = "replicate",
) -> dict[str, float]:
    """Evaluates ``codec`` on every image of ``dataset``; returns the mean metrics."""
    out_dir = Path(out_dir)
    console = console or Console(width=None if Console().is_terminal else 160)
    images = [(item["name"], item["image"]) for item in (dataset[i] for i in range(len(dataset)))]
    rows = evaluate_images(
        codec, images, out_dir, reconstructions, run=name, padding=padding, console=console
    )
    mean = mean_row(rows)
    write_per_image_csv(rows, out_dir / "per_image.csv")
    model_curve = RDCurve(
        name=name,
        description=f"licexp real-bitstream evaluation on {len(rows)} images",
        **{key: [mean[key]] for key in CURVE_METRICS if mean[key] is not None},
        extra={"estimated_bpp": [mean["estimated_bpp"]]},
    )
    save_curve(model_curve, out_dir / "results.json")
    print_results_table(
        [*rows, mean],
        ["name", *METRICS, "decode_error", *(["note"] if any("note" in r for r in rows) else [])],
        f"{name}: real bitstreams",
        console=console,
    )

    comparisons, anchor_curves = [], []
    for codec_name in anchors:
        log.info("Measuring %s on the same %d images", codec_name, len(images))
        anchor = anchor_curve(images, codec_name)
        save_curve(anchor.curve, out_dir / f"anchor_{codec_name}.json")
        write_per_image_csv(anchor.rows, out_dir / f"anchor_{codec_name}_per_image.csv")
        comparisons.append(compare_with_anchor(mean, anchor.curve))
        anchor_curves.append(anchor.curve)
    plot_rd(
        [model_curve, *anchor_curves], out_dir / "rd.png", f"{len(rows)} images, real bitstreams"
    )
    if comparisons:
        print_results_table(
            comparisons,
            COMPARISON_COLUMNS,
            f"{name} against classical codecs at equal rate / equal PSNR (mean curves; "
            "blank: the model's point lies outside the anchor's range)",
            console=console,
        )
    summary = {key: float(mean[key]) for key in (*METRICS, "decode_error") if mean[key] is not None}
    for comparison in comparisons:
        gain = comparison["model_gain_db"]
        if gain is not None:
            summary[f"psnr_gain_vs_{comparison['anchor']}"] = float(gain)
    return summary
