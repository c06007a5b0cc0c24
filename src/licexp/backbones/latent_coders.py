"""Entropy coding of one latent tensor through a quantisation strategy.

Small parts in the manner of CompressAI's ``latent_codecs``, with the quantiser passed in
as an object rather than a string: a backbone composes them (a hyperprior uses one of
each; a context model calls :class:`GaussianLatentCoder` once per stage). The symbols are
the strategy's (:mod:`licexp.quant.symbols`); these classes carry them to rANS and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

from licexp.backbones.rans_bounds import bounded_strings
from licexp.backbones.staged_rans import StagedRansDecoder, StagedRansEncoder
from licexp.quant import QuantizationStrategy
from licexp.quant.symbols import (
    CdfTables,
    EntropyParameters,
    ScalarSymbols,
    SymbolCoding,
    SymbolEncoding,
    SymbolReader,
    scale_table_rows,
)


@dataclass
class CodedLatent:
    """One latent after quantisation (training approximation or hard)."""

    decoder_input: Tensor
    """Latent-domain value the decoder side sees (``y_tilde`` / ``y_hat``)."""
    rate_input: Tensor
    """Coded-domain value the likelihood was evaluated at."""
    likelihoods: Tensor
    """Element-wise likelihoods (lower-bounded), ``bits = -log2(likelihoods)``."""


@dataclass
class HardLatent:
    """The hard path of one latent: the strategy's symbols and what the decoder sees."""

    encoding: SymbolEncoding
    decoder_input: Tensor
    """``from_coded(reconstruction)``: the latent ``g_s`` and the contexts see."""

    def coded(self) -> CodedLatent:
        """The eval-mode forward pass's view of this latent."""
        return CodedLatent(
            self.decoder_input, self.encoding.reconstruction, self.encoding.likelihoods
        )


class TableError(ValueError):
    """CDF tables missing, or built for another strategy's symbols."""


class SymbolTableConditional(GaussianConditional):
    """CompressAI's ``GaussianConditional`` holding the CDF tables a symbol coding names.

    ``update()`` (through ``codec.update(force=True)``) builds the tables of
    :attr:`coding`, the strategy's :class:`~licexp.quant.symbols.SymbolCoding`, which the
    codec sets from its strategy first; coding refuses tables built for another coding.
    This class is the one place that calls CompressAI's private table and likelihood code
    (``_likelihood``, ``_standardized_cumulative``, ``_standardized_quantile``,
    ``_pmf_to_cdf`` and the table buffers; checked with compressai 1.2.8).
    """

    def __init__(self, scale_bound: float = 0.11) -> None:
        super().__init__(None, scale_bound=scale_bound)
        self.coding: SymbolCoding = ScalarSymbols()
        self.tables_built_for: SymbolCoding | None = None

    @property
    def num_scales(self) -> int:
        return len(self.scale_table)

    def scale_indexes(self, scales: Tensor) -> Tensor:
        """CompressAI's ``build_indexes`` (the lower-bounded scale's row), by one search."""
        return scale_table_rows(self.lower_bound_scale(scales), self.scale_table).int()

    def likelihood(self, values: Tensor, scales: Tensor, means: Tensor | None) -> Tensor:
        likelihood = self._likelihood(values, scales, means)
        if self.use_likelihood_bound:
            likelihood = self.likelihood_lower_bound(likelihood)
        return likelihood

    def tail_multiplier(self) -> float:
        return float(-self._standardized_quantile(self.tail_mass / 2))

    def centred_tables(self) -> CdfTables:
        reference = GaussianConditional(
            self.scale_table.tolist(),
            scale_bound=float(self.lower_bound_scale.bound),
            tail_mass=self.tail_mass,
        ).to(self.scale_table.device)
        reference.update()
        return CdfTables(reference.quantized_cdf, reference.cdf_length, reference.offset)

    def interval_tables(
        self, scales: Tensor, lower: Tensor, upper: Tensor, valid: Tensor, first: Tensor
    ) -> CdfTables:
        cumulative = self._standardized_cumulative
        pmf = (cumulative(upper / scales[:, None]) - cumulative(lower / scales[:, None])) * valid
        tail_mass = (1 - pmf.sum(dim=1, keepdim=True)).clamp_min(0)
        lengths = valid.sum(dim=1).int()
        cdf = self._pmf_to_cdf(pmf, tail_mass, lengths, int(lengths.max()))
        return CdfTables(cdf, lengths + 2, first.int())

    def update(self) -> None:
        tables = self.coding.cdf_tables(self)
        self._quantized_cdf = tables.cdf
        self._cdf_length = tables.lengths
        self._offset = tables.offsets
        self.tables_built_for = self.coding

    def tables_for(self, coding: SymbolCoding) -> CdfTables:
        """The tables, after checking that they were built for ``coding``'s symbols."""
        if self._quantized_cdf.numel() == 0 or self.tables_built_for is None:
            raise TableError(
                "the entropy model has no CDF tables for its strategy: run "
                "codec.update(force=True) first"
            )
        if self.tables_built_for != coding:
            raise TableError(
                f"the CDF tables were built for {self.tables_built_for}, but the strategy codes "
                f"with {coding}: run codec.update(force=True) after changing the strategy"
            )
        return CdfTables(self._quantized_cdf, self._cdf_length, self._offset)


