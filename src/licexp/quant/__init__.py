"""Quantisation strategies: one file each, one Hydra config each in ``conf/quant/``."""

from licexp.quant.base import (
    LikelihoodFunction,
    QuantizationStrategy,
    QuantizedLatent,
    straight_through_round,
    uniform_noise_like,
)
from licexp.quant.noise import NoiseQuantization
from licexp.quant.ste import StraightThroughQuantization
from licexp.quant.symbols import EntropyParameters, ScalarSymbols, SymbolCoding

__all__ = [
    "EntropyParameters",
    "LikelihoodFunction",
    "NoiseQuantization",
    "QuantizationStrategy",
    "QuantizedLatent",
    "ScalarSymbols",
    "StraightThroughQuantization",
    "SymbolCoding",
    "straight_through_round",
    "uniform_noise_like",
]
