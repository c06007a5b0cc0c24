"""Pipes between a strategy's symbols and CompressAI's rANS coder: one string per image.

A latent is written once (a hyperprior) or in sequential stages (a context model learns a
stage's entropy parameters only after decoding the earlier ones): every
:meth:`StagedRansEncoder.write` appends one :class:`~licexp.quant.symbols.SymbolEncoding`
to each image's ``BufferedRansEncoder``, and :meth:`StagedRansDecoder.read` decodes the
next symbols of each image's stream, as often as the strategy asks (CompressAI's
``RansDecoder.set_stream`` / ``decode_stream``). One string per image rather than one per
stage saves each stage's flushed coder state and container entry (about 15 bytes, 2 % of
a Kodak image at 0.1 bpp over nine stages), as in the Tiny-LIC release.

One ``encode_with_indexes`` on a ``BufferedRansEncoder`` then ``flush`` writes the bytes
of CompressAI's ``RansEncoder.encode_with_indexes``, so a latent written once is coded as
CompressAI's own ``GaussianConditional.compress`` codes it.

Inside :func:`symbol_checksum`, every symbol written or read, with the CDF table index it
was coded with, enters a CRC-32, in stream order. An encoder's and a decoder's checksums
agree exactly when the decoder read the encoder's symbols under the encoder's tables: a
decoder whose entropy parameters differ (another device, another thread count) reads other
symbols or other indexes, and the container (:mod:`licexp.evaluation.bitstream`) turns the
difference into an error instead of a wrong image. The checksum travels beside the strings,
so the strings stay CompressAI's bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from torch import Tensor

from licexp.backbones.rans_bounds import (
    ESCAPE_CHECK_INTERVAL,
    StreamError,
    bounded_strings,
    escape_budget,
)
from licexp.quant.symbols import CdfTables, SymbolEncoding


class SymbolChecksum:
    """A running CRC-32 of ``(symbol, table index)`` pairs as int32, in stream order."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, symbols: Tensor, indexes: Tensor) -> None:
        pairs = torch.stack([symbols.reshape(-1), indexes.reshape(-1)], dim=1)
        self.value = zlib.crc32(pairs.to(torch.int32).cpu().numpy().tobytes(), self.value)


_ACTIVE: ContextVar[SymbolChecksum | None] = ContextVar("symbol_checksum", default=None)


@contextmanager
def symbol_checksum() -> Iterator[SymbolChecksum]:
    """Records the checksum of every symbol the staged coders write or read inside."""
    checksum = SymbolChecksum()
    token = _ACTIVE.set(checksum)
    try:
        yield checksum
    finally:
        _ACTIVE.reset(token)


class StagedRansEncoder:
    """Collects the symbols of every write into one rANS string per image."""

    def __init__(self, tables: CdfTables, batch_size: int) -> None:
        self.tables = (tables.cdf.tolist(), tables.lengths.tolist(), tables.offsets.tolist())
        self.encoders = [BufferedRansEncoder() for _ in range(batch_size)]

    def write(self, encoding: SymbolEncoding) -> None:
        """Queues the symbols of one latent (or stage), each image's in stream order."""
        if encoding.symbols.size(0) != len(self.encoders):
            raise ValueError(
                f"{encoding.symbols.size(0)} images of symbols for {len(self.encoders)} streams"
            )
        checksum = _ACTIVE.get()
        for encoder, symbols, indexes in zip(
            self.encoders, encoding.symbols.cpu(), encoding.indexes.cpu(), strict=True
        ):
            encoder.encode_with_indexes(symbols.tolist(), indexes.tolist(), *self.tables)
            if checksum is not None:
                checksum.update(symbols, indexes)

    def flush(self) -> list[bytes]:
        """The strings, one per image, after the last write."""
        return [encoder.flush() for encoder in self.encoders]


