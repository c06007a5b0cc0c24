"""Learning-rate and loss-weight schedules expressed in training steps.

The learning-rate schedules are the options of ``conf/scheduler/``: :func:`step_decay` and
:func:`cosine_annealing` are stepped after every optimiser step, :class:`PlateauDecay` after
every validation, with the value of the metric it monitors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, MultiStepLR, ReduceLROnPlateau


def step_decay(
    optimizer: Optimizer,
    total_steps: int,
    milestone_fraction: float | Sequence[float] = 0.75,
    gamma: float = 0.1,
) -> MultiStepLR:
    """Multiplies the learning rate by ``gamma`` after each ``milestone_fraction`` of training.

    Pan et al. train 2M iterations and drop 1e-4 to 1e-5 after 1.5M: fraction 0.75. Jiang
    et al. drop 1e-4 to 1e-5 to 1e-6 after 400 and 550 of 600 epochs: ``[2/3, 11/12]``.
    """
    if total_steps <= 0:
        raise ValueError(
            f"step_decay needs a positive total number of steps (trainer.max_steps), got "
            f"{total_steps}; set trainer.max_steps or scheduler=none"
        )
    fractions = (
        [milestone_fraction]
        if isinstance(milestone_fraction, int | float)
        else list(milestone_fraction)
    )
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"milestone_fraction must be in (0, 1], got {fraction}")
    milestones = sorted(max(1, round(fraction * total_steps)) for fraction in fractions)
    return MultiStepLR(optimizer, milestones=milestones, gamma=gamma)


def cosine_annealing(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_fraction: float = 0.0,
) -> LambdaLR:
    """Cosine annealing of each learning rate ``eta_max`` over ``total_steps`` (SGDR, Eq. 5).

    Loshchilov and Hutter, "SGDR: stochastic gradient descent with warm restarts" (ICLR
    2017), one period without restart: with ``T = total_steps - warmup_steps``,
    ``eta_min = min_lr_fraction * eta_max`` and ``t = s - warmup_steps`` optimiser steps
    after the warmup,

        eta_t = eta_min + (eta_max - eta_min) (1 + cos(pi t / T)) / 2,

    so the rate falls from ``eta_max`` at the end of the warmup to ``eta_min`` after the
    last step (and stays there). Step ``s < warmup_steps`` uses ``eta_max (s + 1) /
    warmup_steps`` (linear warmup, not in the paper).
    """
    if total_steps <= 0:
        raise ValueError(
            f"cosine_annealing needs a positive total number of steps (trainer.max_steps), "
            f"got {total_steps}; set trainer.max_steps or scheduler=none"
        )
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}"
        )
    if not 0 <= min_lr_fraction <= 1:
        raise ValueError(f"min_lr_fraction must be in [0, 1], got {min_lr_fraction}")
    period = total_steps - warmup_steps

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(step - warmup_steps, period)  # past the last step: stay at eta_min
        return min_lr_fraction + (1 - min_lr_fraction) * (1 + math.cos(math.pi * t / period)) / 2

    return LambdaLR(optimizer, factor)


class PlateauDecay(ReduceLROnPlateau):
    """Torch's ``ReduceLROnPlateau`` with the name of the validation metric it watches.

    CompressAI's and CompressAI-Trainer's default: when more than ``patience`` validations
    in a row have not improved ``monitor`` on its best value (by a relative ``threshold``;
    ``mode="min"``: lower is better), every learning rate is multiplied by ``factor``.
    :class:`~licexp.training.CodecModule` steps it after each validation with the logged
    value of ``monitor``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        monitor: str = "val/loss",
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        super().__init__(
            optimizer,
            mode=mode,
            factor=factor,
            patience=patience,
            threshold=threshold,
            cooldown=cooldown,
            min_lr=min_lr,
        )
        self.monitor = monitor


@dataclass(frozen=True)
class WeightUntil:
    """A loss weight: ``value`` for the steps before ``until_fraction * total_steps``, 0 after.

    Jiang et al.'s ``lambda_e`` of the feature loss (Eq. 17): 1 for the first 200 of 600
    epochs, then 0 (``until_fraction = 1/3``).
    """

    value: float
    until_fraction: float
    total_steps: int

    def __post_init__(self) -> None:
        if not 0 <= self.until_fraction <= 1:
            raise ValueError(f"until_fraction must be in [0, 1], got {self.until_fraction}")
        if self.total_steps <= 0:
            raise ValueError(
                f"a loss-weight schedule needs trainer.max_steps > 0, got {self.total_steps}"
            )

    @property
    def switch_step(self) -> int:
        """The first step at which the weight is 0."""
        return round(self.until_fraction * self.total_steps)

    def __call__(self, step: int) -> float:
        return self.value if step < self.switch_step else 0.0
