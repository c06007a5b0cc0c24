"""Lightning training of a codec: rate-distortion loss, main and aux optimisers."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from licexp.backbones import CodecOutput, LearnedCodec
from licexp.backbones.base import resize_entropy_buffers
from licexp.evaluation.metrics import ms_ssim_batch, psnr_batch
from licexp.training.compiling import compile_transforms, compiled_transforms_in
from licexp.training.freezing import freeze_all_but, modules_of_roles
from licexp.training.loss import RateDistortionLoss

OptimizerFactory = Callable[[Iterator[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler]

FROZEN_KEY = "licexp_frozen_modules"
"""Checkpoint entry naming the codec modules that were frozen (``model.trainable``)."""

RNG_KEY = "licexp_rng_states"
"""Checkpoint entry with the global random states at the time the checkpoint was written."""

AUX_PARAMETER_SUFFIX = ".quantiles"
"""``EntropyBottleneck.quantiles`` are trained by the aux loss alone (CompressAI)."""


class DivergenceError(RuntimeError):
    """A non-finite loss, aux loss or gradient norm: the run stops before taking the step."""


def split_parameters(codec: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Splits the parameters into the main (RD loss) and the aux (quantiles) groups."""
    main, aux = [], []
    for name, parameter in codec.named_parameters():
        if parameter.requires_grad:
            (aux if name.endswith(AUX_PARAMETER_SUFFIX) else main).append(parameter)
    return main, aux


