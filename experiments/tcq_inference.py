"""The RD effect of TCQ at inference only: trained checkpoints coded with scalar rounding and
with trellis-coded quantisation, on real bitstreams.

    .venv/bin/python experiments/tcq_inference.py <run or sweep dir>... [--out DIR]
        [--states 4 8] [--steps 0.5] [--rd-lambdas 0 0.05 0.1 0.2] [--scans row plane]
        [--neighbours 1 2] [--fixed-window] [--rdoq] [--weighted] [--jobs N] [--images N]

Every ``checkpoints/last.ckpt`` below the given folders is loaded once with its trained
strategy (the scalar baseline: ``noise`` codes ``round(y)``), once with ``noise_plus``
(``round(y - mu) + mu``, the scalar grid TCQ's levels are relative to) and once per TCQ
setting of the grid, the weights unchanged (``licexp.eval quant=...`` does the same for one
setting). ``--rdoq`` adds RDOQ (step 1, the model's own grid) at every ``--rd-lambdas``
value, TCQ's fair scalar baseline; ``--weighted`` adds every TCQ and RDOQ setting again
with ``channel_weights`` (label ``-w``): the synthesis transform's sensitivity per latent
channel (:mod:`licexp.quant.sensitivity`), measured once per checkpoint on the five
embedded photos (256-pixel central crops; not the test images, unless Kodak is missing).
``--jobs N`` codes N checkpoints at a time. Images: Kodak (``../shared/data/kodak`` or
``$LICEXP_KODAK``) when present, else the five embedded photos. Writes:

- ``rd_points.csv``: one row per checkpoint and coding;
- ``bd.csv``: BD-rate and BD-PSNR (pchip) of every coding across the checkpoints against
  the ``--reference`` coding (the trained strategy by default, or ``noise_plus``);
- ``equal_point.csv``: per checkpoint, each TCQ or RDOQ setting's rd_lambda sweep against
  the reference's point (PSNR at equal rate, rate at equal PSNR), and
  ``equal_point_summary.md``: those per lambda over the checkpoints of that lambda (e.g.
  seeds), mean ± standard deviation and whether the mean exceeds twice the spread;
- ``sweep_bd.csv``, ``sweep_bd_summary.md``: per checkpoint, BD of each TCQ sweep against
  RDOQ's and of each weighted sweep against its unweighted one, summarised the same way;
- ``rd.png``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import re
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
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
from licexp.quant.rdoq import RateDistortionScalarQuantization  # noqa: E402
from licexp.quant.sensitivity import measured_channel_weights  # noqa: E402
from licexp.quant.tcq import TrellisCodedQuantization  # noqa: E402

SWEPT = ("tcq", "rdoq")  # codings swept over rd_lambda
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


def channel_weights(checkpoint: Path) -> tuple[float, ...]:
    """The synthesis sensitivity per latent channel of ``checkpoint`` (``--weighted``)."""
    codec, _ = codec_from_checkpoint(checkpoint)
    return measured_channel_weights(codec)


def codings(args: argparse.Namespace, weights: tuple[float, ...] | None = None):
    """``(label, strategy or None)``: the trained strategy first, then noise+, then TCQ, RDOQ
    (``--rdoq``) and both again with ``weights`` (``--weighted``)."""
    yield "trained", None
    yield "noise_plus", NoiseQuantization(round_around_mean=True)
    for suffix, channel in [("", None)] + ([("-w", weights)] if args.weighted else []):
        grid = itertools.product(
            args.states, args.steps, args.rd_lambdas, args.scans, args.neighbours
        )
        for n, step, rd_lambda, scan, neighbours in grid:
            label = f"tcq{n}-{scan}-step{step:g}{suffix}-lambda{rd_lambda:g}"
            if neighbours != 1:
                label += f"-n{neighbours}"
            if args.fixed_window:
                label += "-fixed"
            exact = not args.fixed_window
            yield (
                label,
                TrellisCodedQuantization(n, step, rd_lambda, neighbours, scan, exact, channel),
            )
        for rd_lambda in args.rd_lambdas if args.rdoq else []:
            yield (
                f"rdoq{suffix}-lambda{rd_lambda:g}",
                RateDistortionScalarQuantization(1.0, rd_lambda, channel),
            )


def checkpoint_points(checkpoint: Path, args: argparse.Namespace, images: list) -> list[dict]:
    """Every coding of one checkpoint."""
    weights = channel_weights(checkpoint) if args.weighted else None
    points = []
    with tempfile.TemporaryDirectory() as work:
        for coding, strategy in codings(args, weights):
            point = {"checkpoint": str(checkpoint), "coding": coding}
            point |= measure(checkpoint, strategy, images, Path(work))
            points.append(point)
            print(
                f"{checkpoint.parents[1].name} {coding}: {point['bpp']:.4f} bpp, "
                f"{point['psnr']:.2f} dB, decode error {point['decode_error']}",
                flush=True,
            )
    return points


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
    """A TCQ or RDOQ coding's label without its rd_lambda: the points of one lambda sweep."""
    return re.sub(r"-lambda[0-9.]+(?:e-?[0-9]+)?", "", coding)


