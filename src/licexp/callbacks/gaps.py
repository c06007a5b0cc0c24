"""Pan et al.'s three gaps, measured live during training and validation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from licexp.backbones import CodecOutput, LearnedCodec
from licexp.backbones.latent_coders import GaussianLatentCoder, HyperLatentCoder
from licexp.gaps import (
    discrete_gap,
    entropy_estimation_gap,
    histogram_figure,
    latent_histogram,
    local_smoothness_score,
    quantisation_error_histogram,
    rate_gap_bits,
)
from licexp.training import CodecModule

LATENT_CODERS = (GaussianLatentCoder, HyperLatentCoder)
"""The modules whose train mode selects the quantisation approximation (any backbone)."""


def log_gaps(module: CodecModule, stage: str, gaps: dict[str, Tensor], batch_size: int) -> None:
    """Logs ``gaps`` as ``<stage>/gaps/<name>`` per epoch (validation), averaged over the ranks."""
    for name, value in gaps.items():
        module.log(
            f"{stage}/gaps/{name}",
            value,
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=True,
        )


def log_training_gaps(trainer: L.Trainer, module: CodecModule, gaps: dict[str, Tensor]) -> None:
    """Writes ``gaps`` as ``train/gaps/<name>`` to the loggers, averaged over the ranks.

    Straight to the loggers, at the step of the batch's own metrics (``global_step - 1``
    after its one optimiser step): ``log(on_step=True)`` would write them only every
    ``log_every_n_steps`` and repeat the last value on every later row of the epoch.
    """
    means = module.mean_over_ranks(gaps)
    metrics = {f"train/gaps/{name}": float(value) for name, value in means.items()}
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step - 1)


@dataclass(frozen=True)
class Histogram:
    """A histogram of one validation, over every rank's latents, and its saved figure."""

    counts: Tensor
    """Fractions of all values per bin (see :mod:`licexp.gaps.histogram`)."""
    edges: Tensor
    step: int
    figure: Path | None
    """The PNG, on the rank that wrote it (global rank 0); ``None`` elsewhere."""


def merge_over_ranks(trainer: L.Trainer, counts: Tensor, num_values: int) -> Tensor:
    """Histogram fractions over the values of all ranks, from each rank's own fractions."""
    device = trainer.strategy.root_device  # NCCL reduces device tensors only
    packed = torch.cat([counts * num_values, counts.new_tensor([num_values])]).to(device)
    total = trainer.strategy.reduce(packed, reduce_op="sum")
    return (total[:-1] / total[-1].clamp_min(1)).cpu()


def in_dtype(x: Tensor, output: CodecOutput, dtype: torch.dtype) -> tuple[Tensor, CodecOutput]:
    """The batch and every floating tensor of ``output`` cast to ``dtype``.

    Under mixed precision a training step's output is partly half precision (autocast's
    convolutions) while the weights stay float32: the measurement re-runs parts of the
    codec on these tensors, so they must be in the weights' precision.
    """

    def cast(values: dict[str, Tensor]) -> dict[str, Tensor]:
        return {
            name: value.to(dtype) if value.is_floating_point() else value
            for name, value in values.items()
        }

    return x.to(dtype), CodecOutput(
        output.x_hat.to(dtype),
        cast(output.likelihoods),
        cast(output.latents),
        cast(output.features),
    )


@contextmanager
def training_quantisation(codec: LearnedCodec) -> Iterator[None]:
    """Runs the latent coders with the training approximation while the rest stays as is.

    Only the quantisation changes: no other module is put into train mode, so e.g. the
    power iterations of a spectral norm are not advanced by a measurement.
    """
    coders = [m for m in codec.modules() if isinstance(m, LATENT_CODERS)]
    modes = [coder.training for coder in coders]
    for coder in coders:
        coder.train()
    try:
        yield
    finally:
        for coder, mode in zip(coders, modes, strict=True):
            coder.train(mode)


