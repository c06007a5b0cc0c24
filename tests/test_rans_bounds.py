"""The bounds that keep CompressAI's rANS decoder inside its string: the symbol capacity of
a string, and the guard, checked against a word-counting model of CompressAI's decoder."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from compressai.ans import RansDecoder, RansEncoder
from helpers import gaussian_table_model

from licexp.backbones.rans_bounds import (
    StreamError,
    bounded_strings,
    escape_budget,
    guarded,
    max_symbols,
    min_bits_per_symbol,
)
from licexp.backbones.staged_rans import StagedRansDecoder, StagedRansEncoder
from licexp.quant.symbols import CdfTables, SymbolEncoding

GAUSSIAN = gaussian_table_model().tables_for(gaussian_table_model().coding)
# Every other symbol escapes (the last entry holds half the mass): the bypass path's worst.
ESCAPING = CdfTables(
    torch.tensor([[0, 1 << 15, 1 << 16], [0, 1, 1 << 16]], dtype=torch.int32),
    torch.tensor([3, 3], dtype=torch.int32),
    torch.tensor([0, -3], dtype=torch.int32),
)
L = 1 << 31
MASK = (1 << 16) - 1


def model_decode(
    data: bytes,
    indexes: list[int],
    tables: CdfTables,
    escape_budget: float = math.inf,
    check_every: int = 1,
) -> tuple[list[int], int]:
    """CompressAI's ``decode_with_indexes`` (rans64: 32-bit words, 16-bit precision, 4-bit
    bypass) step by step in Python: the symbols and the number of 32-bit words it reads.
    Like :class:`StagedRansDecoder`, it stops once more than ``escape_budget`` symbols have
    escaped, counting every ``check_every`` symbols. Reading beyond ``data`` raises
    ``IndexError``."""
    words = np.frombuffer(data + bytes(-len(data) % 4), dtype="<u4").tolist()
    position = 0

    def read() -> int:
        nonlocal position
        position += 1
        return words[position - 1]

    def get_bits() -> int:
        nonlocal x
        value, x = x & 15, x >> 4
        if x < L:
            x = (x << 32) | read()
        return value

    x = read()
    x |= read() << 32
    symbols: list[int] = []
    escapes = 0
    for index in indexes:
        if len(symbols) % check_every == 0 and escapes > escape_budget:
            break
        size, offset = int(tables.lengths[index]), int(tables.offsets[index])
        cdf = tables.cdf[index, :size].tolist()
        cumulative = x & MASK
        s = max(j for j in range(size - 1) if cdf[j] <= cumulative)
        x = (cdf[s + 1] - cdf[s]) * (x >> 16) + (x & MASK) - cdf[s]
        if x < L:
            x = (x << 32) | read()
        value = s
        if value == size - 2:
            escapes += 1
            bits = get_bits()
            count = bits
            while bits == 15:
                bits = get_bits()
                count += bits
            raw = 0
            for j in range(count):
                raw |= get_bits() << (4 * j)
            value = -(raw >> 1) - 1 if raw & 1 else (raw >> 1) + size - 2
        symbols.append(value + offset)
    return symbols, position


def compressai_decode(data: bytes, indexes: list[int], tables: CdfTables) -> list[int]:
    return RansDecoder().decode_with_indexes(
        data, indexes, tables.cdf.tolist(), tables.lengths.tolist(), tables.offsets.tolist()
    )


def test_the_word_counting_model_decodes_as_compressai_does() -> None:
    """Honest streams with escapes, then arbitrary bytes (guarded): the same symbols."""
    generator = random.Random(0)
    for tables in (GAUSSIAN, ESCAPING):
        indexes = [generator.randrange(len(tables.lengths)) for _ in range(400)]
        values = [generator.randint(-6, 6) for _ in indexes]
        string = RansEncoder().encode_with_indexes(
            values, indexes, tables.cdf.tolist(), tables.lengths.tolist(), tables.offsets.tolist()
        )
        symbols, words = model_decode(string, indexes, tables)
        assert symbols == values == compressai_decode(string, indexes, tables)
        assert words == len(string) // 4  # an honest stream is read to its end, no further
    for seed in range(20):
        junk = random.Random(seed).randbytes(24)
        indexes = [generator.randrange(2) for _ in range(60)]
        padded = guarded(junk, len(indexes), len(indexes))
        expected = compressai_decode(padded, indexes, ESCAPING)
        # Beyond 8 bypass values CompressAI's int32 shifts differ; count those out.
        symbols, _ = model_decode(padded, indexes, ESCAPING)
        agree = [a == b for a, b in zip(symbols, expected, strict=True) if abs(a) < 1 << 28]
        assert all(agree) and len(agree) > 30


@pytest.mark.parametrize("pattern", [b"\xff", b"\x00", b"\xf0", b"\x0f\xff", None])
@pytest.mark.parametrize("tables", [GAUSSIAN, ESCAPING], ids=["gaussian", "escaping"])
def test_no_string_makes_the_decoder_read_past_its_guard(pattern, tables) -> None:
    """Strings of 15s (the longest bypass runs), zeros and noise, asked for far more symbols
    than they hold: the model's reads stay inside string + guard, with a guard for every
    symbol escaping, and with one for the string's escape budget when escapes are counted
    (every 16 symbols here, as the staged decoder counts every ESCAPE_CHECK_INTERVAL)."""
    for length in (0, 3, 64, 301):
        string = random.Random(length).randbytes(length) if pattern is None else pattern * length
        string = string[:length]
        indexes = [i % len(tables.lengths) for i in range(500)]
        padded = guarded(string, len(indexes), len(indexes))
        _, words = model_decode(padded, indexes, tables)  # IndexError past the guard
        assert 4 * words <= len(padded)
        budget = escape_budget(length, tables)
        padded = guarded(string, len(indexes), min(len(indexes), budget + 16))
        _, words = model_decode(padded, indexes, tables, budget, check_every=16)
        assert 4 * words <= len(padded)
        if length < 8:  # unguarded, the same request reads past the string
            with pytest.raises(IndexError):
                model_decode(string, indexes, tables)


def test_a_real_stream_of_the_likeliest_symbols_fits_the_capacity_bound() -> None:
    """The densest stream there is, the most probable entry over and over, holds no more
    symbols than :func:`max_symbols` allows, and the bound is within 3x of it."""
    frequencies = GAUSSIAN.cdf[:, 1:] - GAUSSIAN.cdf[:, :-1]
    table = int(frequencies.max(dim=1).values.argmax())
    entry = int(frequencies[table].argmax())
    count = 1_000_000
    string = RansEncoder().encode_with_indexes(
        [entry + int(GAUSSIAN.offsets[table])] * count,
        [table] * count,
        GAUSSIAN.cdf.tolist(),
        GAUSSIAN.lengths.tolist(),
        GAUSSIAN.offsets.tolist(),
    )
    capacity = max_symbols(len(string), min_bits_per_symbol(GAUSSIAN))
    assert count <= capacity < 3 * count


def test_a_string_too_short_for_its_symbols_is_refused_and_reads_stay_within_the_count() -> None:
    with pytest.raises(StreamError, match="declares 100000000 symbols, more than its 5 bytes"):
        bounded_strings("the latent 'y'", [b"12345"], 10**8, GAUSSIAN, counts_escapes=True)
    stage = SymbolEncoding(
        torch.zeros(1, 10, dtype=torch.int32),
        torch.zeros(1, 10, dtype=torch.int32),
        torch.empty(0),
        torch.empty(0),
    )
    encoder = StagedRansEncoder(GAUSSIAN, batch_size=1)
    encoder.write(stage)
    decoder = StagedRansDecoder(GAUSSIAN, encoder.flush(), symbols=10)
    assert torch.equal(decoder.read(stage.indexes[:, :6]), stage.symbols[:, :6])
    with pytest.raises(StreamError, match="asked for 6 more symbols .* declared to hold 4 more"):
        decoder.read(stage.indexes[:, :6])


def test_a_string_that_escapes_more_than_its_bytes_can_hold_is_stopped() -> None:
    """100 bytes of noise read as 20000 symbols of a table whose escape has 536/65536 of
    the mass: about 130 escapes by the first check, where 100 bytes hold at most 73."""
    tables = CdfTables(
        torch.tensor([[0, 65000, 1 << 16]], dtype=torch.int32),
        torch.tensor([3], dtype=torch.int32),
        torch.tensor([0], dtype=torch.int32),
    )
    assert escape_budget(100, tables) == 73
    decoder = StagedRansDecoder(tables, [random.Random(1).randbytes(100)], symbols=20000)
    with pytest.raises(StreamError, match="more escaped symbols than its string's bytes"):
        decoder.read(torch.zeros(1, 20000, dtype=torch.int32))
