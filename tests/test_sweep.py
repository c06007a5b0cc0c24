"""Sweeps end to end: a real multirun, ``licexp.rd`` on it, the lambda sets, fine-tuning, Optuna.

One multirun subprocess serves every test here (each Python start costs seconds).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import subprocess
import sys
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from helpers import REPO_ROOT, compose_train
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationToMissingValueError
from rich.console import Console

from licexp import rd
from licexp.checkpoints import CheckpointError
from licexp.evaluation.results import load_curve, save_curve
from licexp.train import train

LAMBDAS = (0.0018, 0.013)
QUICK = [
    "debug=smoke",
    "callbacks.progress_bar=null",
    "callbacks.gap_metrics=null",  # measured in tests of their own
    "evaluation.anchors=[]",  # Pillow anchors: tested elsewhere, slow here
]
ENTROPY_TABLES = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def run_train(*overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "licexp.train", *overrides],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(
            f"licexp.train {overrides} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """``-m lambdas=jiang6 lmbda=a,b``: the lambda set composes and the command line wins."""
    sweep = tmp_path_factory.mktemp("sweep")
    lambdas = ",".join(map(str, LAMBDAS))
    run_train("-m", *QUICK, "lambdas=jiang6", f"lmbda={lambdas}", f"hydra.sweep.dir={sweep}")
    return sweep


def rd_main(*args: object) -> str:
    buffer = io.StringIO()
    assert rd.main([str(a) for a in args], console=Console(file=buffer, width=300)) == 0
    return buffer.getvalue()


def test_a_multirun_makes_one_run_per_lambda_and_rd_draws_their_curve(sweep_dir, tmp_path) -> None:
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    output = rd_main(sweep_dir, "--out", tmp_path / "rd")

    (curve_file,) = [p for p in (tmp_path / "rd").glob("*.json")]
    curve = load_curve(curve_file)
    assert curve.name == "mean_scale_small-noise", "identical overrides do not split curves"
    assert sorted(curve.extra["lmbda"]) == list(LAMBDAS)
    assert curve.bpp == sorted(curve.bpp) and len(curve) == 2
    for lmbda, bpp in zip(curve.extra["lmbda"], curve.bpp, strict=True):
        job = str(LAMBDAS.index(lmbda))
        assert load_curve(sweep_dir / job / "eval" / "results.json").bpp == [bpp]
    assert (tmp_path / "rd" / "rd.png").stat().st_size > 10_000
    assert "BD against mean_scale_small-noise" in output, "not Kodak: no Kodak anchor as reference"

    # A reference 0.5 dB above the sweep at every rate: BD-PSNR of the sweep is exactly -0.5.
    # (BD-PSNR needs distinct rates only; BD-rate also needs PSNR to rise with the rate, which
    # models four steps into training need not do.)
    shifted = load_curve(curve_file)
    shifted.name, shifted.psnr = "shifted", [p + 0.5 for p in curve.psnr]
    save_curve(shifted, tmp_path / "shifted.json")
    rd_main(sweep_dir, "--anchor", tmp_path / "shifted.json", "--reference", "shifted",
            "--out", tmp_path / "rd2")  # fmt: skip
    with open(tmp_path / "rd2" / "bd.csv") as file:
        (row,) = [row for row in csv.DictReader(file) if row["curve"] == curve.name]
    assert row["reference"] == "shifted"
    assert float(row["bd_psnr_db"]) == pytest.approx(-0.5, abs=1e-9)


def _jobs(overrides: list[str]) -> set[tuple[str, str, float]]:
    """(quant, lambdas, lmbda) of the jobs Hydra's basic sweeper launches for ``-m overrides``."""
    cfg = compose_train([o for o in overrides if "," not in o])
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.params or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params + overrides)
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    jobs = [dict(override.split("=", 1) for override in job) for job in batch]
    assert len(jobs) == len({tuple(sorted(job.items())) for job in jobs}), "no job twice"
    return {(job.get("quant", ""), job["lambdas"], float(job["lmbda"])) for job in jobs}