class GapMetrics(L.Callback):
    """Logs the discrete gap, the entropy-estimation gap (W1 and rate), and the LSS.

    Names: ``{train,val}/gaps/discrete`` (mean ``|R(y) - Q(y)|^p``),
    ``{train,val}/gaps/entropy_w1`` (W1 between ``round(y)`` and ``mu + delta * sigma``),
    ``{train,val}/gaps/rate_gap_bits`` (training rate estimate minus the rate of the
    rounded latent, bits per pixel) and ``{train,val}/gaps/lss`` (local smoothness score
    of the RD loss around ``Q(y)``). Training steps are measured every ``every_n_steps``
    on the step's own output (no extra forward pass); validation batches are re-run with
    the training approximation. At each validation end, histograms of ``y`` (bin width
    0.05 over [-4, 3], Pan et al.'s Figure 2) and of ``y - round(y)`` are saved as PNG and
    JSON, and kept in :attr:`histograms` for other callbacks (e.g. a tracker's).

    Under DDP every rank measures its own batches: the logged gaps are averaged over the
    ranks and the histograms count the latents of all ranks; rank 0 writes the files.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        p: float = 1.0,
        lss_samples: int = 4,
        lss_scale: float = 0.5,
        histogram_max_values: int = 2_000_000,
        seed: int = 0,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.p = p
        self.lss_samples = lss_samples
        self.lss_scale = lss_scale
        self.histogram_max_values = histogram_max_values
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._resumed_generator: Tensor | None = None
        self._latents: list[Tensor] = []
        self.histograms: dict[str, Histogram] = {}
        """The histograms of the latest validation, by file stem."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Independent Monte-Carlo draws on every rank: their average is then a better estimate.
        self.generator.manual_seed(self.seed + trainer.global_rank)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resumed_generator = state_dict["generator"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed single-process run continues the checkpoint's draws (after the sanity
        # check's); DDP ranks keep their own seeds (the checkpoint holds rank 0's state).
        if self._resumed_generator is not None and trainer.world_size == 1:
            self.generator.set_state(self._resumed_generator)
        self._resumed_generator = None

    def measure(self, module: CodecModule, x: Tensor, output: CodecOutput) -> dict[str, Tensor]:
        """The gaps of one batch, given the codec's training-approximation output.

        Measured in the weights' precision (float32 under every mixed precision), with
        autocast off: the gaps of a bf16 run are comparable with those of a float32 run.
        """
        dtype = next(module.codec.parameters()).dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._measure(module, *in_dtype(x, output, dtype))

    def _measure(self, module: CodecModule, x: Tensor, output: CodecOutput) -> dict[str, Tensor]:
        codec, latents = module.codec, output.latents
        means = latents.get("means")
        hard_latent = codec.hard_latent(latents)
        rounded, hard = hard_latent.encoding.reconstruction, hard_latent.decoder_input
        num_pixels = x.size(0) * x.size(-2) * x.size(-1)
        y_hat, y_rate = latents["y_hat"], latents["y_rate"]

        def rd_loss(perturbed: Tensor) -> Tensor:
            shift = perturbed - y_hat
            likelihoods = dict(output.likelihoods)
            likelihoods["y"] = codec.latent_likelihood(y_rate + shift, latents)
            return module.loss(CodecOutput(codec.synthesize(perturbed), likelihoods), x)["loss"]

        return {
            "discrete": discrete_gap(hard, y_hat, self.p),
            "entropy_w1": entropy_estimation_gap(
                rounded, means, latents["scales"], generator=self.generator
            ),
            "rate_gap_bits": rate_gap_bits(
                output.likelihoods["y"], hard_latent.encoding.likelihoods, num_pixels
            ),
            "lss": local_smoothness_score(
                rd_loss, y_hat, self.lss_scale, self.lss_samples, generator=self.generator
            ),
        }

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, module: CodecModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if module.last_step is None or (trainer.global_step - 1) % self.every_n_steps:
            return
        x, output = module.last_step
        log_training_gaps(trainer, module, self.measure(module, x, output))

    @torch.no_grad()
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        module: CodecModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # Lightning validates under inference mode, whose tensors cannot enter autograd; a
        # strategy may differentiate the rate in training (Soft-STE's FGSM), so the
        # measurement runs outside it, on a normal copy of the batch.
        image = batch["image"]
        dtype = next(module.codec.parameters()).dtype
        with torch.inference_mode(False), torch.autocast(image.device.type, enabled=False):
            x = image.to(dtype, copy=True)
            with training_quantisation(module.codec):
                output = module.codec(x)
            gaps = self.measure(module, x, output)
        log_gaps(module, "val", gaps, x.size(0))
        if sum(t.numel() for t in self._latents) < self.histogram_max_values:
            self._latents.append(output.latents["y"].flatten().cpu())

    def on_validation_epoch_end(self, trainer: L.Trainer, module: CodecModule) -> None:
        # Every rank takes part in the reduction (DistributedSampler gives each a batch).
        if not self._latents or trainer.sanity_checking:
            self._latents.clear()
            return
        values = torch.cat(self._latents)
        self._latents.clear()
        step = trainer.global_step
        out_dir = Path(trainer.default_root_dir) / "gaps"
        self.histograms = {}
        for stem, (counts, edges), title in (
            ("latent_histogram", latent_histogram(values), "y"),
            (
                "quantisation_error_histogram",
                quantisation_error_histogram(values - torch.round(values)),
                "y - round(y)",
            ),
        ):
            counts = merge_over_ranks(trainer, counts, values.numel())
            figure_path = out_dir / f"{stem}_step{step:07d}.png"
            if trainer.is_global_zero:
                self._save(counts, edges, f"{title}, step {step}", step, figure_path)
            self.histograms[stem] = Histogram(
                counts, edges, step, figure_path if trainer.is_global_zero else None
            )

    @staticmethod
    def _save(counts: Tensor, edges: Tensor, title: str, step: int, figure_path: Path) -> None:
        """Writes the histogram as a PNG bar plot and as JSON beside it."""
        figure_path.parent.mkdir(parents=True, exist_ok=True)
        figure = histogram_figure(counts, edges, title)
        figure.savefig(figure_path, dpi=100)
        plt.close(figure)
        data = {"counts": counts.tolist(), "edges": edges.tolist(), "step": step}
        figure_path.with_suffix(".json").write_text(json.dumps(data))
