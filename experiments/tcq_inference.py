"""The RD effect of TCQ at inference only: trained checkpoints coded with scalar rounding and
with trellis-coded quantisation, on real bitstreams.

    .venv/bin/python experiments/tcq_inference.py <run or sweep dir>... [--out DIR]
        [--states 4 8] [--steps 0.5] [--rd-lambdas 0 0.05 0.1 0.2] [--scans row plane]
        [--neighbours 1 2] [--fixed-window] [--images N]

Every ``checkpoints/last.ckpt`` below the given folders is loaded once with its trained
strategy (the scalar baseline: ``noise`` codes ``round(y)``), once with ``noise_plus``
(``round(y - mu) + mu``, the scalar grid TCQ's levels are relative to) and once per TCQ
setting of the grid, the weights unchanged (``licexp.eval quant=...`` does the same for one
setting). Images: Kodak (``../shared/data/kodak`` or ``$LICEXP_KODAK``) when present, else
the five embedded photos. Writes ``rd_points.csv`` (one row per checkpoint and coding),
``bd.csv`` (BD-rate and BD-PSNR of every coding across the checkpoints against the trained
strategy's, pchip), ``equal_point.csv`` (per checkpoint, each TCQ setting's rd_lambda sweep
against the trained strategy's point: PSNR at equal rate, rate at equal PSNR) and
``rd.png``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import re
import tempfile
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from licexp.checkpoints import codec_from_checkpoint  # noqa: E402
from licexp.data import Kodak, PhotoSamples  # noqa: E402
from licexp.evaluation.bjontegaard import bd_psnr, bd_rate  # noqa: E402
from licexp.evaluation.evaluate import evaluate_images, mean_row  # noqa: E402
from licexp.quant import NoiseQuantization, QuantizationStrategy  # noqa: E402
from licexp.quant.tcq import TrellisCodedQuantization  # noqa: E402

FIELDS = (
    "checkpoint",
    "lmbda",
    "coding",
    "bpp",
    "estimated_bpp",
    "psnr",
    "ms_ssim",
    "encoding_time",
    "decoding_time",
    "decode_error",
)


def test_images(limit: int | None) -> tuple[str, list]:
    """Kodak when it is there, else the embedded photos, as (name, image) pairs."""
    try:
        dataset, label = Kodak(root=None), "Kodak"
    except FileNotFoundError:
        names = ["astronaut", "coffee", "chelsea", "motorcycle_left", "rocket"]
        dataset, label = PhotoSamples(names=names, crop_size=None), "embedded photos"
    items = [dataset[i] for i in range(len(dataset) if limit is None else limit)]
    return label, [(item["name"], item["image"]) for item in items]


def codings(args: argparse.Namespace):
    """``(label, strategy or None)``: the trained strategy first, then noise+, then TCQ."""
    yield "trained", None
    yield "noise_plus", NoiseQuantization(round_around_mean=True)
    grid = itertools.product(args.states, args.steps, args.rd_lambdas, args.scans, args.neighbours)
    for n, step, rd_lambda, scan, neighbours in grid:
        label = f"tcq{n}-{scan}-step{step:g}-lambda{rd_lambda:g}"
        if neighbours != 1:
            label += f"-n{neighbours}"
        if args.fixed_window:
            label += "-fixed"
        exact = not args.fixed_window
        yield label, TrellisCodedQuantization(n, step, rd_lambda, neighbours, scan, exact)


def measure(
    checkpoint: Path, coding: QuantizationStrategy | None, images: list, work: Path
) -> dict:
    codec, config = codec_from_checkpoint(checkpoint, coding)
    rows = evaluate_images(codec, images, work, reconstructions=0)
    mean = mean_row(rows)
    return {key: mean[key] for key in FIELDS[3:]} | {"lmbda": config.get("lmbda")}


def bd_table(points: list[dict], reference_coding: str = "trained") -> list[dict]:
    """BD-rate / BD-PSNR of each coding's curve over the checkpoints against the reference's."""
    curves: dict[str, list[dict]] = {}
    for point in points:
        curves.setdefault(point["coding"], []).append(point)
    reference = curves[reference_coding]
    table = []
    for coding, curve in curves.items():
        if coding == reference_coding or len(curve) < 2:
            continue
        args = (
            [p["bpp"] for p in reference],
            [p["psnr"] for p in reference],
            [p["bpp"] for p in curve],
            [p["psnr"] for p in curve],
        )
        try:
            table.append(
                {"coding": coding, "bd_rate_pct": bd_rate(*args), "bd_psnr_db": bd_psnr(*args)}
            )
        except ValueError as error:  # curves that do not overlap or are not monotone
            table.append(
                {"coding": coding, "bd_rate_pct": None, "bd_psnr_db": None, "note": str(error)}
            )
    return table


def family(coding: str) -> str:
    """A TCQ coding's label without its rd_lambda: the points of one lambda sweep."""
    return re.sub(r"-lambda[0-9.]+(?:e-?[0-9]+)?", "", coding)


