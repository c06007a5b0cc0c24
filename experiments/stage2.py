"""Borzechowski et al.'s stage 2 at small scale, with its controls and over seeds: stage-1
models retrained on truly quantised latents, scalar and TCQ, decoder alone and decoder + hyper
decoder, on real bitstreams.

    .venv/bin/python experiments/stage2.py <stage-1 run or sweep dir>... [--steps 400]
        [--seeds 42 43 44] [--jobs 2] [--runs logs/stage2] [--out experiments/results/stage2]
        [--images N] [--overrides <training overrides>...]

For every ``checkpoints/last.ckpt`` below the given folders (the stage-1 models, one per
lambda or per lambda and seed) and every seed of ``--seeds`` (without it: the stage-1 model's
own seed, so that a stage-1 sweep over seeds gives replicates of the whole pipeline), trains
(runs under ``--runs/<stage-1 run>/seed<seed>/``; finished ones are reused):

- four stage-2 models, ``python -m licexp.train experiment=stage2 | stage2_hyper
  init_from=<it> quant=ste | tcq trainer.max_steps=<steps> seed=<seed>``;
- the control ``stage1-more``: the same command with ``experiment=stage2
  model.trainable=null`` and the stage-1 model's own quantiser (read from its checkpoint),
  i.e. stage 1's training continued for the same steps at stage 2's learning rate and
  schedule, on the same data, lambda the checkpoint's.

``--overrides`` go to every training (the stage-1 backbone and data, e.g. ``data=folder
data.train.root=../shared/data/photos``). Every model is then coded on Kodak
(``../shared/data/kodak`` or ``$LICEXP_KODAK``; else the embedded photos): the stage-1 model
with scalar rounding ``round(y - mu) + mu`` (``stage1``, the reference) and with TCQ
(``stage1+tcq``); each stage-2 model with its own quantiser and, as the cross control, with
the other (``stage2-ste>tcq``, ``stage2-tcq>ste``, and the same for ``stage2_hyper``);
``stage1-more`` with scalar rounding and with TCQ (``stage1-more>tcq``). Writes to ``--out``:

- ``rd_points.csv``: one row per stage-1 model, seed and coding (``seed`` empty for the
  untrained ``stage1`` codings);
- ``summary.csv``: mean, standard deviation and n of bpp and PSNR per lambda and coding;
- ``summary.md`` (also printed): per lambda, each coding's PSNR difference against ``stage1``,
  and the TCQ-specific and finetuning-specific contrasts, paired by seed, as mean ± the
  difference's standard deviation over seeds, and whether |mean| exceeds twice that spread;
- ``bd.csv``: BD-rate and BD-PSNR (pchip) of each coding's curve of per-lambda means over
  seeds against ``stage1``'s; ``rd.png``: those mean curves.

Stage-1 models for it on the photos (4 lambdas x 3 seeds), then the controlled run (the
measured commands, with their crops and steps, are in experiments/README.md):

    python -m licexp.train -m data=folder data.train.root=../shared/data/photos \\
        lmbda=0.0018,0.0067,0.013,0.025 seed=42,43,44
    python experiments/stage2.py logs/train/multiruns/<date> --steps 150 --jobs 2 \\
        --overrides data=folder data.train.root=../shared/data/photos

``--jobs N`` works on N stage-1 models at a time, each in its own process (with
``OMP_NUM_THREADS`` = cores / N, as the trainings it starts inherit it).
"""

from __future__ import annotations

import argparse
import csv
import functools
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from seed_summary import differences, markdown, summary  # noqa: E402
from tcq_inference import bd_table, save_rd_figure, test_images  # noqa: E402

from licexp.checkpoints import CONFIG_KEY, codec_from_checkpoint, read_checkpoint  # noqa: E402
from licexp.evaluation.evaluate import evaluate_images, mean_row  # noqa: E402
from licexp.quant import QuantizationStrategy, StraightThroughQuantization  # noqa: E402
from licexp.quant.tcq import TrellisCodedQuantization  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SCALAR, TCQ = "ste", "tcq"


class Training(NamedTuple):
    """One model trained from each stage-1 model per seed."""

    label: str
    experiment: str
    quant: str | None  # None: the stage-1 model's own quantiser
    extra: tuple[str, ...] = ()


