"""Evaluation of a trained codec on real bitstreams, beside classical anchors.

For every image: pad, rANS-encode, write the container, decode it, check the decoded
latent against the encoder's (the hard-quantised forward pass's), and measure PSNR-RGB,
MS-SSIM and the rate from the bytes: ``bpp`` counts the latents' strings, as CompressAI's
``eval_model`` and the published anchors do, ``bpp_file`` the whole file, header included.
Results go to ``out_dir`` as CompressAI ``eval_model`` JSON, a per-image CSV, the
bitstreams, reconstructions and an RD figure (``rd.png``); classical anchors (Pillow's JPEG,
WebP and JPEG 2000 on the same images, measured once per image set and cached, or
CompressAI's published Kodak results) are compared at equal rate. An image that cannot be
read or coded is skipped: its row holds the error, the results cover the other images.
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
from licexp.data.images import ImageReadError
from licexp.evaluation.anchor_sources import evaluation_anchors
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
METRICS = ("bpp", "bpp_file", "estimated_bpp", "psnr", "ms_ssim", "encoding_time", "decoding_time")


class EvaluationError(ValueError):
    """Images of an evaluation could not be read or coded; the message says how many."""


def one_line(error: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(str(error).split())


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
    A progress bar on ``console`` counts the images (shown on a terminal only). An image
    the codec cannot code (a ``ValueError`` from :func:`code_image`: a size the container
    cannot hold, a :class:`~licexp.evaluation.bitstream.BitstreamError`) gets a row of its
    name and the ``error`` instead of metrics.
    """
    codec.prepare_for_coding()
    identity = identity_of(codec, run)
    (out_dir / "bitstreams").mkdir(parents=True, exist_ok=True)
    rows = []
    progress = track(
        images, description="Coding images", total=len(images), transient=True, console=console
    )
    for index, (name, image) in enumerate(progress):
        try:
            coding = code_image(codec, image, identity, padding)
        except ValueError as error:
            rows.append({"name": name, "error": one_line(error)})
            continue
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
            "bytes": coding.string_bytes,
            "file_bytes": len(coding.container),
            "bpp": coding.bpp,
            "bpp_file": coding.bpp_file,
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
    """Per-image metrics averaged (CompressAI's ``eval_model`` averages per image), and
    ``bpp_pixel_weighted``: the strings' bits of all images over their pixels (as the Kodak
    literature reports rates).

    Rows with an ``error`` are left out. A metric an image lacks (MS-SSIM of an image too
    small for it) is averaged over the images that have it, and is ``None`` when none has.

    Raises:
        ValueError: no row without an error.
    """
    coded = [row for row in rows if "error" not in row]
    if not coded:
        raise ValueError("no coded image to average")
    mean = {}
    for key in METRICS:
        values = [row[key] for row in coded if row[key] is not None]
        mean[key] = statistics.fmean(values) if values else None
    mean["decode_error"] = max(row["decode_error"] for row in coded)
    pixels = sum(row["height"] * row["width"] for row in coded)
    mean["bpp_pixel_weighted"] = 8 * sum(row["bytes"] for row in coded) / pixels
    return {"name": name, **mean}


def read_images(
    dataset: Dataset,
) -> tuple[list[tuple[str, torch.Tensor]], dict[int, dict[str, str]]]:
    """The ``(name, image)`` pairs of ``dataset``'s readable images, and a row of name and
    ``error`` for each image that raises :class:`~licexp.data.images.ImageReadError`, keyed
    by its index; the name is its path under ``dataset.root`` without the extension, as
    :class:`~licexp.data.ImageFolder` names images."""
    root = getattr(dataset, "root", None)
    images, unreadable = [], {}
    for index in range(len(dataset)):
        try:
            item = dataset[index]
        except ImageReadError as error:
            path = error.path
            if root is not None and path.is_relative_to(root):
                path = path.relative_to(root)
            unreadable[index] = {"name": path.with_suffix("").as_posix(), "error": one_line(error)}
            continue
        images.append((item["name"], item["image"]))
    return images, unreadable


