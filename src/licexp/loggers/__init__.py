"""Extras for experiment trackers (configs in ``conf/logger/``)."""

from licexp.loggers.wandb import WandbMedia, finish_wandb, log_evaluation

__all__ = ["WandbMedia", "finish_wandb", "log_evaluation"]
