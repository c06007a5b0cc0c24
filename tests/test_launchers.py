"""Hydra launchers: joblib (a sweep's jobs in parallel processes), submitit on SLURM or locally.

The joblib test runs a real two-job sweep in parallel from the command line a user types; no
SLURM here, so the submitit launchers are checked as far as composing with licexp's config.
"""

from __future__ import annotations

import datetime
import importlib.util
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch
from helpers import compose_train, run_main
from joblib.externals.loky import get_reusable_executor
from omegaconf import OmegaConf

import licexp.train
from licexp.cli import HydraJob

LAUNCHERS = {
    "joblib": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "slurm_gpu": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
}
LAMBDAS = (0.0018, 0.013)
LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_each_launcher_composes_with_the_train_config(launcher) -> None:
    cfg = compose_train(["lmbda=0.013", f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_ == LAUNCHERS[launcher]
    assert cfg.hydra.runtime.choices["hydra/launcher"] == launcher
    assert cfg.lmbda == 0.013 and cfg.trainer.accelerator == "cpu", "the run config is intact"
    if launcher.startswith(("submitit", "slurm")):
        folder = OmegaConf.to_container(cfg.hydra.launcher)["submitit_folder"]
        assert folder == "${hydra.sweep.dir}/.submitit/%j", "submitit's files in the sweep"


@pytest.mark.slow
def test_the_slurm_gpu_preset_asks_one_gpu_and_one_task_per_job() -> None:
    launcher = compose_train(["hydra/launcher=slurm_gpu"]).hydra.launcher
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (1, 1, 1)
    assert launcher.timeout_min > 60 and launcher.mem_gb > 0 and launcher.cpus_per_task > 0
    tuned = compose_train(
        ["hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=32"]
    ).hydra.launcher
    assert (tuned.partition, tuned.mem_gb, tuned.gpus_per_node) == ("gpu", 32, 1)


def test_a_job_pickles_as_a_reference_to_its_entry_point(monkeypatch) -> None:
    """Launchers send the job to other processes by pickle: by reference, not by value, also
    when ``python -m licexp.train`` runs it as ``__main__`` (cloudpickle would copy it)."""
    task = licexp.train.main.__wrapped__
    data = pickle.dumps(HydraJob(task, "licexp-train"))
    assert len(data) < 300 and b"licexp.train" in data
    restored = pickle.loads(data)
    assert isinstance(restored, HydraJob)
    assert restored.task is task and restored.program == "licexp-train"

    main_module = sys.modules["__main__"]
    monkeypatch.setattr(task, "__module__", "__main__")
    monkeypatch.setattr(main_module, "__spec__", importlib.util.find_spec("licexp.train"))
    assert pickle.loads(pickle.dumps(HydraJob(task, "licexp-train"))).task is task
    monkeypatch.setattr(main_module, "__spec__", None)  # python src/licexp/train.py
    with pytest.raises(pickle.PicklingError, match="start it as `python -m <module>`"):
        pickle.dumps(HydraJob(task, "licexp-train"))


def job_interval(log_file: Path) -> tuple[datetime.datetime, datetime.datetime]:
    """The times of the first and of the last line of a job's log file."""
    times = [
        datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        for line in log_file.read_text().splitlines()
        if (match := LOG_LINE.match(line))
    ]
    assert len(times) >= 2, log_file.read_text()
    return times[0], times[-1]


@pytest.mark.slow
def test_joblib_runs_a_sweep_in_parallel_jobs_that_share_nothing_but_the_anchor_cache(
    tmp_path, monkeypatch
) -> None:
    """``licexp-train -m hydra/launcher=joblib ...`` as typed in a folder (run in this process
    to spare a Python start; the jobs run in joblib's worker processes all the same), each
    job's loaders with worker processes of their own (loky's start method fails them)."""
    argv = [
        "licexp-train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "debug=smoke", "data.num_workers=1", "callbacks.progress_bar=null",
        "callbacks.gap_metrics=null",
        f"lmbda={','.join(map(str, LAMBDAS))}",
    ]  # fmt: skip
    try:
        assert run_main(licexp.train.main, argv, monkeypatch, tmp_path) == 0
    finally:
        get_reusable_executor().shutdown(wait=True)  # joblib's workers, kept for reuse

    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert OmegaConf.load(sweep / "multirun.yaml").hydra.launcher.n_jobs == 2
    jobs = [sweep / "0", sweep / "1"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]

    (start_0, end_0), (start_1, end_1) = (job_interval(job / "train.log") for job in jobs)
    assert start_0 < end_1 and start_1 < end_0, "the two jobs ran at the same time"

    for job, lmbda in zip(jobs, LAMBDAS, strict=True):
        checkpoint = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["licexp_config"]["lmbda"] == lmbda, "each job wrote its own checkpoint"
        assert (job / "eval" / "results.json").is_file()

    cache = tmp_path / "logs" / "cache" / "anchors"
    assert len(list(cache.glob("jpeg-*.json"))) == 1, "one measurement, read by the other job"
    assert not list(cache.glob("*.tmp")), "no half-written cache file left"


@pytest.mark.slow
def test_ddp_under_joblib_is_refused_with_the_launchers_that_can(
    tmp_path, monkeypatch, capfd
) -> None:
    """Lightning would start DDP's ranks with the joblib worker's command line: refused
    before anything is built, naming what works instead."""
    argv = ["licexp-train", "-m", "hydra/launcher=joblib", "trainer=ddp", "debug=smoke"]
    try:
        assert run_main(licexp.train.main, argv, monkeypatch, tmp_path) == 1
    finally:
        get_reusable_executor().shutdown(wait=True)
    error = capfd.readouterr().err
    assert "trainer=ddp cannot run under hydra/launcher=joblib" in error
    assert "submitit_slurm" in error
    (job,) = (tmp_path / "logs" / "train" / "multiruns").glob("*/0")
    assert not (job / "checkpoints").exists()
