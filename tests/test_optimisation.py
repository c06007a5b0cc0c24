"""The optimisation of CodecModule: the step-decay schedule and the gradient-norm clipping."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from licexp.backbones import MeanScaleHyperprior
from licexp.quant import NoiseQuantization
from licexp.training import CodecModule, RateDistortionLoss, split_parameters
from licexp.training.schedules import step_decay


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
