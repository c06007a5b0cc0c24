"""Quantisation strategies: one file each, one Hydra config each in ``conf/quant/``."""

from licexp.quant.base import (
    LikelihoodFunction,
    QuantizationStrategy,
    QuantizedLatent,
    round_around,
    straight_through_round,
    uniform_noise_like,
)
from licexp.quant.noise import NoiseQuantization
from licexp.quant.ste import StraightThroughQuantization

__all__ = [
    "LikelihoodFunction",
    "NoiseQuantization",
    "QuantizationStrategy",
    "QuantizedLatent",
    "StraightThroughQuantization",
    "round_around",
    "straight_through_round",
    "uniform_noise_like",
]
