"""Entropy coding of one latent tensor through a quantisation strategy.

Small parts in the manner of CompressAI's ``latent_codecs``, with the quantiser passed in
as an object rather than a string: a backbone composes them (a hyperprior uses one of
each; a context model calls :class:`GaussianLatentCoder` once per stage).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

from licexp.quant import QuantizationStrategy


@dataclass
class CodedLatent:
    """One latent after quantisation (training approximation or hard)."""

    decoder_input: Tensor
    """Latent-domain value the decoder side sees (``y_tilde`` / ``y_hat``)."""
    rate_input: Tensor
    """Coded-domain value the likelihood was evaluated at."""
    likelihoods: Tensor
    """Element-wise likelihoods (lower-bounded), ``bits = -log2(likelihoods)``."""


class GaussianLatentCoder(nn.Module):
    """Codes ``y`` with ``N(mu, sigma)`` convolved with ``U(-1/2, 1/2)`` (Balle et al., 2018).

    The pmf of an integer-spaced value ``v`` is ``Phi((v - mu + 1/2) / sigma) -
    Phi((v - mu - 1/2) / sigma)`` (CompressAI's ``GaussianConditional``), and the real
    bitstream is produced by CompressAI's rANS coder over scale-indexed CDF tables.
    """

    def __init__(self, scale_bound: float = 0.11) -> None:
        super().__init__()
        self.gaussian_conditional = GaussianConditional(None, scale_bound=scale_bound)

    def likelihood(self, coded: Tensor, scales: Tensor, means: Tensor | None) -> Tensor:
        """Element-wise lower-bounded likelihood of ``coded`` under the Gaussian model."""
        conditional = self.gaussian_conditional
        likelihood = conditional._likelihood(coded, scales, means)
        if conditional.use_likelihood_bound:
            likelihood = conditional.likelihood_lower_bound(likelihood)
        return likelihood

    def forward(
        self, latent: Tensor, scales: Tensor, means: Tensor | None, quantizer: QuantizationStrategy
    ) -> CodedLatent:
        """Training approximation in train mode, hard quantisation in eval mode."""
        coded = quantizer.to_coded(latent)
        if self.training:

            def likelihood_fn(value: Tensor) -> Tensor:
                return self.likelihood(value, scales, means)

            quantized = quantizer.quantize_train(coded, means, likelihood_fn)
            return CodedLatent(
                decoder_input=quantizer.from_coded(quantized.decoder_input, inference=False),
                rate_input=quantized.rate_input,
                likelihoods=self.likelihood(quantized.rate_input, scales, means),
            )
        coded_hat = quantizer.quantize_hard(coded, means)
        return CodedLatent(
            decoder_input=quantizer.from_coded(coded_hat, inference=True),
            rate_input=coded_hat,
            likelihoods=self.likelihood(coded_hat, scales, means),
        )

    def compress(
        self, latent: Tensor, scales: Tensor, means: Tensor | None, quantizer: QuantizationStrategy
    ) -> tuple[list[bytes], Tensor]:
        """rANS-codes the symbols ``round(v - offset)``; returns the strings and ``y_hat``."""
        coded = quantizer.to_coded(latent)
        offset = quantizer.coding_offset(means)
        indexes = self.gaussian_conditional.build_indexes(scales)
        strings = self.gaussian_conditional.compress(coded, indexes, means=offset)
        coded_hat = quantizer.quantize_hard(coded, means)
        return strings, quantizer.from_coded(coded_hat, inference=True)

    def decompress(
        self,
        strings: list[bytes],
        scales: Tensor,
        means: Tensor | None,
        quantizer: QuantizationStrategy,
    ) -> Tensor:
        """Decodes the symbols and returns ``y_hat = from_coded(symbols + offset)``."""
        offset = quantizer.coding_offset(means)
        indexes = self.gaussian_conditional.build_indexes(scales)
        coded_hat = self.gaussian_conditional.decompress(
            strings, indexes, dtype=scales.dtype, means=offset
        )
        return quantizer.from_coded(coded_hat, inference=True)


def _channels_first(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (C, 1, B*H*W)``: the layout of ``EntropyBottleneck``'s density."""
    return x.transpose(0, 1).reshape(x.size(1), 1, -1)


def _from_channels_first(x: Tensor, like: Tensor) -> Tensor:
    batch, channels, *spatial = like.shape
    return x.reshape(channels, batch, *spatial).transpose(0, 1)


class HyperLatentCoder(nn.Module):
    """Codes the hyper latent ``z`` with the factorised density of Balle et al. (2018).

    CompressAI's ``EntropyBottleneck`` holds the learned density and its ``quantiles``
    (trained by the aux loss); its median is the symbol offset.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.entropy_bottleneck = EntropyBottleneck(channels)

    def median(self) -> Tensor:
        """Per-channel median of the learned density, shaped ``(1, C, 1, 1)``."""
        return self.entropy_bottleneck._get_medians().reshape(1, -1, 1, 1)

    def likelihood(self, coded: Tensor) -> Tensor:
        """Element-wise lower-bounded likelihood of ``coded`` under the factorised density."""
        bottleneck = self.entropy_bottleneck
        likelihood, _, _ = bottleneck._likelihood(_channels_first(coded))
        if bottleneck.use_likelihood_bound:
            likelihood = bottleneck.likelihood_lower_bound(likelihood)
        return _from_channels_first(likelihood, coded)

    def forward(self, latent: Tensor, quantizer: QuantizationStrategy) -> CodedLatent:
        """Training approximation in train mode, hard (median-centred) rounding in eval mode."""
        coded = quantizer.to_coded(latent)
        median = self.median()
        if self.training:
            quantized = quantizer.quantize_hyper_train(coded, median)
            rate_input = quantized.rate_input
            decoder_input = quantizer.from_coded(quantized.decoder_input, inference=False)
        else:
            rate_input = torch.round(coded - median) + median
            decoder_input = quantizer.from_coded(rate_input, inference=True)
        return CodedLatent(decoder_input, rate_input, self.likelihood(rate_input))

    def compress(
        self, latent: Tensor, quantizer: QuantizationStrategy
    ) -> tuple[list[bytes], Tensor]:
        """rANS-codes ``round(z - median)``; returns the strings and ``z_hat``."""
        coded = quantizer.to_coded(latent)
        strings = self.entropy_bottleneck.compress(coded)
        median = self.median()
        coded_hat = torch.round(coded - median) + median
        return strings, quantizer.from_coded(coded_hat, inference=True)

    def decompress(
        self, strings: list[bytes], size: tuple[int, int], quantizer: QuantizationStrategy
    ) -> Tensor:
        """Decodes ``z_hat`` of spatial ``size`` from its strings."""
        coded_hat = self.entropy_bottleneck.decompress(strings, size)
        return quantizer.from_coded(coded_hat, inference=True)
