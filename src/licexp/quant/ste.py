"""Straight-through rounding (Bengio et al., 2013; used for LIC by Theis et al., 2017)."""

from __future__ import annotations

from torch import Tensor

from licexp.quant.base import (
    LikelihoodFunction,
    QuantizationStrategy,
    QuantizedLatent,
    straight_through_round_around,
)
from licexp.quant.symbols import EntropyParameters


class StraightThroughQuantization(QuantizationStrategy):
    """``STE(y) = round(y - mu) + mu`` forward, identity gradient, for rate and decoder alike.

    Training and inference see the same value, so the discrete gap of Pan et al. is zero.
    """

    def quantize_train(
        self, coded: Tensor, parameters: EntropyParameters, likelihood_fn: LikelihoodFunction
    ) -> QuantizedLatent:
        del likelihood_fn
        rounded = straight_through_round_around(coded, parameters.means)
        return QuantizedLatent(rate_input=rounded, decoder_input=rounded)
