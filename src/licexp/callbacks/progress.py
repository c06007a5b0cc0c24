"""Console output of a training run: progress by steps, a one-line model summary.

licexp trains for ``trainer.max_steps`` with ``max_epochs=-1`` (an epoch of the procedural
data has no meaning), where Lightning's Rich bar counts batches of an epoch and reads
``Epoch 0/-2``; and its model summary prints a FLOPs column of zeros, since the codec
declares no example input.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, RichProgressBar
from lightning.pytorch.utilities.model_summary import get_human_readable_count

log = logging.getLogger(__name__)


class StepProgressBar(RichProgressBar):
    """Lightning's Rich progress bar, counting training steps out of ``trainer.max_steps``
    (a resumed run starts at its checkpoint's step); epochs only where they bound training."""

    def _counts_steps(self) -> bool:
        return self.trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._counts_steps() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if self._counts_steps():
            return f"{'Training':{len(self.validation_description)}}"
        return super()._get_train_description(current_epoch)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._counts_steps():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()


class ParameterSummary(ModelSummary):
    """One log line with the model's parameter counts instead of Lightning's table."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        **summarize_kwargs: Any,
    ) -> None:
        types = dict(summary_data).get("Type", [])
        log.info(
            "Model: %s, %s parameters (%s trainable, %.1f MB)",
            types[0] if types else "codec",
            get_human_readable_count(total_parameters),
            get_human_readable_count(trainable_parameters),
            model_size,
        )