def rng_states() -> dict[str, Any]:
    """The global random states of torch (CPU and CUDA), numpy and Python, in the types that
    ``torch.load(weights_only=True)`` reads (tensors, tuples, numbers)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restores what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


class CodecModule(L.LightningModule):
    """Trains a :class:`LearnedCodec` on ``lambda * D + R`` with manual optimisation.

    Two optimisers step every batch: the main one on the RD loss (gradient norm clipped)
    and the aux one on ``codec.aux_loss()``, which fits the ``EntropyBottleneck``
    quantiles used by the real entropy coder; each validation first sets them to the
    learned density's own (:meth:`~licexp.backbones.LearnedCodec.fit_quantiles`).

    ``scheduler`` (``conf/scheduler/``) is stepped after every main optimiser step, or, for
    a ``ReduceLROnPlateau`` (e.g. :class:`~licexp.training.schedules.PlateauDecay`), after
    every validation with the value of the metric it monitors (its ``monitor``, else
    ``val/loss``).

    ``trainable`` (roles of ``codec.module_roles``, e.g. ``["synthesis"]``) trains only
    those modules: every other parameter is frozen and its module kept in eval mode
    (:func:`~licexp.training.freezing.freeze_all_but`). With the latent coders frozen the
    forward pass quantises exactly as at inference: stage 2 of Borzechowski et al.

    ``compile`` runs the training and validation steps with ``torch.compile``'d transforms
    (``g_a``, ``g_s``, ``h_a``, ``h_s``; ``compile_options`` are ``torch.compile``'s keyword
    arguments); everything outside the steps uses the eager ones
    (:mod:`~licexp.training.compiling`).
    """

    def __init__(
        self,
        codec: LearnedCodec,
        loss: RateDistortionLoss,
        optimizer: OptimizerFactory,
        aux_optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        clip_grad_norm: float | None = 1.0,
        trainable: Sequence[str] | None = None,
        compile: bool = False,
        compile_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(compile, bool):
            raise ValueError(f"model.compile must be true or false, got {compile!r}")
        self.automatic_optimization = False
        self.codec = codec
        self.loss = loss
        self.optimizer_factory = optimizer
        self.aux_optimizer_factory = aux_optimizer
        self.scheduler_factory = scheduler
        self.clip_grad_norm = clip_grad_norm
        self.run_config: dict[str, Any] = {}
        """The resolved run configuration, stored in every checkpoint to rebuild the codec."""
        self.last_step: tuple[Tensor, CodecOutput] | None = None
        """The latest (batch, output) of a training or validation step, for callbacks that
        measure the model at the state it was trained in (e.g. the gap metrics)."""
        self._resumed_rng: dict[str, Any] | None = None
        self.frozen_modules: list[str] = []
        """Codec modules frozen by ``trainable`` (kept in eval mode)."""
        if trainable is not None:
            self.frozen_modules = freeze_all_but(codec, modules_of_roles(codec, trainable))
            self.train(self.training)
        self.compiled_transforms: dict[str, nn.Module] = (
            compile_transforms(codec, compile_options or {}) if compile else {}
        )
        """Name -> compiled transform, swapped into the codec during the steps (plain dict:
        the wrappers share the codec's parameters and stay out of the state dict)."""

    def train(self, mode: bool = True) -> CodecModule:
        """``nn.Module.train``, leaving the frozen modules in eval mode."""
        super().train(mode)
        for name in self.frozen_modules:
            self.codec.get_submodule(name).eval()
        return self

    def configure_optimizers(self) -> Any:
        main, aux = split_parameters(self.codec)
        if not main:
            raise ValueError("model.trainable leaves no parameter to train")
        optimizer = self.optimizer_factory(main)
        # Frozen quantiles (stage 2) leave the aux optimiser nothing to fit.
        optimizers = [optimizer, self.aux_optimizer_factory(aux)] if aux else [optimizer]
        if self.scheduler_factory is None:
            return optimizers
        scheduler = self.scheduler_factory(optimizer)
        interval = "epoch" if isinstance(scheduler, ReduceLROnPlateau) else "step"
        return optimizers, [{"scheduler": scheduler, "interval": interval}]

    def _step_terms(self, x: Tensor) -> dict[str, Tensor]:
        with compiled_transforms_in(self.codec, self.compiled_transforms):
            output = self.codec(x)
        self.last_step = (x.detach(), output.detach())
        terms = self.loss(output, x, self.global_step)
        with torch.no_grad():
            x_hat = output.x_hat.detach()
            terms["psnr"] = psnr_batch(x, x_hat).mean()
            terms["ms_ssim"] = ms_ssim_batch(x, x_hat.clamp(0, 1)).mean()
        return terms

    def on_fit_start(self) -> None:
        # Before the sanity check: what the strategy measures of the model (TCQ's and
        # RDOQ's channel_weights=sensitivity) is measured once, on the starting weights.
        self.codec.quantizer.calibrate(self.codec)

    def on_train_start(self) -> None:
        """Sets the global random stream that the training steps draw from.

        A resumed single-process run continues the checkpoint's stream (restored here, after
        the sanity check has drawn from it), so it ends where the uninterrupted run does.
        Every DDP rank is seeded alike; the stream is offset by the rank, or all ranks would
        draw the same quantisation noise for their different images, and on resuming by the
        step (the checkpoint holds rank 0's state only): deterministic, not the same draws.
        """
        world, resumed = self.trainer.world_size, self._resumed_rng
        if world == 1 and resumed is not None:
            set_rng_states(resumed)
        elif world > 1:
            torch.manual_seed(torch.initial_seed() + self.global_rank + world * self.global_step)
        self._resumed_rng = None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        optimizers = self.optimizers()
        optimizer, *aux_optimizer = optimizers if isinstance(optimizers, list) else [optimizers]
        terms = self._step_terms(batch["image"])
        aux_loss = self.codec.aux_loss()

        # One backward pass for both losses. The RD loss gives the quantiles no gradient
        # (the quantisers detach the median) and the aux loss gives the other parameters
        # none (CompressAI detaches the density it evaluates at the quantiles), so each
        # optimiser gets the gradient of its own loss, as with two passes. Under DDP the
        # one pass is one reduction: every parameter, quantiles included, gets a gradient
        # in every step (find_unused_parameters=False suffices), DDP averages all of them
        # over the ranks, and the ranks take identical steps. A second, aux-only pass fails
        # under DDP: the first pass leaves the quantiles' bucket unreduced ("parameters
        # that were not used in producing the loss"); find_unused_parameters=True would
        # mend it at the price of a graph search per pass. The aux loss is now taken before
        # the main step (CompressAI: after it), a one-step lag behind the density that the
        # quantiles track.
        optimizer.zero_grad(set_to_none=True)
        for aux in aux_optimizer:
            aux.zero_grad(set_to_none=True)
        self.manual_backward(terms["loss"] + aux_loss if aux_optimizer else terms["loss"])
        gradients = [
            p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None
        ]
        self._stop_if_diverged(
            {
                "loss": terms["loss"],
                "aux loss": aux_loss,
                "gradient norm": torch.nn.utils.get_total_norm(gradients),
            }
        )
        if self.clip_grad_norm:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.clip_grad_norm, gradient_clip_algorithm="norm"
            )
        optimizer.step()
        # The aux step goes to the wrapped torch optimiser: a LightningOptimizer's step()
        # would advance trainer.global_step a second time per batch, halving max_steps.
        for aux in aux_optimizer:
            aux.optimizer.step()

        scheduler = self.lr_schedulers()
        if scheduler is not None and not isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step()

        terms["aux_loss"] = aux_loss.detach()
        terms = self.mean_over_ranks(terms)
        terms["lr"] = torch.tensor(optimizer.param_groups[0]["lr"])
        self._log_terms("train", terms, batch["image"].size(0), on_step=True, on_epoch=False)
        return terms["loss"]

    def _stop_if_diverged(self, values: dict[str, Tensor]) -> None:
        """Raises :class:`DivergenceError` naming the step and the non-finite terms.

        Called before the optimisers step, so the weights stay those of the last finite
        step and no checkpoint with non-finite weights can follow. Under DDP the gradients
        are already averaged, so every rank stops at the same step.
        """
        bad = [name for name, value in values.items() if not torch.isfinite(value).all()]
        if not bad:
            return
        written = [getattr(c, "last_model_path", "") for c in self.trainer.checkpoint_callbacks]
        last = next((path for path in written if path), "")
        lr = self.base_lr()
        lower_lr = f"a lower learning rate (model.optimizer.lr={lr / 10:g} instead of {lr:g})"
        advice = (
            f"resume from the last good checkpoint with ckpt_path={last} and {lower_lr}"
            if last
            else f"no checkpoint was written before it: start again with {lower_lr}"
        )
        raise DivergenceError(
            f"training diverged at step {self.global_step + 1}: non-finite {', '.join(bad)}. "
            f"The step was not taken, the weights are those of step {self.global_step}; "
            f"{advice}"
        )

    def base_lr(self) -> float:
        """The main optimiser's learning rate before any schedule (``model.optimizer.lr``)."""
        optimizers = self.optimizers()
        group = (optimizers[0] if isinstance(optimizers, list) else optimizers).param_groups[0]
        return group.get("initial_lr", group["lr"])  # a scheduler keeps the base as initial_lr

    def mean_over_ranks(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """The terms averaged over the DDP ranks (the global batch) in one all-reduce."""
        names = list(terms)
        stacked = torch.stack([terms[name].detach().float() for name in names])
        return dict(
            zip(names, self.trainer.strategy.reduce(stacked, reduce_op="mean"), strict=True)
        )

    def on_validation_start(self) -> None:
        # Validation and the checkpoints written after it code z with fitted quantiles,
        # as the evaluation does; the aux loss fits them too slowly in short runs.
        self.codec.fit_quantiles()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        terms = self._step_terms(batch["image"])
        self._log_terms("val", terms, batch["image"].size(0), on_step=False, on_epoch=True)

    def on_validation_end(self) -> None:
        """Steps a plateau schedule with the validation's value of the metric it monitors.

        Here the epoch's metrics are final (averaged over the batches and the ranks, so every
        rank takes the same step); a validation outside ``fit`` or the sanity check leaves
        the schedule alone.
        """
        trainer = self.trainer
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        scheduler = self.lr_schedulers()
        if not isinstance(scheduler, ReduceLROnPlateau):
            return
        monitor = getattr(scheduler, "monitor", "val/loss")
        if monitor not in trainer.callback_metrics:
            logged = sorted(name for name in trainer.callback_metrics if name.startswith("val/"))
            raise ValueError(
                f"model.scheduler.monitor={monitor} is not a logged validation metric; "
                f"one of: {', '.join(logged)}"
            )
        scheduler.step(float(trainer.callback_metrics[monitor]))

    def _log_terms(
        self, stage: str, terms: dict[str, Tensor], batch_size: int, **kwargs: bool
    ) -> None:
        shown = {"loss", "bpp", "psnr"}
        for name, value in terms.items():
            self.log(
                f"{stage}/{name}",
                value.detach().float(),
                prog_bar=name in shown,
                sync_dist=stage != "train",  # training terms come averaged over the ranks
                batch_size=batch_size,
                **kwargs,
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["licexp_config"] = self.run_config
        checkpoint[RNG_KEY] = rng_states()
        checkpoint[FROZEN_KEY] = self.frozen_modules

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        resize_entropy_buffers(self, checkpoint["state_dict"])
        self._resumed_rng = checkpoint.get(RNG_KEY)