def equal_point_table(points: list[dict]) -> list[dict]:
    """Per checkpoint, each TCQ family's lambda sweep against the trained strategy's point:
    PSNR at the same rate and rate at the same PSNR (interpolated in log-rate; blank where
    the sweep does not reach the point)."""
    table = []
    for checkpoint in sorted({p["checkpoint"] for p in points}):
        own = [p for p in points if p["checkpoint"] == checkpoint]
        (reference,) = [p for p in own if p["coding"] == "trained"]
        sweeps: dict[str, list[dict]] = {}
        for point in own:
            if point["coding"].startswith("tcq"):
                sweeps.setdefault(family(point["coding"]), []).append(point)
        for name, sweep in sweeps.items():
            rates = np.log([p["bpp"] for p in sweep])
            psnrs = np.array([p["psnr"] for p in sweep])
            order, by_psnr = np.argsort(rates), np.argsort(psnrs)
            rate = np.log(reference["bpp"])
            psnr_at_rate = (
                np.interp(rate, rates[order], psnrs[order])
                if rates.min() <= rate <= rates.max()
                else None
            )
            inside = psnrs.min() <= reference["psnr"] <= psnrs.max()
            rate_at_psnr = (
                np.exp(np.interp(reference["psnr"], psnrs[by_psnr], rates[by_psnr]))
                if inside
                else None
            )
            table.append(
                {
                    "checkpoint": checkpoint,
                    "lmbda": reference["lmbda"],
                    "family": name,
                    "psnr_gain_db": None
                    if psnr_at_rate is None
                    else psnr_at_rate - reference["psnr"],
                    "rate_change_pct": (
                        None
                        if rate_at_psnr is None
                        else 100 * (rate_at_psnr / reference["bpp"] - 1)
                    ),
                }
            )
    return table


def plot(points: list[dict], label: str, path: Path) -> None:
    """The scalar codings across the checkpoints (black) and, per checkpoint, each TCQ
    setting's rd_lambda sweep (one colour per setting)."""
    figure, axis = plt.subplots(figsize=(7, 5))
    for coding, style in (("trained", "k-o"), ("noise_plus", "k--s")):
        curve = sorted((p for p in points if p["coding"] == coding), key=lambda p: p["bpp"])
        axis.plot([p["bpp"] for p in curve], [p["psnr"] for p in curve], style, label=coding)
    families = sorted({family(p["coding"]) for p in points if p["coding"].startswith("tcq")})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    checkpoints = sorted({p["checkpoint"] for p in points})
    for index, name in enumerate(families):
        for checkpoint in checkpoints:
            sweep = sorted(
                (
                    p
                    for p in points
                    if p["checkpoint"] == checkpoint
                    and p["coding"].startswith("tcq")
                    and family(p["coding"]) == name
                ),
                key=lambda p: p["bpp"],
            )
            axis.plot(
                [p["bpp"] for p in sweep],
                [p["psnr"] for p in sweep],
                ".-",
                color=colours[index % len(colours)],
                label=f"{name} (rd_lambda sweep)" if checkpoint == checkpoints[0] else None,
            )
    save_rd_figure(figure, axis, f"TCQ at inference on the same weights, {label}", path)


