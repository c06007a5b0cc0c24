"""Hydra jobs under DDP: the command line and directory of the re-launched ranks, cleanup."""

from __future__ import annotations

import os
import sys

import pytest
from helpers import compose_train, run_training
from hydra.core.hydra_config import HydraConfig

from licexp.distributed import hydra_ddp_job, job_command_line


def test_a_sweep_jobs_ranks_get_the_jobs_overrides_and_keep_the_options() -> None:
    argv = ["train.py", "-m", "lmbda=0.1,0.2", "--config-name", "train", "~callbacks.x", "q=ste"]
    job = ["lmbda=0.2", "~callbacks.x", "q=ste"]
    assert job_command_line(argv, job) == ["train.py", "--config-name", "train", *job]


def test_multirun_job_relaunches_ranks_in_its_own_directory_then_cleans_up(monkeypatch) -> None:
    compose_train(
        [
            "lmbda=0.2",
            "hydra.mode=MULTIRUN",
            "hydra.sweep.dir=/sweeps/ladder",
            "hydra.runtime.output_dir=/sweeps/ladder/1",
        ]
    )
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "lmbda=0.1,0.2"])
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    run_dir_before = HydraConfig.get().run.dir
    with hydra_ddp_job():
        # What Lightning's launcher reads to build the ranks' command line.
        assert sys.argv == ["train.py", "lmbda=0.2"]
        assert HydraConfig.get().run.dir == "/sweeps/ladder/1"
        os.environ["LOCAL_RANK"] = "0"  # as the launcher sets it
    assert sys.argv == ["train.py", "-m", "lmbda=0.1,0.2"]
    assert HydraConfig.get().run.dir == run_dir_before
    assert "LOCAL_RANK" not in os.environ, "the next job must launch its own ranks"


@pytest.mark.slow
def test_a_sweep_on_two_ranks_trains_every_job_in_its_own_directory(tmp_path) -> None:
    result = run_training(
        "-m",
        "lmbda=0.0067,0.013",
        "debug=smoke",
        "trainer=ddp_cpu",
        "evaluate=false",
        f"hydra.sweep.dir={tmp_path}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job, lmbda in (("0", 0.0067), ("1", 0.013)):
        assert (tmp_path / job / "checkpoints" / "last.ckpt").is_file()
        assert (tmp_path / job / "train_ddp_process_1.log").is_file(), "rank 1 ran the job here"
        assert f"lmbda: {lmbda}" in (tmp_path / job / ".hydra" / "config.yaml").read_text()
    assert result.stdout.count("Launching 2 jobs") == 1, "rank 1 did not run the sweep again"