TRAININGS = [
    Training("stage2-ste", "stage2", SCALAR),
    Training("stage2_hyper-ste", "stage2_hyper", SCALAR),
    Training("stage2-tcq", "stage2", TCQ),
    Training("stage2_hyper-tcq", "stage2_hyper", TCQ),
    # stage 2's lr, schedule and lambda; every module trained, with stage 1's quantiser
    Training(
        "stage1-more",
        "stage2",
        None,
        (
            "model.trainable=null",
            "run_name=${hydra:runtime.choices.backbone}-stage1_more-"
            "${hydra:runtime.choices.quant}-lmbda${lmbda}",
        ),
    ),
]
CODED_AS = {  # each trained model: its own coding's label, then the cross control's
    "stage2-ste": [("stage2-ste", None), ("stage2-ste>tcq", TCQ)],
    "stage2_hyper-ste": [("stage2_hyper-ste", None), ("stage2_hyper-ste>tcq", TCQ)],
    "stage2-tcq": [("stage2-tcq", None), ("stage2-tcq>ste", SCALAR)],
    "stage2_hyper-tcq": [("stage2_hyper-tcq", None), ("stage2_hyper-tcq>ste", SCALAR)],
    "stage1-more": [("stage1-more", SCALAR), ("stage1-more>tcq", TCQ)],
}
CONTRASTS = [  # (coding, reference) beyond every coding against stage1
    ("stage2-tcq", "stage2-ste>tcq"),  # TCQ-specific: the same coding, trained on TCQ or not
    ("stage2_hyper-tcq", "stage2_hyper-ste>tcq"),
    ("stage2-tcq", "stage1-more>tcq"),
    ("stage2-ste", "stage1-more"),  # true quantisation against further stage-1 steps
]
FIELDS = ("stage1", "seed", "lmbda", "coding", "bpp", "estimated_bpp", "psnr", "ms_ssim")
QUANT_DIR = REPO_ROOT / "conf" / "quant"
STRATEGIES = {SCALAR: StraightThroughQuantization, TCQ: TrellisCodedQuantization}


def strategy(name: str | None) -> QuantizationStrategy | None:
    """The coding strategy of a quantiser name (``None``: the model's own)."""
    return None if name is None else STRATEGIES[name]()