def save_rd_figure(figure: plt.Figure, axis: plt.Axes, title: str, path: Path) -> None:
    """Labels an RD plot (real-bitstream bpp against PSNR) and writes it to ``path``."""
    axis.set_xlabel("bpp (real bitstreams)")
    axis.set_ylabel("PSNR-RGB (dB)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/tcq_inference"))
    parser.add_argument("--states", type=int, nargs="+", default=[8])
    parser.add_argument("--steps", type=float, nargs="+", default=[0.5])
    parser.add_argument("--rd-lambdas", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    parser.add_argument("--neighbours", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--fixed-window",
        action="store_true",
        help="search only --neighbours levels per side (quant.exact=false), as before 2026-12-06",
    )
    parser.add_argument("--scans", nargs="+", default=["row"], choices=["row", "plane"])
    parser.add_argument("--images", type=int, default=None, help="only the first N images")
    parser.add_argument(
        "--replot", action="store_true", help="redraw rd.png from <out>/rd_points.csv"
    )
    args = parser.parse_args()

    if args.replot:
        with open(args.out / "rd_points.csv") as file:
            points = [
                {k: float(v) if k in ("bpp", "psnr") else v for k, v in row.items()}
                for row in csv.DictReader(file)
            ]
        plot(points, "Kodak (24 images)", args.out / "rd.png")
        return
    checkpoints = sorted(c for run in args.runs for c in run.glob("**/checkpoints/last.ckpt"))
    if not checkpoints:
        raise SystemExit(f"no checkpoints/last.ckpt below {[str(r) for r in args.runs]}")
    label, images = test_images(args.images)
    console = Console(width=160)
    points = []
    with tempfile.TemporaryDirectory() as work:
        for checkpoint in checkpoints:
            for coding, strategy in codings(args):
                point = {"checkpoint": str(checkpoint), "coding": coding}
                point |= measure(checkpoint, strategy, images, Path(work))
                points.append(point)
                console.print(
                    f"{checkpoint.parents[1].name} {coding}: {point['bpp']:.4f} bpp, "
                    f"{point['psnr']:.2f} dB, decode error {point['decode_error']}"
                )
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "rd_points.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, FIELDS)
        writer.writeheader()
        writer.writerows(points)
    bd = bd_table(points)
    with open(args.out / "bd.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, ["coding", "bd_rate_pct", "bd_psnr_db", "note"])
        writer.writeheader()
        writer.writerows(bd)
    plot(points, f"{label} ({len(images)} images)", args.out / "rd.png")
    equal = equal_point_table(points)
    with open(args.out / "equal_point.csv", "w", newline="") as file:
        writer = csv.DictWriter(
            file, ["checkpoint", "lmbda", "family", "psnr_gain_db", "rate_change_pct"]
        )
        writer.writeheader()
        writer.writerows(equal)
    table = Table(title=f"TCQ lambda sweeps against the trained strategy's point, {label}")
    for column in ("lmbda", "family", "PSNR at equal rate (dB)", "rate at equal PSNR (%)"):
        table.add_column(column)
    for row in equal:
        gain, change = row["psnr_gain_db"], row["rate_change_pct"]
        table.add_row(
            str(row["lmbda"]),
            row["family"],
            "-" if gain is None else f"{gain:+.3f}",
            "-" if change is None else f"{change:+.2f}",
        )
    console.print(table)

    table = Table(title=f"TCQ at inference, {label}: BD against the trained strategy (pchip)")
    for column in ("coding", "BD-rate (%)", "BD-PSNR (dB)"):
        table.add_column(column)
    for row in bd:
        rate, gain = row["bd_rate_pct"], row["bd_psnr_db"]
        table.add_row(
            row["coding"],
            "-" if rate is None else f"{rate:+.2f}",
            "-" if gain is None else f"{gain:+.3f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