def test_lambda_sets_sweep_their_lambdas_and_compose_with_other_sweeps() -> None:
    compressai8 = [0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483, 0.0932, 0.18]
    assert _jobs(["lambdas=compressai8", "quant=noise,ste"]) == {
        (quant, "compressai8", lmbda)
        for quant, lmbda in itertools.product(["noise", "ste"], compressai8)
    }
    assert _jobs(["lambdas=jiang6"]) == {("", "jiang6", lmbda) for lmbda in compressai8[:6]}
    assert str(compose_train(["lambdas=jiang6"]).hydra.mode) == "RunMode.MULTIRUN"


def _train_in_process(overrides: list[str]) -> DictConfig:
    cfg = compose_train(overrides)
    with open_dict(cfg):
        del cfg["hydra"]  # composed with Hydra's runtime set; the job itself never sees it
    return cfg


def test_init_from_loads_the_weights_but_not_the_step_or_the_optimiser(sweep_dir, tmp_path) -> None:
    base_path = sweep_dir / "0" / "checkpoints" / "last.ckpt"
    base = torch.load(base_path, weights_only=False)
    assert base["global_step"] == 4
    cfg = _train_in_process([
        *QUICK, "logger=none", "evaluate=false", f"init_from={base_path}",
        "trainer.max_steps=2", "model.optimizer.lr=0", "model.aux_optimizer.lr=0",
        f"paths.output_dir={tmp_path}",
    ])  # fmt: skip
    train(cfg)

    tuned = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert tuned["global_step"] == 2, "a fresh step count, not resumed at 4"
    adam_steps = {float(s["step"]) for s in tuned["optimizer_states"][0]["state"].values()}
    assert adam_steps == {2.0}, "a fresh optimiser state"
    weights = [k for k in base["state_dict"] if not k.endswith(ENTROPY_TABLES)]
    for key in weights:  # learning rate 0: the weights stay those of init_from
        assert torch.equal(tuned["state_dict"][key], base["state_dict"][key]), key

    L.seed_everything(cfg.seed)
    untrained = hydra.utils.instantiate(cfg.backbone, quantizer=hydra.utils.instantiate(cfg.quant))
    assert not torch.equal(
        untrained.state_dict()["g_a.0.weight"], base["state_dict"]["codec.g_a.0.weight"]
    )


def test_init_from_refuses_another_backbone(sweep_dir, tmp_path) -> None:
    ckpt = sweep_dir / "0" / "checkpoints" / "last.ckpt"
    cfg = _train_in_process(
        [
            *QUICK,
            "logger=none",
            f"init_from={ckpt}",
            f"paths.output_dir={tmp_path}",
            "backbone.N=32",
        ]
    )
    with pytest.raises(CheckpointError, match="holds a different backbone"):
        train(cfg)


def test_lambda_finetune_is_pan_et_al_recipe_and_needs_a_base_checkpoint() -> None:
    cfg = compose_train(["experiment=lambda_finetune"])
    assert cfg.lmbda == 0.01 and cfg.backbone.N == 128 and cfg.backbone.M == 192
    assert cfg.model.optimizer.lr == 1e-4 and cfg.model.scheduler is None
    assert cfg.trainer.max_steps == 100_000
    with pytest.raises(InterpolationToMissingValueError, match="base_checkpoint"):
        _ = cfg.init_from
    assert (
        compose_train(["experiment=lambda_finetune", "base_checkpoint=x.ckpt"]).init_from
        == "x.ckpt"
    )


def test_optuna_search_composes() -> None:
    cfg = compose_train(["hparams_search=optuna_lr_n"])
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert set(cfg.hydra.sweeper.params) == {"model.optimizer.lr", "backbone.N"}
    assert OmegaConf.select(cfg, "hydra.sweeper.direction") == "minimize"


@pytest.mark.slow
def test_optuna_search_runs_two_trials(tmp_path) -> None:
    result = run_train(
        *QUICK, "hparams_search=optuna_lr_n", "hydra.sweeper.n_trials=2", "evaluate=false",
        f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert "Best parameters" in result.stdout + result.stderr
    assert len(list(tmp_path.glob("*/checkpoints/last.ckpt"))) == 2
