"""The optimisation of CodecModule: the learning-rate schedules and the gradient clipping."""

from __future__ import annotations

import csv
import math
from functools import partial
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from helpers import (
    SMALL_MEAN_SCALE,
    compose_train,
    option_names,
    quiet_trainer,
    run_training,
)
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from licexp.backbones import MeanScaleHyperprior
from licexp.quant import NoiseQuantization
from licexp.training import CodecModule, RateDistortionLoss, split_parameters
from licexp.training.schedules import PlateauDecay, cosine_annealing, step_decay


class RandomImages(Dataset):
    """Random 64x64 images, the same for an index."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(index))}


def tiny_module(**kwargs) -> CodecModule:
    codec = MeanScaleHyperprior(N=16, M=24, quantizer=NoiseQuantization())
    return CodecModule(codec, RateDistortionLoss(0.01), aux_optimizer=torch.optim.Adam, **kwargs)


def fit(module: CodecModule, steps: int, callbacks=(), logger=False) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        callbacks=list(callbacks),
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, DataLoader(RandomImages(), batch_size=1))
    return trainer


class LearningRates(L.Callback):
    """The main optimiser's learning rate at the start of each training step, by step index."""

    def __init__(self) -> None:
        self.used: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        assert batch_idx == len(self.used)
        self.used.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize(
    ("total_steps", "milestone_fraction", "gamma"), [(8, 0.75, 0.1), (6, 0.5, 0.3)]
)
def test_step_decay_multiplies_the_learning_rate_by_gamma_at_the_milestone(
    tmp_path: Path, total_steps: int, milestone_fraction: float, gamma: float
) -> None:
    """Steps 0 .. m - 1 train at lr, steps m .. on at gamma * lr, m = fraction x total steps;
    the logged ``train/lr`` of step s is the rate after it (the one step s + 1 uses)."""
    lr = 2e-3
    module = tiny_module(
        optimizer=partial(torch.optim.Adam, lr=lr),
        scheduler=partial(
            step_decay,
            total_steps=total_steps,
            milestone_fraction=milestone_fraction,
            gamma=gamma,
        ),
    )
    rates = LearningRates()
    fit(module, total_steps, [rates], CSVLogger(tmp_path, name="", version=""))
    milestone = int(milestone_fraction * total_steps)
    expected = [lr if step < milestone else lr * gamma for step in range(total_steps)]
    assert rates.used == pytest.approx(expected, rel=1e-12)
    with open(tmp_path / "metrics.csv") as file:
        logged = {int(row["step"]): float(row["train/lr"]) for row in csv.DictReader(file)}
    assert list(logged) == list(range(total_steps))
    # Logged as float32: relative precision 6e-8.
    assert list(logged.values()) == pytest.approx([*expected[1:], lr * gamma], rel=1e-6)


@pytest.mark.parametrize(
    ("total_steps", "milestone_fraction", "message"),
    [(0, 0.75, "trainer.max_steps"), (-1, 0.75, "trainer.max_steps"), (10, 0.0, "fraction")],
)
def test_step_decay_refuses_settings_without_a_milestone(
    total_steps: int, milestone_fraction: float, message: str
) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=message):
        step_decay(optimizer, total_steps, milestone_fraction)


class GradientsAtTheStep(L.Callback):
    """Per step: the gradients backward left (the raw ones) and those the main step takes."""

    def __init__(self) -> None:
        self.raw: list[dict[int, torch.Tensor]] = []
        self.stepped: list[dict[int, torch.Tensor]] = []
        self.parameters: list[torch.nn.Parameter] = []
        self._handles = []

    def on_train_start(self, trainer, module) -> None:
        def keep(parameter: torch.nn.Parameter) -> None:
            if not self.raw or len(self.raw[-1]) == len(self.parameters):
                self.raw.append({})
            self.raw[-1][id(parameter)] = parameter.grad.detach().clone()

        self.parameters = [p for p in module.codec.parameters() if p.requires_grad]
        self._handles = [p.register_post_accumulate_grad_hook(keep) for p in self.parameters]

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        # Called inside the main optimiser's step, after the module has clipped: what it uses.
        self.stepped.append({id(p): p.grad.detach().clone() for p in self.parameters})

    def on_train_end(self, trainer, module) -> None:
        for handle in self._handles:
            handle.remove()