class GaussianLatentCoder(nn.Module):
    """Codes ``y`` with ``N(mu, sigma)`` convolved with ``U(-1/2, 1/2)`` (Balle et al., 2018).

    ::

        train:      v = to_coded(y) -> strategy.quantize_train -> likelihoods, from_coded
        hard path:  v -> strategy.symbol_coding.encode -> symbols, reconstruction, likelihoods
        decode:     rANS symbols -> strategy.symbol_coding.decode -> reconstruction

    The hard path (:meth:`quantize_hard`) serves the eval-mode forward pass, ``compress``
    and every context stage alike; the real bitstream is CompressAI's rANS over the
    tables of :class:`SymbolTableConditional`.
    """

    def __init__(self, scale_bound: float = 0.11) -> None:
        super().__init__()
        self.gaussian_conditional = SymbolTableConditional(scale_bound=scale_bound)

    def likelihood(self, coded: Tensor, scales: Tensor, means: Tensor | None) -> Tensor:
        """Element-wise lower-bounded likelihood of ``coded`` under the Gaussian model."""
        return self.gaussian_conditional.likelihood(coded, scales, means)

    def quantize_hard(
        self, latent: Tensor, parameters: EntropyParameters, quantizer: QuantizationStrategy
    ) -> HardLatent:
        """The strategy's symbols of ``latent`` and the decoder-side latent they decode to."""
        encoding = quantizer.symbol_coding.encode(
            quantizer.to_coded(latent), parameters, self.gaussian_conditional
        )
        return HardLatent(encoding, quantizer.from_coded(encoding.reconstruction, inference=True))

    def decode(
        self, read: SymbolReader, parameters: EntropyParameters, quantizer: QuantizationStrategy
    ) -> Tensor:
        """The decoder-side latent from the symbols ``read`` returns."""
        coded = quantizer.symbol_coding.decode(read, parameters, self.gaussian_conditional)
        return quantizer.from_coded(coded, inference=True)

    def tables_for(self, quantizer: QuantizationStrategy) -> CdfTables:
        """The CDF tables of the strategy's symbols (checked, see :class:`TableError`)."""
        return self.gaussian_conditional.tables_for(quantizer.symbol_coding)

    def forward(
        self, latent: Tensor, parameters: EntropyParameters, quantizer: QuantizationStrategy
    ) -> CodedLatent:
        """Training approximation in train mode, hard quantisation in eval mode."""
        if self.training:
            coded = quantizer.to_coded(latent)

            def likelihood_fn(value: Tensor) -> Tensor:
                return self.likelihood(value, parameters.scales, parameters.means)

            quantized = quantizer.quantize_train(coded, parameters, likelihood_fn)
            likelihoods = quantized.likelihoods
            if likelihoods is None:
                likelihoods = likelihood_fn(quantized.rate_input)
            return CodedLatent(
                decoder_input=quantizer.from_coded(quantized.decoder_input, inference=False),
                rate_input=quantized.rate_input,
                likelihoods=likelihoods,
            )
        return self.quantize_hard(latent, parameters, quantizer).coded()

    def compress(
        self, latent: Tensor, parameters: EntropyParameters, quantizer: QuantizationStrategy
    ) -> tuple[list[bytes], CodedLatent]:
        """rANS-codes the strategy's symbols; returns the strings and what the eval-mode
        forward pass computes for them (``y_hat``, the coded value, its likelihoods)."""
        encoder = StagedRansEncoder(self.tables_for(quantizer), batch_size=latent.size(0))
        hard = self.quantize_hard(latent, parameters, quantizer)
        encoder.write(hard.encoding)
        return encoder.flush(), hard.coded()

    def decompress(
        self, strings: list[bytes], parameters: EntropyParameters, quantizer: QuantizationStrategy
    ) -> Tensor:
        """Decodes ``y_hat`` from its strings."""
        decoder = StagedRansDecoder(
            self.tables_for(quantizer), strings, symbols=parameters.scales[0].numel()
        )
        return self.decode(decoder.read, parameters, quantizer)


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

    def tables(self) -> CdfTables:
        """The factorised density's quantised CDFs (after ``update``)."""
        bottleneck = self.entropy_bottleneck
        return CdfTables(bottleneck._quantized_cdf, bottleneck._cdf_length, bottleneck._offset)

    def likelihood(self, coded: Tensor) -> Tensor:
        """Element-wise lower-bounded likelihood of ``coded`` under the factorised density."""
        bottleneck = self.entropy_bottleneck
        likelihood, _, _ = bottleneck._likelihood(_channels_first(coded))
        if bottleneck.use_likelihood_bound:
            likelihood = bottleneck.likelihood_lower_bound(likelihood)
        return _from_channels_first(likelihood, coded)

    def forward(self, latent: Tensor, quantizer: QuantizationStrategy) -> CodedLatent:
        """Training approximation in train mode, hard (median-centred) rounding in eval mode."""
        if not self.training:
            return self.quantize_hard(latent, quantizer)
        quantized = quantizer.quantize_hyper_train(quantizer.to_coded(latent), self.median())
        return CodedLatent(
            quantizer.from_coded(quantized.decoder_input, inference=False),
            quantized.rate_input,
            self.likelihood(quantized.rate_input),
        )

    def quantize_hard(self, latent: Tensor, quantizer: QuantizationStrategy) -> CodedLatent:
        """``round(z - median) + median``, what the decoder sees of it, and its likelihoods."""
        coded = quantizer.to_coded(latent)
        median = self.median()
        rate_input = torch.round(coded - median) + median
        decoder_input = quantizer.from_coded(rate_input, inference=True)
        return CodedLatent(decoder_input, rate_input, self.likelihood(rate_input))

    def compress(
        self, latent: Tensor, quantizer: QuantizationStrategy
    ) -> tuple[list[bytes], CodedLatent]:
        """rANS-codes ``round(z - median)``; returns the strings and the hard latent."""
        strings = self.entropy_bottleneck.compress(quantizer.to_coded(latent))
        return strings, self.quantize_hard(latent, quantizer)

    def decompress(
        self, strings: list[bytes], size: tuple[int, int], quantizer: QuantizationStrategy
    ) -> Tensor:
        """Decodes ``z_hat`` of spatial ``size`` from its strings, each checked against the
        symbols it declares and guarded (:mod:`licexp.backbones.rans_bounds`)."""
        symbols = self.entropy_bottleneck.channels * size[0] * size[1]
        bounded = bounded_strings(
            "the hyper latent 'z'", strings, symbols, self.tables(), counts_escapes=False
        )
        coded_hat = self.entropy_bottleneck.decompress(bounded, size)
        return quantizer.from_coded(coded_hat, inference=True)
