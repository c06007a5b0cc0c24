"""Borzechowski et al.'s stage 2 at small scale: stage-1 models retrained on truly quantised
latents, scalar and TCQ, decoder alone and decoder + hyper decoder, on real bitstreams.

    .venv/bin/python experiments/stage2.py <stage-1 run or sweep dir>... [--steps 400]
        [--runs logs/stage2] [--out experiments/results/stage2] [--images N]
        [--overrides <stage-2 training overrides>...]

For every ``checkpoints/last.ckpt`` below the given folders (the stage-1 models, one per
lambda), trains four stage-2 models with ``python -m licexp.train experiment=stage2 |
stage2_hyper init_from=<it> quant=ste | tcq trainer.max_steps=<steps>`` (runs under
``--runs``; finished ones are reused), then codes every model on Kodak
(``../shared/data/kodak`` or ``$LICEXP_KODAK``; else the embedded photos): the stage-1 model
with scalar rounding ``round(y - mu) + mu`` (``stage1``, the reference) and with TCQ
(``stage1+tcq``), each stage-2 model with its own quantiser. Writes ``rd_points.csv``,
``bd.csv`` (BD-rate and BD-PSNR of each curve against ``stage1``, pchip) and ``rd.png``.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tcq_inference import bd_table, save_rd_figure, test_images  # noqa: E402

from licexp.checkpoints import codec_from_checkpoint  # noqa: E402
from licexp.evaluation.evaluate import evaluate_images, mean_row  # noqa: E402
from licexp.quant import StraightThroughQuantization  # noqa: E402
from licexp.quant.tcq import TrellisCodedQuantization  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [  # (label, experiment, quant)
    ("stage2-ste", "stage2", "ste"),
    ("stage2_hyper-ste", "stage2_hyper", "ste"),
    ("stage2-tcq", "stage2", "tcq"),
    ("stage2_hyper-tcq", "stage2_hyper", "tcq"),
]
FIELDS = ("stage1", "lmbda", "coding", "bpp", "estimated_bpp", "psnr", "ms_ssim")


def train_stage2(
    stage1: Path, experiment: str, quant: str, steps: int, run_dir: Path, overrides: list[str]
) -> Path:
    """Trains one stage-2 model (unless its checkpoint exists); returns its last.ckpt."""
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        command = [
            sys.executable,
            "-m",
            "licexp.train",
            f"experiment={experiment}",
            f"init_from={stage1}",
            f"quant={quant}",
            f"trainer.max_steps={steps}",
            "evaluate=false",
            "callbacks.progress_bar=null",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ]
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir.with_suffix(".log"), "w") as log:
            subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=log, check=True)
    return checkpoint


def measure(checkpoint: Path, coding, images: list) -> dict:
    codec, config = codec_from_checkpoint(checkpoint, coding)
    with tempfile.TemporaryDirectory() as work:
        mean = mean_row(evaluate_images(codec, images, Path(work), reconstructions=0))
    return {key: mean[key] for key in FIELDS[3:]} | {"lmbda": config["lmbda"]}


def plot(points: list[dict], label: str, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 5))
    styles = {"stage1": "k-o", "stage1+tcq": "k--s"}
    for coding in dict.fromkeys(p["coding"] for p in points):
        curve = sorted((p for p in points if p["coding"] == coding), key=lambda p: p["bpp"])
        style = styles.get(coding, ("-" if "ste" in coding else "--") + ".")
        axis.plot([p["bpp"] for p in curve], [p["psnr"] for p in curve], style, label=coding)
    save_rd_figure(figure, axis, f"Stage 2 on truly quantised latents, {label}", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", type=Path, nargs="+")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--runs", type=Path, default=Path("logs/stage2"))
    parser.add_argument("--out", type=Path, default=Path("experiments/results/stage2"))
    parser.add_argument("--images", type=int, default=None, help="the first N test images")
    parser.add_argument("--overrides", nargs="*", default=[], help="stage-2 training overrides")
    args = parser.parse_args()
    args.runs = args.runs.resolve()  # the training runs in the checkout, the runs stay here
    stage1 = sorted({p.resolve() for d in args.dirs for p in d.glob("**/checkpoints/last.ckpt")})
    label, images = test_images(args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    points = []
    for checkpoint in stage1:
        name = checkpoint.parent.parent.name
        codings = [
            ("stage1", checkpoint, StraightThroughQuantization()),
            ("stage1+tcq", checkpoint, TrellisCodedQuantization()),
        ]
        for coding, experiment, quant in VARIANTS:
            run_dir = args.runs / name / coding
            trained = train_stage2(
                checkpoint, experiment, quant, args.steps, run_dir, args.overrides
            )
            codings.append((coding, trained, None))
        for coding, path, strategy in codings:
            point = {"stage1": name, "coding": coding, **measure(path, strategy, images)}
            points.append(point)
            print(f"{name} {coding}: {point['bpp']:.4f} bpp {point['psnr']:.2f} dB", flush=True)
    with open(args.out / "rd_points.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(points)
    table = bd_table(points, reference_coding="stage1")
    with open(args.out / "bd.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["coding", "bd_rate_pct", "bd_psnr_db", "note"])
        writer.writeheader()
        writer.writerows(table)
    plot(points, f"{label}, {len(images)} images", args.out / "rd.png")
    for row in table:
        print(row)


if __name__ == "__main__":
    main()
