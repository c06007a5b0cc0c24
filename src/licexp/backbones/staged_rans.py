"""One rANS string per image for a latent coded in sequential stages (a context model).

A context model learns the entropy parameters of a stage only after decoding the earlier
stages, so its symbols are produced stage by stage. Rather than one string per stage
(each with its own flushed coder state and container entry, about 15 bytes, which is 2 %
of a Kodak image at 0.1 bpp over nine stages), the symbols of all stages go into one
CompressAI ``BufferedRansEncoder`` per image and are read back stage by stage from one
``RansDecoder``, as in the Tiny-LIC release. Symbols, CDF tables and the reconstruction
are those of :class:`~licexp.backbones.latent_coders.GaussianLatentCoder` (with its
offset tables when the strategy does not round around the mean).
"""

from __future__ import annotations

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from torch import Tensor

from licexp.backbones.latent_coders import GaussianLatentCoder, OffsetGaussianConditional
from licexp.quant import QuantizationStrategy


def _tables(conditional: OffsetGaussianConditional) -> tuple[list, list[int], list[int]]:
    """The quantised CDFs, their lengths and offsets, as the rANS coder takes them."""
    if conditional.quantized_cdf.numel() == 0:
        raise ValueError("the entropy model has no CDF tables: run codec.update(force=True) first")
    return (
        conditional.quantized_cdf.tolist(),
        conditional.cdf_length.reshape(-1).int().tolist(),
        conditional.offset.reshape(-1).int().tolist(),
    )


def _indexes(
    conditional: OffsetGaussianConditional,
    scales: Tensor,
    means: Tensor | None,
    offset: Tensor | None,
) -> Tensor:
    """The CDF table of every symbol, from its scale and (offset tables) its mean offset."""
    mean_offsets = None if means is None or offset is None else means - offset
    return conditional.build_offset_indexes(scales, mean_offsets)


class StagedRansEncoder:
    """Collects the symbols ``round(v - offset)`` of every stage into one string per image."""

    def __init__(
        self, coder: GaussianLatentCoder, quantizer: QuantizationStrategy, batch_size: int
    ) -> None:
        self.conditional = coder.gaussian_conditional
        self.quantizer = quantizer
        self.tables = _tables(self.conditional)
        self.encoders = [BufferedRansEncoder() for _ in range(batch_size)]

    def encode(self, latent: Tensor, scales: Tensor, means: Tensor | None) -> Tensor:
        """Queues one stage's symbols; returns its decoder-side ``y_hat`` (as the hard pass)."""
        quantizer = self.quantizer
        coded = quantizer.to_coded(latent)
        offset = quantizer.coding_offset(means)
        indexes = _indexes(self.conditional, scales, means, offset)
        symbols = self.conditional.quantize(coded, "symbols", offset)
        for encoder, item_symbols, item_indexes in zip(
            self.encoders, symbols, indexes, strict=True
        ):
            encoder.encode_with_indexes(
                item_symbols.reshape(-1).tolist(), item_indexes.reshape(-1).tolist(), *self.tables
            )
        return quantizer.from_coded(quantizer.quantize_hard(coded, means), inference=True)

    def flush(self) -> list[bytes]:
        """The strings, one per image, after the last stage."""
        return [encoder.flush() for encoder in self.encoders]


class StagedRansDecoder:
    """Reads the stages back in the order they were encoded."""

    def __init__(
        self, coder: GaussianLatentCoder, quantizer: QuantizationStrategy, strings: list[bytes]
    ) -> None:
        self.conditional = coder.gaussian_conditional
        self.quantizer = quantizer
        self.tables = _tables(self.conditional)
        self.decoders = []
        for string in strings:
            decoder = RansDecoder()
            decoder.set_stream(string)
            self.decoders.append(decoder)

    def decode(self, scales: Tensor, means: Tensor | None) -> Tensor:
        """Decodes one stage: ``y_hat = from_coded(symbols + offset)``."""
        if scales.size(0) != len(self.decoders):
            raise ValueError(f"{len(self.decoders)} strings for a batch of {scales.size(0)}")
        offset = self.quantizer.coding_offset(means)
        indexes = _indexes(self.conditional, scales, means, offset)
        symbols = torch.stack(
            [
                torch.tensor(
                    decoder.decode_stream(item_indexes.reshape(-1).tolist(), *self.tables),
                    dtype=torch.int32,
                ).reshape(item_indexes.shape)
                for decoder, item_indexes in zip(self.decoders, indexes, strict=True)
            ]
        ).to(scales.device)
        coded_hat = self.conditional.dequantize(symbols, offset, scales.dtype)
        return self.quantizer.from_coded(coded_hat, inference=True)
