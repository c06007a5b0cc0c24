"""Learning-rate and loss-weight schedules expressed in training steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import MultiStepLR


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
            f"{total_steps}; set trainer.max_steps or model.scheduler=null"
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
