"""``last.ckpt``: the latest state of a run, written often enough to resume from."""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class LastCheckpoint(Checkpoint):
    """Keeps ``<dirpath>/last.ckpt`` the latest state of the run.

    Written every ``every_n_steps`` training steps, at the end of training (after the last
    validation), and when the run is interrupted: by SIGTERM (a scheduler; Lightning's
    signal handler stops the run after the current step) or by Ctrl-C, which this callback
    turns into the same stop after the current step. Every write is at a step boundary, so
    ``ckpt_path=.../last.ckpt`` resumes to the step it names; a second Ctrl-C aborts at
    once and keeps the previous ``last.ckpt``. The best-validation checkpoint stays
    Lightning's ``ModelCheckpoint``.

    Args:
        dirpath: the checkpoint folder.
        every_n_steps: training steps between writes; ``None`` or 0: only at the end and
            on interruption.
    """

    FILE_NAME = "last.ckpt"

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = 250) -> None:
        if every_n_steps is not None and every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0 or None, got {every_n_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps or 0
        self.saved_step: int | None = None
        """The global step of the latest ``last.ckpt`` written by this run."""
        self._interrupted = False
        self._previous_sigint: Any = None

    @property
    def path(self) -> Path:
        return self.dirpath / self.FILE_NAME

    @property
    def last_model_path(self) -> str:
        """The latest ``last.ckpt`` of this run, or ``""`` if none was written yet."""
        return "" if self.saved_step is None else str(self.path)

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume
        self.saved_step = trainer.global_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._interrupted = False
        self._previous_sigint = None
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # nohup: Ctrl-C stays ignored
            return
        with contextlib.suppress(ValueError):  # not the main thread: Ctrl-C keeps its default
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        log.warning(
            "Ctrl-C: stopping after this step and writing %s (press Ctrl-C again to abort "
            "at once, keeping the previous one)",
            self.path,
        )
        self._interrupted = True
        self._restore_sigint()

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        interrupted = self._interrupted or trainer.received_sigterm
        if trainer.world_size > 1:  # every rank must take part in a save
            interrupted = trainer.strategy.reduce_boolean_decision(interrupted, all=False)
        step = trainer.global_step
        periodic = bool(self.every_n_steps) and step % self.every_n_steps == 0
        final = 0 < trainer.max_steps <= step  # on_train_end writes it, after validation
        if interrupted or (periodic and not final):
            self.save(trainer)
        if interrupted:
            log.warning(
                "Interrupted at step %d: resume with ckpt_path=%s (and the run's overrides)",
                step,
                self.path,
            )
            if self._interrupted:
                raise KeyboardInterrupt  # Lightning's graceful shutdown; SIGTERM: its own stop

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()
        self.save(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_sigint()
        interrupted = isinstance(exception, KeyboardInterrupt | SIGTERMException)
        if interrupted and self.saved_step != trainer.global_step:
            log.warning(
                "Interrupted within step %d (a second Ctrl-C, or SIGTERM in a validation): "
                "%s keeps step %s",
                trainer.global_step + 1,
                self.path,
                self.saved_step,
            )
