"""Figures and a table for a three-gaps multirun (Pan et al., Figures 1-5).

    python experiments/three_gaps.py logs/train/multiruns/<date> [--out DIR]

Reads every job of the sweep (its config, ``csv/metrics.csv``, ``gaps/*.json`` and
``eval/``) and writes into ``DIR`` (default: the sweep directory):

- ``gap_curves.png``: the discrete gap, entropy-estimation gap (W1 and rate), local
  smoothness score and training loss over training, one line per strategy (cf. Figures
  1, 3 and 4);
- ``latent_histograms.png``: the last validation histogram of ``y`` and of ``y - round(y)``
  per strategy (cf. Figure 2);
- ``rd_points.png``: PSNR against real-bitstream bpp per strategy (cf. Figure 5);
- ``summary.md``: per strategy the final gaps and the RD loss on real bitstreams.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

GAPS = ("discrete", "entropy_w1", "rate_gap_bits", "lss")
CURVE_TITLES = {
    "discrete": "discrete gap  mean |R(y) - Q(y)|",
    "entropy_w1": "entropy-estimation gap  W1(round(y), mu + delta sigma)",
    "rate_gap_bits": "rate gap  (training estimate - rounded) bpp",
    "lss": "local smoothness score",
    "loss": "training RD loss  lambda 255^2 MSE + bpp",
}
CURVE_COLUMNS = {name: f"train/gaps/{name}" for name in GAPS} | {"loss": "train/loss"}


@dataclass
class Job:
    """One finished run of the sweep."""

    name: str
    lmbda: float
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    per_image: list[dict[str, str]] = field(default_factory=list)
    histograms: dict[str, dict] = field(default_factory=dict)

    @property
    def real_bpp(self) -> float:
        return sum(float(r["bpp"]) for r in self.per_image) / len(self.per_image)

    @property
    def psnr(self) -> float:
        return sum(float(r["psnr"]) for r in self.per_image) / len(self.per_image)

    @property
    def rd_loss(self) -> float:
        """Mean over images of ``lambda * 255^2 * MSE + bpp`` with bytes-based bpp."""
        losses = [
            self.lmbda * 255**2 * 10 ** (-float(r["psnr"]) / 10) + float(r["bpp"])
            for r in self.per_image
        ]
        return sum(losses) / len(losses)


def read_job(directory: Path) -> Job | None:
    config_path = directory / ".hydra" / "config.yaml"
    if not config_path.is_file():
        return None
    config = OmegaConf.load(config_path)
    overrides = list(OmegaConf.load(directory / ".hydra" / "overrides.yaml") or [])
    quant = next((o.split("=", 1)[1] for o in overrides if o.startswith("quant=")), None)
    job = Job(name=quant or config["run_name"], lmbda=float(config["lmbda"]))
    metrics = directory / "csv" / "metrics.csv"
    if metrics.is_file():
        with open(metrics) as file:
            for row in csv.DictReader(file):
                for curve, column in CURVE_COLUMNS.items():
                    value = row.get(column)
                    if value:
                        job.curves.setdefault(curve, []).append((int(row["step"]), float(value)))
    per_image = directory / "eval" / "per_image.csv"
    if per_image.is_file():
        with open(per_image) as file:
            job.per_image = list(csv.DictReader(file))
    for kind in ("latent_histogram", "quantisation_error_histogram"):
        files = sorted((directory / "gaps").glob(f"{kind}_step*.json"))
        if files:
            job.histograms[kind] = json.loads(files[-1].read_text())
    return job


def plot_gap_curves(jobs: list[Job], path: Path) -> None:
    figure, axes = plt.subplots(2, 3, figsize=(16, 8))
    axes.flat[-1].set_visible(False)
    for axis, curve in zip(axes.flat, CURVE_TITLES, strict=False):
        for job in jobs:
            if curve in job.curves:
                steps, values = zip(*job.curves[curve], strict=True)
                axis.plot(steps, values, label=job.name, linewidth=1)
        axis.set_title(CURVE_TITLES[curve], fontsize="medium")
        axis.set_xlabel("training step")
        axis.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_histograms(jobs: list[Job], path: Path) -> None:
    jobs = [job for job in jobs if job.histograms]
    if not jobs:
        return
    figure, axes = plt.subplots(2, len(jobs), figsize=(3.2 * len(jobs), 5.5), squeeze=False)
    for column, job in enumerate(jobs):
        for row, kind in enumerate(("latent_histogram", "quantisation_error_histogram")):
            histogram = job.histograms.get(kind)
            if histogram is None:
                continue
            edges, counts = histogram["edges"], histogram["counts"]
            widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
            axes[row, column].bar(edges[:-1], counts, width=widths, align="edge")
            axes[row, column].set_title(
                f"{job.name}: {'y' if row == 0 else 'y - round(y)'}", fontsize="small"
            )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_rd_points(jobs: list[Job], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for job in jobs:
        if job.per_image:
            axis.plot([job.real_bpp], [job.psnr], "o", label=job.name)
    axis.set_xlabel("bits per pixel (real bitstreams)")
    axis.set_ylabel("PSNR-RGB (dB)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def final_value(points: list[tuple[int, float]], last: int = 5) -> float:
    values = [value for _, value in points[-last:]]
    return sum(values) / len(values) if values else math.nan


def summary_table(jobs: list[Job]) -> str:
    header = (
        "| strategy | " + " | ".join(GAPS) + " | real bpp | PSNR (dB) | RD loss |\n"
        "|---|" + "---|" * (len(GAPS) + 3)
    )
    lines = [header]
    for job in jobs:
        gaps = " | ".join(f"{final_value(job.curves.get(gap, [])):.4f}" for gap in GAPS)
        rd = (
            f"{job.real_bpp:.4f} | {job.psnr:.2f} | {job.rd_loss:.4f}"
            if job.per_image
            else "- | - | -"
        )
        lines.append(f"| {job.name} | {gaps} | {rd} |")
    return "\n".join(lines) + (
        "\n\nGaps: mean of the last five training measurements. RD loss: mean over the "
        "evaluation images of lambda * 255^2 * MSE + bpp, bpp from the bitstream bytes.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="multirun directories")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    jobs = [
        job
        for sweep in args.sweeps
        for directory in sorted(p for p in sweep.iterdir() if p.is_dir())
        if (job := read_job(directory)) is not None
    ]
    if not jobs:
        raise SystemExit(f"no finished jobs (with .hydra/config.yaml) under {args.sweeps}")
    out = args.out or args.sweeps[0]
    out.mkdir(parents=True, exist_ok=True)
    plot_gap_curves(jobs, out / "gap_curves.png")
    plot_histograms(jobs, out / "latent_histograms.png")
    plot_rd_points(jobs, out / "rd_points.png")
    table = summary_table(jobs)
    (out / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