class StagedRansDecoder:
    """Reads the symbols back from one string per image, in the order they were written.

    The tables become Python lists once per decoder, each row trimmed to its length.
    CompressAI's coder converts the lists it is handed on every call, so a :meth:`read` of
    fewer symbols than the tables hold entries (a trellis decoder reading in many small
    steps) hands it only the rows its symbols name; a larger read (a hyperprior's one read,
    a context model's stage) hands it every row rather than searching for the used ones.
    """

    def __init__(self, tables: CdfTables, strings: list[bytes], symbols: int) -> None:
        """``symbols``: how many symbols each string holds (the latent's elements per image).

        A string too short for them is refused, no :meth:`read` goes beyond them, and the
        escaped symbols are counted against the string's budget every
        :data:`~licexp.backbones.rans_bounds.ESCAPE_CHECK_INTERVAL` symbols, so the decoder
        stays inside the guarded string (:mod:`licexp.backbones.rans_bounds`).
        """
        self.remaining = symbols
        lengths = tables.lengths.tolist()
        self.rows = [row[:length] for row, length in zip(tables.cdf.tolist(), lengths, strict=True)]
        self.lengths = lengths
        self.offsets = tables.offsets.tolist()
        self.entries = sum(lengths)
        self.every_table = (self.rows, self.lengths, self.offsets)
        # A decoded value outside [offset, offset + length - 2) was escaped.
        self.lowest = tables.offsets.to(torch.int64)
        self.highest = self.lowest + tables.lengths.to(torch.int64) - 3
        self.escapes_left = [escape_budget(len(string), tables) for string in strings]
        self.decoders = []
        for string in bounded_strings(
            "the latent 'y'", strings, symbols, tables, counts_escapes=True
        ):
            decoder = RansDecoder()
            decoder.set_stream(string)
            self.decoders.append(decoder)

    def read(self, indexes: Tensor) -> Tensor:
        """The next ``indexes.size(1)`` symbols of each image, with those CDF tables."""
        if indexes.dim() != 2 or indexes.size(0) != len(self.decoders):
            raise ValueError(
                f"{len(self.decoders)} streams, asked for indexes of shape {tuple(indexes.shape)}"
            )
        if indexes.size(1) > self.remaining:
            raise StreamError(
                f"asked for {indexes.size(1)} more symbols of a stream declared to hold "
                f"{self.remaining} more"
            )
        self.remaining -= indexes.size(1)
        indexes_cpu = indexes.cpu()
        if indexes_cpu.numel() and not 0 <= indexes_cpu.min() <= indexes_cpu.max() < len(self.rows):
            raise ValueError(
                f"CDF table indexes {int(indexes_cpu.min())}..{int(indexes_cpu.max())} outside "
                f"0..{len(self.rows)}"
            )
        chunks = indexes_cpu.split(ESCAPE_CHECK_INTERVAL, dim=1)
        decoded = torch.cat([self._read_counting_escapes(chunk) for chunk in chunks], 1)
        checksum = _ACTIVE.get()
        if checksum is not None:
            for image_symbols, image_indexes in zip(decoded, indexes_cpu, strict=True):
                checksum.update(image_symbols, image_indexes)
        return decoded.to(indexes.device)

    def _read_counting_escapes(self, indexes: Tensor) -> Tensor:
        """At most :data:`ESCAPE_CHECK_INTERVAL` symbols per image; raises
        :class:`StreamError` once a string has escaped more than its budget."""
        tables, local = self.every_table, indexes
        if indexes.size(1) < self.entries:
            used, local = torch.unique(indexes, return_inverse=True)
            rows = used.tolist()
            tables = (
                [self.rows[t] for t in rows],
                [self.lengths[t] for t in rows],
                [self.offsets[t] for t in rows],
            )
        symbols = torch.from_numpy(
            np.stack(
                [
                    np.asarray(decoder.decode_stream(item.tolist(), *tables), dtype=np.int32)
                    for decoder, item in zip(self.decoders, local, strict=True)
                ]
            )
        )
        table = indexes.to(torch.int64)
        escaped = (symbols < self.lowest[table]) | (symbols > self.highest[table])
        for image, count in enumerate(escaped.sum(1).tolist()):
            self.escapes_left[image] -= count
            if self.escapes_left[image] < 0:
                raise StreamError(
                    "the latent 'y' holds more escaped symbols than its string's bytes can "
                    "hold: the file is damaged or forged"
                )
        return symbols