def equal_point_table(points: list[dict], reference_coding: str = "trained") -> list[dict]:
    """Per checkpoint, each TCQ or RDOQ family's lambda sweep against the point of
    ``reference_coding``:
    PSNR at the same rate and rate at the same PSNR (interpolated in log-rate; blank where
    the sweep does not reach the point)."""
    table = []
    for checkpoint in sorted({p["checkpoint"] for p in points}):
        own = [p for p in points if p["checkpoint"] == checkpoint]
        (reference,) = [p for p in own if p["coding"] == reference_coding]
        sweeps: dict[str, list[dict]] = {}
        for point in own:
            if point["coding"].startswith(SWEPT):
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


def sweep_bd_table(points: list[dict]) -> list[dict]:
    """Per checkpoint, BD-PSNR and BD-rate (pchip) of one rd_lambda sweep against another
    over their common rates: each TCQ family against RDOQ's sweep (the scalar codings with the
    same rate model and RD decisions), and each weighted family against its unweighted one.
    Rows in :func:`equal_point_table`'s keys (``family``: "A vs B"); blank where the sweeps do
    not overlap."""
    table = []
    for checkpoint in sorted({p["checkpoint"] for p in points}):
        own = [p for p in points if p["checkpoint"] == checkpoint]
        sweeps: dict[str, list[dict]] = {}
        for point in own:
            if point["coding"].startswith(SWEPT):
                sweeps.setdefault(family(point["coding"]), []).append(point)
        pairs = [
            (name, "rdoq" + ("-w" if name.endswith("-w") else ""))
            for name in sweeps
            if name.startswith("tcq")
        ]
        pairs += [(name, name[:-2]) for name in sweeps if name.endswith("-w")]
        for name, reference in pairs:
            if reference not in sweeps:
                continue
            args = [
                [p[key] for p in curve]
                for curve in (sweeps[reference], sweeps[name])
                for key in ("bpp", "psnr")
            ]
            try:
                gain, change = bd_psnr(*args), bd_rate(*args)
            except ValueError:  # no common rates, or a sweep that is not monotone
                gain = change = None
            table.append(
                {
                    "checkpoint": checkpoint,
                    "lmbda": own[0]["lmbda"],
                    "family": f"{name} vs {reference}",
                    "psnr_gain_db": gain,
                    "rate_change_pct": change,
                }
            )
    return table