def total_norm(gradients: dict[int, torch.Tensor], parameters) -> float:
    return float(
        torch.linalg.vector_norm(torch.stack([gradients[id(p)].norm() for p in parameters]))
    )


@pytest.mark.parametrize("clip", [1e-2, 1e9, None])
def test_the_main_gradient_is_clipped_to_the_norm_and_the_aux_gradient_is_not(clip) -> None:
    """``clip_grad_norm``: the main parameters' gradient is scaled to norm ``clip`` when its
    norm exceeds it, left as is otherwise; the quantiles' (aux) gradient is never touched."""
    torch.manual_seed(0)
    module = tiny_module(optimizer=torch.optim.SGD, clip_grad_norm=clip)
    gradients = GradientsAtTheStep()
    fit(module, 3, [gradients])
    main, aux = split_parameters(module.codec)
    assert len(gradients.raw) == len(gradients.stepped) == 3
    for raw, stepped in zip(gradients.raw, gradients.stepped, strict=True):
        raw_norm = total_norm(raw, main)
        if clip is not None and raw_norm > clip:
            assert raw_norm > 10 * clip  # the case is a real clipping
            assert total_norm(stepped, main) == pytest.approx(clip, rel=1e-4)
            for p in main:  # the direction is kept
                torch.testing.assert_close(stepped[id(p)], raw[id(p)] * (clip / raw_norm))
        else:
            assert clip is None or raw_norm < clip / 10
            assert all(torch.equal(stepped[id(p)], raw[id(p)]) for p in main)
        assert all(raw[id(p)].abs().sum() > 0 for p in aux)
        assert all(torch.equal(stepped[id(p)], raw[id(p)]) for p in aux)


STEPS = 8
LR = 2e-3


def configured_module(*overrides: str) -> CodecModule:
    """The module ``python -m licexp.train`` builds with ``overrides``, on a tiny codec."""
    cfg = compose_train([f"trainer.max_steps={STEPS}", f"model.optimizer.lr={LR}", *overrides])
    codec = hydra.utils.instantiate(SMALL_MEAN_SCALE, quantizer=NoiseQuantization())
    return hydra.utils.instantiate(cfg.model, codec=codec)


def cosine_with_warmup(step: int) -> float:
    """2 warmup steps at LR (s + 1) / 2, then SGDR's Eq. 5 over the 6 others, eta_min 0.1 LR."""
    if step < 2:
        return LR * (step + 1) / 2
    return 0.1 * LR + 0.9 * LR * (1 + math.cos(math.pi * (step - 2) / 6)) / 2


SCHEDULES = {  # option -> its overrides, the lr of step s (s = STEPS: after the last step)
    "step": ([], lambda s: LR if s < 6 else 0.1 * LR),  # milestone 0.75 x 8 = 6
    # Jiang et al.'s 400 and 550 of 600 epochs: round(8 x 2/3) = 5, round(8 x 11/12) = 7
    "step_jiang": ([], lambda s: LR * 0.1 ** ((s >= 5) + (s >= 7))),
    "cosine": (
        ["model.scheduler.warmup_steps=2", "model.scheduler.min_lr_fraction=0.1"],
        cosine_with_warmup,
    ),
    "plateau": ([], lambda s: LR),  # stepped by validations only: none here
    "none": ([], lambda s: LR),
}


@pytest.mark.parametrize("option", sorted(SCHEDULES))
def test_each_scheduler_option_sets_the_learning_rate_of_its_formula(option) -> None:
    """``scheduler=<option>``: the main optimiser's lr at each of 8 steps and after the last
    (``train/lr``'s value at the end) is the schedule's formula of the step."""
    overrides, formula = SCHEDULES[option]
    module = configured_module(f"scheduler={option}", *overrides)
    rates = LearningRates()
    trainer = quiet_trainer(
        max_steps=STEPS, callbacks=[rates], limit_val_batches=0, enable_checkpointing=False
    )
    trainer.fit(module, DataLoader(RandomImages(), batch_size=1))
    assert rates.used == pytest.approx([formula(s) for s in range(STEPS)], rel=1e-12)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(formula(STEPS), rel=1e-12)
    assert (option == "none") == (not trainer.lr_scheduler_configs)


