"""A run's state on disk: last.ckpt is the latest state, interruptions resume exactly."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from licexp.backbones import MeanScaleHyperprior
from licexp.callbacks import GapMetrics, LastCheckpoint
from licexp.data import DeadLeavesDataset, ImageDataModule
from licexp.quant import NoiseQuantization
from licexp.training import CodecModule, RateDistortionLoss
from licexp.training.checkpoint_io import AtomicCheckpointIO


class SignalAtStep(L.Callback):
    """Sends ``signum`` to this process at the end of training step ``step``."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class StepsTrained(L.Callback):
    """The global step at the start of every training step, and last.ckpt's step then."""

    def __init__(self, last: Path) -> None:
        self.last, self.steps, self.last_steps = last, [], []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.steps.append(trainer.global_step)
        on_disk = torch.load(self.last, weights_only=True) if self.last.exists() else None
        self.last_steps.append(None if on_disk is None else on_disk["global_step"])


def fit(
    out: Path,
    max_steps: int,
    ckpt_path: Path | None = None,
    every_n_steps: int | None = None,
    extra: list[L.Callback] | None = None,
    val_check_interval: int = 3,
) -> tuple[CodecModule, GapMetrics, StepsTrained]:
    """A seeded noise-quantised run: 5 batches of 2 per epoch (epochs end at steps 5, 10),
    a validation every ``val_check_interval`` batches, gap metrics every 2 steps."""
    L.seed_everything(0)
    codec = MeanScaleHyperprior(N=16, M=24, quantizer=NoiseQuantization())
    module = CodecModule(codec, RateDistortionLoss(0.01), torch.optim.Adam, torch.optim.Adam)
    data = ImageDataModule(
        DeadLeavesDataset(length=10, size=64, seed=3),
        DeadLeavesDataset(length=1, size=64, seed=4),
        batch_size=2,
        seed=5,
    )
    gaps = GapMetrics(every_n_steps=2, lss_samples=1)
    steps = StepsTrained(out / LastCheckpoint.FILE_NAME)
    trainer = quiet_trainer(
        max_steps=max_steps,
        callbacks=[gaps, steps, LastCheckpoint(out, every_n_steps), *(extra or [])],
        plugins=[AtomicCheckpointIO()],
        val_check_interval=val_check_interval,
        num_sanity_val_steps=1,
        default_root_dir=out,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, gaps, steps


def test_last_checkpoint_is_the_final_state_after_the_last_validation(tmp_path) -> None:
    """13 steps validating every 4: last.ckpt is step 13 (Lightning's own was step 12)."""
    module, _, _ = fit(tmp_path, max_steps=13, val_check_interval=4)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 13
    for name, value in module.state_dict().items():
        assert torch.equal(last["state_dict"][name], value), name


def test_last_checkpoint_is_written_every_n_steps(tmp_path) -> None:
    _, _, steps = fit(tmp_path, max_steps=7, every_n_steps=2)
    assert steps.steps == list(range(7))
    assert steps.last_steps == [None, None, 2, 2, 4, 4, 6]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_runs_weights(
    tmp_path, request, signum
) -> None:
    """Interrupted mid-epoch after step 7, resumed to step 12: the weights, the aux and main
    optimiser states and the gap metrics' random stream end bit-identical to one
    uninterrupted run; the resumed run trains only steps 8 to 12. Ctrl-C and SIGTERM stop
    after the step in flight; neither is allowed to reach Python's default handler."""
    # A background job (CI, nohup) starts with Ctrl-C ignored, which the callback respects.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    reference, reference_gaps, _ = fit(tmp_path / "reference", max_steps=12)
    interrupted = tmp_path / "interrupted"
    expected = KeyboardInterrupt if signum == signal.SIGINT else SIGTERMException
    stop = SystemExit if signum == signal.SIGINT else expected  # Lightning: sys.exit(1)
    with pytest.raises(stop):
        fit(interrupted, max_steps=12, extra=[SignalAtStep(7, signum)])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    saved = torch.load(interrupted / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 7

    resumed, resumed_gaps, steps = fit(
        interrupted, max_steps=12, ckpt_path=interrupted / "last.ckpt"
    )
    assert steps.steps == [7, 8, 9, 10, 11]
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    for ours, theirs in zip(resumed.optimizers(), reference.optimizers(), strict=True):
        for a, b in zip(ours.state.values(), theirs.state.values(), strict=True):
            assert torch.equal(a["exp_avg"], b["exp_avg"])
    assert torch.equal(resumed_gaps.generator.get_state(), reference_gaps.generator.get_state())


def test_a_resume_with_another_batch_size_is_refused(tmp_path) -> None:
    fit(tmp_path, max_steps=2)
    codec = MeanScaleHyperprior(N=16, M=24, quantizer=NoiseQuantization())
    module = CodecModule(codec, RateDistortionLoss(0.01), torch.optim.Adam, torch.optim.Adam)
    data = ImageDataModule(
        DeadLeavesDataset(length=10, size=64, seed=3), DeadLeavesDataset(length=1, size=64)
    )
    data.batch_size = 1
    trainer = L.Trainer(max_steps=3, logger=False, enable_progress_bar=False, limit_val_batches=0)
    with pytest.raises(ValueError, match="training stream was .*batch_size.: 2"):
        trainer.fit(module, datamodule=data, ckpt_path=tmp_path / "last.ckpt")


def test_a_checkpoint_write_that_fails_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, path)

    def dies_midway(obj: Any, file: Any) -> None:
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is killed while writing

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, path)
    assert torch.load(path, weights_only=True) == {"global_step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no partial file is left"


def test_two_runs_with_one_seed_are_identical_and_the_data_order_follows_the_seed(tmp_path):
    """Same seed, same machine, same thread count: the same weights to the bit."""
    first, _, _ = fit(tmp_path / "first", max_steps=4)
    second, _, _ = fit(tmp_path / "second", max_steps=4)
    for name, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[name], value), name
    other = ImageDataModule(
        DeadLeavesDataset(length=10, size=64, seed=3), DeadLeavesDataset(1, 64), batch_size=2
    )
    first_batch = next(iter(other.train_dataloader()))["name"]
    reseeded = ImageDataModule(
        DeadLeavesDataset(length=10, size=64, seed=3), DeadLeavesDataset(1, 64), 2, seed=6
    )
    assert next(iter(reseeded.train_dataloader()))["name"] != first_batch