def equal_point_summary(
    rows: list[dict],
    columns: tuple[str, str] = ("PSNR at equal rate (dB)", "rate at equal PSNR (%)"),
    note: str = "Per checkpoint against its reference point; n: the checkpoints whose sweep "
    "reaches that point.",
) -> str:
    """The :func:`equal_point_table` (or :func:`sweep_bd_table`) per lambda and family over
    the checkpoints of that lambda (seeds), as Markdown: mean ± sample standard deviation, n,
    and whether |mean| exceeds twice the spread."""
    groups: dict[tuple[float, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((float(row["lmbda"]), row["family"]), []).append(row)
    lines = [
        f"| lambda | coding | n | {columns[0]} | exceeds 2x spread | {columns[1]} |",
        "|---|---|---|---|---|---|",
    ]

    def spread(values: list[float], digits: int) -> tuple[str, str]:
        if not values:
            return "-", "-"
        mean = statistics.fmean(values)
        if len(values) == 1:
            return f"{mean:+.{digits}f}", "n/a (n = 1)"
        std = statistics.stdev(values)
        return f"{mean:+.{digits}f} ± {std:.{digits}f}", "yes" if abs(mean) > 2 * std else "no"

    for (lmbda, name), group in sorted(groups.items()):
        gains = [r["psnr_gain_db"] for r in group if r["psnr_gain_db"] is not None]
        changes = [r["rate_change_pct"] for r in group if r["rate_change_pct"] is not None]
        gain, exceeds = spread(gains, 3)
        change, _ = spread(changes, 2)
        lines.append(f"| {lmbda:g} | {name} | {len(gains)} | {gain} | {exceeds} | {change} |")
    lines += ["", f"{note} Mean ± the sample standard deviation over the checkpoints."]
    return "\n".join(lines) + "\n"


def plot(points: list[dict], label: str, path: Path) -> None:
    """The scalar codings across the checkpoints (black) and, per checkpoint, each TCQ
    setting's rd_lambda sweep (one colour per setting)."""
    figure, axis = plt.subplots(figsize=(7, 5))
    for coding, style in (("trained", "k-o"), ("noise_plus", "k--s")):
        curve = sorted((p for p in points if p["coding"] == coding), key=lambda p: p["bpp"])
        axis.plot([p["bpp"] for p in curve], [p["psnr"] for p in curve], style, label=coding)
    families = sorted({family(p["coding"]) for p in points if p["coding"].startswith(SWEPT)})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    checkpoints = sorted({p["checkpoint"] for p in points})
    for index, name in enumerate(families):
        for checkpoint in checkpoints:
            sweep = sorted(
                (
                    p
                    for p in points
                    if p["checkpoint"] == checkpoint
                    and p["coding"].startswith(SWEPT)
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
    parser.add_argument("--rdoq", action="store_true", help="add RDOQ at every --rd-lambdas")
    parser.add_argument(
        "--weighted", action="store_true", help="add every setting with channel_weights"
    )
    parser.add_argument("--jobs", type=int, default=1, help="checkpoints coded at a time")
    parser.add_argument(
        "--reference",
        choices=["trained", "noise_plus"],
        default="trained",
        help="the scalar coding BD and equal-point results are measured against",
    )
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
    with ProcessPoolExecutor(args.jobs) as pool:
        code = functools.partial(checkpoint_points, args=args, images=images)
        points = [point for coded in pool.map(code, checkpoints) for point in coded]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "rd_points.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, FIELDS)
        writer.writeheader()
        writer.writerows(points)
    bd = bd_table(points, args.reference)
    with open(args.out / "bd.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, ["coding", "bd_rate_pct", "bd_psnr_db", "note"])
        writer.writeheader()
        writer.writerows(bd)
    plot(points, f"{label} ({len(images)} images)", args.out / "rd.png")
    equal = equal_point_table(points, args.reference)
    with open(args.out / "equal_point.csv", "w", newline="") as file:
        writer = csv.DictWriter(
            file, ["checkpoint", "lmbda", "family", "psnr_gain_db", "rate_change_pct"]
        )
        writer.writeheader()
        writer.writerows(equal)
    summary = equal_point_summary(equal)
    (args.out / "equal_point_summary.md").write_text(summary)
    console.print(summary)
    sweeps = sweep_bd_table(points)
    with open(args.out / "sweep_bd.csv", "w", newline="") as file:
        writer = csv.DictWriter(
            file, ["checkpoint", "lmbda", "family", "psnr_gain_db", "rate_change_pct"]
        )
        writer.writeheader()
        writer.writerows(sweeps)
    summary = equal_point_summary(
        sweeps,
        ("BD-PSNR (dB)", "BD-rate (%)"),
        "Per checkpoint, one rd_lambda sweep against another over their common rates (pchip); "
        "n: the checkpoints where they overlap.",
    )
    (args.out / "sweep_bd_summary.md").write_text(summary)
    console.print(summary)
    table = Table(title=f"TCQ and RDOQ lambda sweeps against {args.reference}'s point, {label}")
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

    table = Table(title=f"TCQ at inference, {label}: BD against {args.reference} (pchip)")
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