def test_cosine_annealing_ends_at_the_minimum_and_refuses_a_warmup_as_long_as_the_run() -> None:
    """Without warmup the first step uses the full rate and the last-but-one
    ``eta_min + (eta_max - eta_min) (1 + cos(7 pi / 8)) / 2``; the rate stays at ``eta_min``."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = cosine_annealing(optimizer, total_steps=8, min_lr_fraction=0.25)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 1.0 and rates[7] == pytest.approx(
        0.25 + 0.75 * (1 + math.cos(7 * math.pi / 8)) / 2
    )
    assert rates[8] == rates[9] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_annealing(optimizer, total_steps=8, warmup_steps=8)
    with pytest.raises(ValueError, match="trainer.max_steps"):
        cosine_annealing(optimizer, total_steps=0)


class LoggedSeries(L.Callback):
    """Logs ``val/series``: the next of ``values`` at each validation, 0 in the sanity check."""

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.validations = 0

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, *args) -> None:
        value = 0.0 if trainer.sanity_checking else self.values[self.validations]
        module.log("val/series", value)

    def on_validation_end(self, trainer, module) -> None:
        self.validations += not trainer.sanity_checking


def test_plateau_multiplies_the_lr_by_factor_after_patience_validations_without_improvement() -> (
    None
):
    """Patience 2, factor 0.5, monitoring ``val/series`` = 1.0, 0.9, then 0.95 four times and
    0.8, one validation after each step: 0.9 is the best; the third validation without an
    improvement on it (the fifth) halves the lr; 0.8 improves. The sanity check's 0.0 does
    not count (the lr would halve at the third validation)."""
    module = configured_module(
        "scheduler=plateau",
        "model.scheduler.monitor=val/series",
        "model.scheduler.patience=2",
        "model.scheduler.factor=0.5",
    )
    rates = LearningRates()
    series = LoggedSeries([1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.8])
    trainer = quiet_trainer(
        max_steps=7,
        callbacks=[rates, series],
        val_check_interval=1,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        enable_checkpointing=False,
    )
    images = DataLoader(RandomImages(), batch_size=1)
    trainer.fit(module, images, images)
    assert series.validations == 7
    # Step s uses the lr after s validations.
    assert rates.used == pytest.approx([LR] * 5 + [LR / 2] * 2, rel=1e-12)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(LR / 2, rel=1e-12)


def test_plateau_on_a_metric_that_is_not_logged_names_the_logged_ones() -> None:
    module = configured_module("scheduler=plateau", "model.scheduler.monitor=val/los")
    trainer = quiet_trainer(
        max_steps=1,
        val_check_interval=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
    )
    images = DataLoader(RandomImages(), batch_size=1)
    with pytest.raises(ValueError, match=r"monitor=val/los is not a logged .*val/loss"):
        trainer.fit(module, images, images)


@pytest.mark.parametrize("option", sorted(SCHEDULES))
def test_each_scheduler_option_composes_from_its_command_line_override(option) -> None:
    assert option_names("scheduler") == sorted(SCHEDULES)  # a new option needs its formula
    cfg = compose_train([f"scheduler={option}"])
    assert cfg.hydra.runtime.choices.scheduler == option
    target = {
        "step": step_decay,
        "step_jiang": step_decay,
        "cosine": cosine_annealing,
        "plateau": PlateauDecay,
        "none": None,
    }[option]
    scheduler = cfg.model.scheduler
    assert (scheduler and hydra.utils.get_object(scheduler._target_)) == target
    if scheduler is not None and option != "plateau":
        assert scheduler.total_steps == cfg.trainer.max_steps
    assert compose_train().hydra.runtime.choices.scheduler == "step"  # the default


def test_train_cli_with_scheduler_plateau_steps_it_once_per_validation(tmp_path) -> None:
    """``python -m licexp.train scheduler=plateau debug=smoke``: 4 steps, validated at 2 and
    4; the checkpoint's plateau state counts both validations and keeps the best val/loss."""
    run_dir = tmp_path / "run"
    result = run_training(
        "debug=smoke", "scheduler=plateau", "evaluate=false", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(run_dir / "csv" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    val_losses = [float(row["val/loss"]) for row in rows if row["val/loss"]]
    assert len(val_losses) == 2
    rates = [float(row["train/lr"]) for row in rows if row["train/lr"]]
    assert rates == pytest.approx([1e-3] * 4, rel=1e-6)  # patience 10: no drop yet
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    (plateau,) = last["lr_schedulers"]
    assert plateau["monitor"] == "val/loss" and plateau["last_epoch"] == 2
    assert plateau["best"] == pytest.approx(min(val_losses), rel=1e-6)