def log_skipped(skipped: Sequence[dict[str, Any]], total: int) -> None:
    """Warns of the images left out of an evaluation, one line each with its error."""
    listed = "".join(f"\n  {row['name']}: {row['error']}" for row in skipped)
    log.warning(
        "%d of %d images skipped (not read or not coded; left out of every result):%s",
        len(skipped),
        total,
        listed,
    )


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
    anchors_source: str = "live",
    anchors_cache: str | Path | None = None,
    published_anchors: str | Path | None = None,
) -> dict[str, float]:
    """Evaluates ``codec`` on every image of ``dataset``; returns the mean metrics.

    An image that cannot be read or coded is skipped: ``per_image.csv`` gives it a row with
    the ``error``, ``results.json`` lists it under ``skipped``, a warning names it at the
    end, and ``images_skipped`` in the returned metrics counts it; the other results cover
    the coded images only. ``results.json`` also holds ``bpp_pixel_weighted`` (see
    :func:`mean_row`).

    The ``anchors`` come from ``anchors_source`` (``live`` or ``published``), live ones
    cached in ``anchors_cache`` (``None``: not cached), published ones read from
    ``published_anchors`` (:func:`~licexp.evaluation.anchor_sources.evaluation_anchors`).

    Raises:
        EvaluationError: no image could be read and coded (``per_image.csv`` is written).
    """
    out_dir = Path(out_dir)
    console = console or Console(width=None if Console().is_terminal else 160)
    images, unreadable = read_images(dataset)
    image_rows = evaluate_images(
        codec, images, out_dir, reconstructions, run=name, padding=padding, console=console
    )
    coded_rows = iter(image_rows)
    rows = [unreadable.get(index) or next(coded_rows) for index in range(len(dataset))]
    coded = [row for row in rows if "error" not in row]
    skipped = [row for row in rows if "error" in row]
    columns = dict.fromkeys(key for row in [*coded, *skipped] for key in row)
    write_per_image_csv(rows, out_dir / "per_image.csv", columns)
    if not coded:
        log_skipped(skipped, len(rows))
        raise EvaluationError(
            f"none of the {len(rows)} images could be read and coded (per_image.csv has the errors)"
        )
    coded_images = [
        pair for pair, row in zip(images, image_rows, strict=True) if "error" not in row
    ]
    mean = mean_row(coded)
    model_curve = RDCurve(
        name=name,
        description=f"licexp real-bitstream evaluation on {len(coded)} images",
        **{key: [mean[key]] for key in CURVE_METRICS if mean[key] is not None},
        extra={key: [mean[key]] for key in ("bpp_file", "estimated_bpp")},
        metadata={
            "bpp_pixel_weighted": mean["bpp_pixel_weighted"],
            "skipped": skipped,  # rows of name and error
        },
    )
    save_curve(model_curve, out_dir / "results.json")
    pixel_weighted = {"name": "mean (pixel-weighted)", "bpp": mean["bpp_pixel_weighted"]}
    print_results_table(
        [*rows, mean, pixel_weighted],
        ["name", *METRICS, "decode_error", *(key for key in ("note", "error") if key in columns)],
        f"{name}: real bitstreams",
        console=console,
    )

    comparisons, anchor_curves = [], []
    measured = evaluation_anchors(
        coded_images,
        anchors,
        anchors_source,
        cache_dir=anchors_cache,
        published_dir=published_anchors,
    )
    for codec_name, anchor in measured.items():
        save_curve(anchor.curve, out_dir / f"anchor_{codec_name}.json")
        if anchor.rows:  # published anchors are means only
            write_per_image_csv(anchor.rows, out_dir / f"anchor_{codec_name}_per_image.csv")
        comparisons.append(compare_with_anchor(mean, anchor.curve))
        anchor_curves.append(anchor.curve)
    plot_rd(
        [model_curve, *anchor_curves], out_dir / "rd.png", f"{len(coded)} images, real bitstreams"
    )
    if comparisons:
        print_results_table(
            comparisons,
            COMPARISON_COLUMNS,
            f"{name} against classical codecs at equal rate / equal PSNR (mean curves; "
            "blank: the model's point lies outside the anchor's range)",
            console=console,
        )
    summary = {
        key: float(mean[key])
        for key in (*METRICS, "decode_error", "bpp_pixel_weighted")
        if mean[key] is not None
    }
    summary["images_skipped"] = float(len(skipped))
    for comparison in comparisons:
        gain = comparison["model_gain_db"]
        if gain is not None:
            summary[f"psnr_gain_vs_{comparison['anchor']}"] = float(gain)
    if skipped:
        log_skipped(skipped, len(rows))
    return summary
