"""Additive uniform noise (Balle et al., 2017), with the "noise+" test-time option of Pan et al."""

from __future__ import annotations

from torch import Tensor

from licexp.quant.base import (
    LikelihoodFunction,
    QuantizationStrategy,
    QuantizedLatent,
    additive_uniform_noise,
)
from licexp.quant.symbols import EntropyParameters, ScalarSymbols


class NoiseQuantization(QuantizationStrategy):
    """Training: ``y_tilde = y + u``, ``u ~ U(-1/2, 1/2)``, seen by both rate and decoder.

    At inference the latent is hard-rounded. With ``round_around_mean=False`` (the
    paper's "noise") ``y_hat = round(y)``; the symbols are then coded as
    ``round(y) - round(mu)`` so that a scale-indexed Gaussian table can code them; with
    ``round_around_mean=True`` ("noise+", Pan et al. Section 4) ``y_hat = round(y - mu) + mu``.
    """

    def __init__(self, round_around_mean: bool = False) -> None:
        super().__init__()
        self.round_around_mean = round_around_mean

    @property
    def symbol_coding(self) -> ScalarSymbols:
        return ScalarSymbols(centred=self.round_around_mean)

    def quantize_train(
        self, coded: Tensor, parameters: EntropyParameters, likelihood_fn: LikelihoodFunction
    ) -> QuantizedLatent:
        del parameters, likelihood_fn
        return additive_uniform_noise(coded)

    def extra_repr(self) -> str:
        return f"round_around_mean={self.round_around_mean}"
