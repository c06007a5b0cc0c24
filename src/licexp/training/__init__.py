"""Training: the rate-distortion loss, the LightningModule and learning-rate schedules."""

from licexp.training.loss import RateDistortionLoss, bits_per_pixel
from licexp.training.module import CodecModule, DivergenceError, split_parameters

__all__ = [
    "CodecModule",
    "DivergenceError",
    "RateDistortionLoss",
    "bits_per_pixel",
    "split_parameters",
]
