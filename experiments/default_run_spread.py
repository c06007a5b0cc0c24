"""How far the default run's result moves with the seed and the thread count.

    .venv/bin/python experiments/default_run_spread.py [--seeds 42 43 44] [--threads 1 2]
        [--jobs 1] [--out experiments/results/default_run_spread] [--runs logs/default_run_spread]
        [--overrides <train overrides>...]

Runs ``python -m licexp.train seed=<s> <overrides>`` (what ``make train`` runs) once per seed
and thread count (``OMP_NUM_THREADS``; ``--jobs`` runs at most that many at once, each
with its own threads: keep jobs x threads within the cores), reads each run's real-bitstream
evaluation (``eval/results.json``) and writes ``runs.csv`` (one row per run, with the
minutes from the run's first file to its results) and
``spread.md``: per metric the mean, the range, and the spread (bpp: max / min - 1; PSNR
and MS-SSIM: max - min). The runs themselves go to ``--runs``; finished ones are read, not
rerun.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
METRICS = {
    "bpp": "bpp",
    "estimated_bpp": "estimated_bpp",
    "psnr": "psnr-rgb",
    "ms_ssim": "ms-ssim-rgb",
}


def run_training(run_dir: Path, seed: int, threads: int, overrides: list[str]) -> dict[str, float]:
    """Trains and evaluates one run (unless its results exist); returns its mean metrics."""
    results = run_dir / "eval" / "results.json"
    if not results.is_file():
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "licexp.train", f"seed={seed}", *overrides]
        command += [f"hydra.run.dir={run_dir}", "callbacks.progress_bar=null"]
        with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
            subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=log, check=True)
    values = json.loads(results.read_text())["results"]
    metrics = {name: float(values[key][0]) for name, key in METRICS.items()}
    # From the run's first file to its results: training and evaluation, not the start-up.
    metrics["minutes"] = (
        results.stat().st_mtime - (run_dir / "run_info.json").stat().st_mtime
    ) / 60
    return metrics


def spread_table(rows: list[dict[str, float]]) -> str:
    """Markdown: mean, range and spread of every metric over the runs."""
    lines = ["| metric | mean | min | max | spread |", "|---|---|---|---|---|"]
    for name in METRICS:
        values = [row[name] for row in rows]
        low, high, mean = min(values), max(values), sum(values) / len(values)
        relative = name.endswith("bpp")
        spread = f"{100 * (high / low - 1):.1f} %" if relative else f"{high - low:.3f}"
        digits = 2 if name == "psnr" else 4 if name == "ms_ssim" else 3
        lines.append(
            f"| {name} | {mean:.{digits}f} | {low:.{digits}f} | {high:.{digits}f} | {spread} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/default_run_spread"))
    parser.add_argument("--runs", type=Path, default=Path("logs/default_run_spread"))
    parser.add_argument("--overrides", nargs="*", default=[], help="training overrides")
    args = parser.parse_args()
    args.runs = args.runs.resolve()  # the training runs in the checkout, the runs stay here
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    grid = [(seed, threads) for threads in args.threads for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        metrics = list(
            pool.map(
                lambda job: run_training(
                    args.runs / f"seed{job[0]}_threads{job[1]}", *job, args.overrides
                ),
                grid,
            )
        )
    rows = [
        {"seed": seed, "threads": threads, **values}
        for (seed, threads), values in zip(grid, metrics, strict=True)
    ]
    with open(args.out / "runs.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    command = " ".join(["experiments/default_run_spread.py", *sys.argv[1:]])
    summary = f"`{command}`: {len(rows)} runs\n\n{spread_table(rows)}\n"
    (args.out / "spread.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
