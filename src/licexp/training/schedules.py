"""Learning-rate schedules expressed in training steps."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import MultiStepLR


def step_decay(
    optimizer: Optimizer, total_steps: int, milestone_fraction: float = 0.75, gamma: float = 0.1
) -> MultiStepLR:
    """Multiplies the learning rate by ``gamma`` once, after ``milestone_fraction`` of training.

    Pan et al. train 2M iterations and drop 1e-4 to 1e-5 after 1.5M: fraction 0.75.
    """
    if total_steps <= 0:
        raise ValueError(
            f"step_decay needs a positive total number of steps (trainer.max_steps), got "
            f"{total_steps}; set trainer.max_steps or model.scheduler=null"
        )
    if not 0 < milestone_fraction <= 1:
        raise ValueError(f"milestone_fraction must be in (0, 1], got {milestone_fraction}")
    milestone = max(1, round(milestone_fraction * total_steps))
    return MultiStepLR(optimizer, milestones=[milestone], gamma=gamma)
