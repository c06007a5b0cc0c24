"""The entry points' contract with a shell: one-line errors, conventional exit statuses."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from helpers import REPO_ROOT, run_main

from licexp import eval as licexp_eval
from licexp import train as licexp_train
from licexp.cli import INTERRUPTED, TERMINATED, error_message, run_reporting_errors

BAD_VALUES = [
    ("lmbda=-1", "lmbda"),
    ("seed=abc", "seed"),
    ("distortion=psnr", "distortion"),
    ("logger=wandb logger.wandb.mode=sometimes", "logger.wandb.mode"),
    ("quant=tcq quant.states=5", "states"),
    ("data.batch_size=0", "batch_size"),
    ("ckpt_path=missing.ckpt", "missing.ckpt"),
    ("init_from=missing.ckpt", "missing.ckpt"),
    ("trainer.max_steps=0", "max_steps"),
    ("evaluation.anchors_source=pubished", "anchors_source"),  # before training, not after
]


@pytest.mark.parametrize(("overrides", "named"), BAD_VALUES)
def test_a_bad_config_value_is_one_line_naming_it_without_a_traceback(
    overrides, named, monkeypatch, capfd, tmp_path
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    argv = ["licexp-train", "debug=smoke", "evaluate=false", *overrides.split()]
    status = run_main(licexp_train.main, argv, monkeypatch, tmp_path)
    err = capfd.readouterr().err
    assert status == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("licexp-train: error:")]
    assert len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err, err


def test_hydra_full_error_shows_the_traceback(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    argv = ["licexp-train", "debug=smoke", "evaluate=false", "lmbda=-1"]
    with pytest.raises(Exception, match="lmbda"):
        run_main(licexp_train.main, argv, monkeypatch, tmp_path)


def test_eval_errors_are_one_line_too(monkeypatch, capfd, tmp_path) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    argv = ["licexp-eval", "ckpt_path=nowhere/last.ckpt"]
    assert run_main(licexp_eval.main, argv, monkeypatch, tmp_path) == 1
    err = capfd.readouterr().err
    assert "licexp-eval: error: checkpoint not found: nowhere/last.ckpt" in err
    assert "Traceback" not in err


def test_error_message_unwraps_hydra_and_joins_lines() -> None:
    from hydra.errors import InstantiationException

    try:
        try:
            raise ValueError("lmbda must be\n positive, got -1")
        except ValueError as inner:
            raise InstantiationException("Error in call to target 'x'") from inner
    except InstantiationException as wrapped:
        assert error_message(wrapped) == "lmbda must be positive, got -1"


def test_ctrl_c_outside_lightning_exits_130(capsys) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        run_reporting_errors(interrupted, "licexp-eval")
    assert stop.value.code == INTERRUPTED == 130
    assert "interrupted" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, INTERRUPTED), (signal.SIGTERM, TERMINATED)]
)
def test_a_signalled_training_exits_with_128_plus_the_signal(tmp_path, signum, status) -> None:
    """Ctrl-C gives 130 and SIGTERM 143, after last.ckpt is written (the shell's convention,
    what schedulers such as SLURM read)."""
    command = [
        str(REPO_ROOT / ".venv" / "bin" / "licexp-train"),
        "debug=smoke",
        "evaluate=false",
        "trainer.max_steps=100000",
        "trainer.val_check_interval=100000",
        "callbacks.last_checkpoint.every_n_steps=1",
    ]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        # a background job starts with Ctrl-C ignored; a terminal's does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob("logs/train/runs/*/checkpoints/last.ckpt")):
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.5)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == status, output[-3000:]
