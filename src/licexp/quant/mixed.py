"""Mixed quantisation: noise for the rate, straight-through rounding for the decoder.

Minnen and Singh, "Channel-wise autoregressive entropy models for learned image
compression" (ICIP 2020), Section 2.3; the training recipe of the Tiny-LIC release (Lu and
Ma, 2022). The rate term sees the noisy latent, the decoder and the context model see the
latent rounded around the predicted mean, with the identity gradient::

    rate:     y_tilde = y + u,                u ~ U(-1/2, 1/2)
    decoder:  y_hat = STE(y - mu) + mu        (round(y - mu) + mu forward)

Inference codes ``round(y - mu) + mu``, the decoder's training value, so the decoder has no
discrete gap; the rate keeps the smooth noisy estimate. The hyper latent ``z`` is treated
the same way around its median (the base class's CompressAI convention).
"""

from __future__ import annotations

from torch import Tensor

from licexp.quant.base import (
    LikelihoodFunction,
    QuantizationStrategy,
    QuantizedLatent,
    straight_through_round_around,
    uniform_noise_like,
)
from licexp.quant.symbols import EntropyParameters


class MixedQuantization(QuantizationStrategy):
    """Rate on ``y + u``, decoder on ``STE(y - mu) + mu`` (plain ``STE(y)`` without a mean)."""

    def quantize_train(
        self, coded: Tensor, parameters: EntropyParameters, likelihood_fn: LikelihoodFunction
    ) -> QuantizedLatent:
        del likelihood_fn
        return QuantizedLatent(
            rate_input=coded + uniform_noise_like(coded),
            decoder_input=straight_through_round_around(coded, parameters.means),
        )