def override_value(value) -> str:
    """A config value as Hydra's override grammar reads it."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, list):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return repr(value)


def quant_overrides(quant: dict) -> list[str]:
    """Overrides that give a run the quantiser config ``quant`` (a checkpoint's): the first
    option of ``conf/quant/`` with its ``_target_``, and every key whose value differs."""
    for path in sorted(QUANT_DIR.glob("*.yaml")):
        option = OmegaConf.to_container(OmegaConf.load(path))
        if option.get("_target_") == quant.get("_target_"):
            changed = [
                f"{'' if key in option else '+'}quant.{key}={override_value(value)}"
                for key, value in quant.items()
                if option.get(key, object()) != value
            ]
            return [f"quant={path.stem}", *changed]
    raise ValueError(f"stage-1 quantiser {quant.get('_target_')!r} has no option in {QUANT_DIR}")


def train(
    stage1: Path, training: Training, steps: int, seed: int, run_dir: Path, overrides: list[str]
) -> Path:
    """Trains one model from ``stage1`` (unless its checkpoint exists); returns its last.ckpt."""
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        if training.quant is None:
            quant_args = quant_overrides(read_checkpoint(stage1)[CONFIG_KEY]["quant"])
        else:
            quant_args = [f"quant={training.quant}"]
        command = [
            sys.executable,
            "-m",
            "licexp.train",
            f"experiment={training.experiment}",
            f"init_from={stage1}",
            *quant_args,
            *training.extra,
            f"trainer.max_steps={steps}",
            f"seed={seed}",
            "evaluate=false",
            "callbacks.progress_bar=null",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ]
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir.with_suffix(".log"), "w") as log:
            subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=log, check=True)
    return checkpoint


def measure(checkpoint: Path, coding: QuantizationStrategy | None, images: list) -> dict:
    """Mean bpp, estimated bpp, PSNR and MS-SSIM of ``checkpoint`` coded with ``coding``."""
    codec, config = codec_from_checkpoint(checkpoint, coding)
    with tempfile.TemporaryDirectory() as work:
        mean = mean_row(evaluate_images(codec, images, Path(work), reconstructions=0))
    return {key: mean[key] for key in FIELDS[4:]} | {"lmbda": config["lmbda"]}


def plot(rows: list[dict], label: str, path: Path) -> None:
    """The curves of per-lambda means over seeds, one per coding."""
    figure, axis = plt.subplots(figsize=(7, 5))
    styles = {"stage1": "k-o", "stage1+tcq": "k--s"}
    for coding in dict.fromkeys(r["coding"] for r in rows):
        curve = sorted((r for r in rows if r["coding"] == coding), key=lambda r: r["bpp_mean"])
        coded_with_tcq = coding.split(">")[-1].endswith(TCQ)
        style = styles.get(coding, "--o" if coded_with_tcq else "-o")
        bpp, psnr = [r["bpp_mean"] for r in curve], [r["psnr_mean"] for r in curve]
        axis.plot(bpp, psnr, style, markersize=4, label=coding)
    save_rd_figure(figure, axis, f"Stage 2 on truly quantised latents, {label}", path)


def write_csv(path: Path, rows: list[dict], fields) -> None:
    """Writes ``rows`` as CSV with the columns ``fields``."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def model_points(checkpoint: Path, args: argparse.Namespace, images: list) -> list[dict]:
    """The points of one stage-1 model: its two codings, then every training and seed's."""
    name = checkpoint.parent.parent.name
    coded = [(None, "stage1", checkpoint, SCALAR), (None, "stage1+tcq", checkpoint, TCQ)]
    for seed in args.seeds or [read_checkpoint(checkpoint)[CONFIG_KEY]["seed"]]:
        for training in TRAININGS:
            run_dir = args.runs / name / f"seed{seed}" / training.label
            trained = train(checkpoint, training, args.steps, seed, run_dir, args.overrides)
            coded += [(seed, c, trained, q) for c, q in CODED_AS[training.label]]
    points = []
    for seed, coding, path, quant in coded:
        point = {"stage1": name, "seed": seed, "coding": coding}
        point |= measure(path, strategy(quant), images)
        points.append(point)
        print(
            f"{name} seed {seed} {coding}: {point['bpp']:.4f} bpp {point['psnr']:.2f} dB",
            flush=True,
        )
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", type=Path, nargs="+")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="training seeds (default: stage 1's)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="stage-1 models at a time")
    parser.add_argument("--runs", type=Path, default=Path("logs/stage2"))
    parser.add_argument("--out", type=Path, default=Path("experiments/results/stage2"))
    parser.add_argument("--images", type=int, default=None, help="the first N test images")
    parser.add_argument("--overrides", nargs="*", default=[], help="training overrides")
    args = parser.parse_args()
    args.runs = args.runs.resolve()  # the training runs in the checkout, the runs stay here
    stage1 = sorted({p.resolve() for d in args.dirs for p in d.glob("**/checkpoints/last.ckpt")})
    if not stage1:
        parser.error(f"no checkpoints/last.ckpt below {[str(d) for d in args.dirs]}")
    label, images = test_images(args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        per_model = pool.map(functools.partial(model_points, args=args, images=images), stage1)
        points = [point for points in per_model for point in points]
    write_csv(args.out / "rd_points.csv", points, FIELDS)
    rows = summary(points)
    write_csv(args.out / "summary.csv", rows, rows[0])
    codings = dict.fromkeys(p["coding"] for p in points if p["coding"] != "stage1")
    contrasts = [(coding, "stage1") for coding in codings] + CONTRASTS
    table = markdown([row for c, r in contrasts for row in differences(points, c, r)])
    (args.out / "summary.md").write_text(table)
    print(table)
    means = [{"coding": r["coding"], "bpp": r["bpp_mean"], "psnr": r["psnr_mean"]} for r in rows]
    bd = bd_table(means, reference_coding="stage1")
    write_csv(args.out / "bd.csv", bd, ["coding", "bd_rate_pct", "bd_psnr_db", "note"])
    plot(
        rows,
        f"{label}, {len(images)} images, means over {len({p['seed'] for p in points} - {None})}"
        " seed(s)",
        args.out / "rd.png",
    )
    for row in bd:
        print(row)


if __name__ == "__main__":
    main()
