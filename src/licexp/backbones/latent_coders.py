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


class OffsetGaussianConditional(GaussianConditional):
    """CompressAI's ``GaussianConditional`` with CDF tables for fractional mean offsets too.

    CompressAI codes ``round(y - mu)`` with tables indexed by the scale alone, which is
    exact only when the symbol grid follows the mean. A strategy that rounds plainly,
    ``y_hat = round(y)`` (Pan et al.'s "noise" at test time), codes ``s = round(y) -
    round(mu)``, whose pmf ``Phi((s + 1/2 - d) / sigma) - Phi((s - 1/2 - d) / sigma)``
    is centred on ``d = mu - round(mu)`` in ``[-1/2, 1/2]``. With ``offset_levels = L > 0``
    the tables cover the scale table times ``L + 1`` offsets ``d_j = -1/2 + j / L``, and a
    symbol uses the table of its scale and nearest offset: the rate then matches the
    estimate up to the offset grid's resolution. ``L = 0`` keeps CompressAI's tables.
    """

    def __init__(self, offset_levels: int = 0, **kwargs: float) -> None:
        super().__init__(None, **kwargs)
        if offset_levels < 0:
            raise ValueError(f"offset_levels must be >= 0, got {offset_levels}")
        self.offset_levels = offset_levels

    def offset_grid(self) -> Tensor:
        """The mean offsets ``d_j`` the tables are built for."""
        if self.offset_levels == 0:
            return torch.zeros(1)
        return torch.linspace(-0.5, 0.5, self.offset_levels + 1)

    def update(self) -> None:
        if self.offset_levels == 0:
            super().update()
            return
        multiplier = -self._standardized_quantile(self.tail_mass / 2)
        offsets = self.offset_grid().to(self.scale_table.device)
        scales = self.scale_table.repeat(len(offsets))
        means = offsets.repeat_interleave(len(self.scale_table))
        pmf_center = torch.ceil(scales * multiplier + 0.5).int()
        pmf_length = 2 * pmf_center + 1
        max_length = int(pmf_length.max())
        samples = torch.arange(max_length, device=scales.device) - pmf_center[:, None]
        centred = samples.float() - means[:, None]
        upper = self._standardized_cumulative((centred + 0.5) / scales[:, None])
        lower = self._standardized_cumulative((centred - 0.5) / scales[:, None])
        pmf = (upper - lower) * (samples.abs() <= pmf_center[:, None])
        tail_mass = (1 - pmf.sum(dim=1, keepdim=True)).clamp_min(0)
        self._quantized_cdf = self._pmf_to_cdf(pmf, tail_mass, pmf_length, max_length)
        self._offset = -pmf_center
        self._cdf_length = pmf_length + 2

    def build_offset_indexes(self, scales: Tensor, mean_offsets: Tensor | None) -> Tensor:
        """Table index of every element from its scale and its mean offset ``d``."""
        indexes = self.build_indexes(scales)
        if mean_offsets is None:
            return indexes
        if self.offset_levels == 0:
            if mean_offsets.abs().max() > 0:
                raise ValueError(
                    "symbols off the mean's grid need offset tables: build the backbone with "
                    "a strategy whose centred_on_mean is False"
                )
            return indexes
        position = torch.round((mean_offsets + 0.5) * self.offset_levels)
        block = position.clamp(0, self.offset_levels).int()
        return indexes + block * len(self.scale_table)


class GaussianLatentCoder(nn.Module):
    """Codes ``y`` with ``N(mu, sigma)`` convolved with ``U(-1/2, 1/2)`` (Balle et al., 2018).

    The pmf of an integer-spaced value ``v`` is ``Phi((v - mu + 1/2) / sigma) -
    Phi((v - mu - 1/2) / sigma)`` (CompressAI's ``GaussianConditional``), and the real
    bitstream is produced by CompressAI's rANS coder over scale-indexed CDF tables
    (:class:`OffsetGaussianConditional` when symbols are not centred on the mean).
    """

    OFFSET_LEVELS = 16
    """Resolution of the mean-offset grid for strategies not centred on the mean."""

    def __init__(self, centred_on_mean: bool = True, scale_bound: float = 0.11) -> None:
        super().__init__()
        self.gaussian_conditional = OffsetGaussianConditional(
            offset_levels=0 if centred_on_mean else self.OFFSET_LEVELS, scale_bound=scale_bound
        )

    def likelihood(self, coded: Tensor, scales: Tensor, means: Tensor | None) -> Tensor:
        """Element-wise lower-bounded likelihood of ``coded`` under the Gaussian model."""
        conditional = self.gaussian_conditional
        likelihood = conditional._likelihood(coded, scales, means)
        if conditional.use_likelihood_bound:
            likelihood = conditional.likelihood_lower_bound(likelihood)
        return likelihood

    def _indexes(self, scales: Tensor, means: Tensor | None, offset: Tensor | None) -> Tensor:
        mean_offsets = None if means is None or offset is None else means - offset
        return self.gaussian_conditional.build_offset_indexes(scales, mean_offsets)

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
        indexes = self._indexes(scales, means, offset)
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
        indexes = self._indexes(scales, means, offset)
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
