"""Bounds that keep CompressAI's rANS decoder inside the string it decodes, whatever it holds.

CompressAI's ``RansDecoder`` (64-bit state, 32-bit words, 16-bit precision, 4-bit bypass
values for escaped symbols) reads its string through a raw pointer with no bound: a string
shorter than the symbols asked of it, damaged or forged, makes it read past its end, which
crashes the process or reads other memory. Three bounds make that impossible:

* :func:`check_symbol_count` refuses a string too short for the symbols a header declares,
  before anything is allocated: every symbol costs at least the most probable entry's
  ``-log2(f / 2^16)`` bits of the tables in use (:func:`min_bits_per_symbol`).
* An escaped symbol (the table's last entry, then its value in 4-bit bypass values) costs
  at least that entry's bits and 4 more, so a string holds at most :func:`escape_budget`
  of them; a decoder that counts escapes every :data:`ESCAPE_CHECK_INTERVAL` symbols
  (:class:`~licexp.backbones.staged_rans.StagedRansDecoder`) stops a string that exceeds it.
* :func:`guarded` appends zeros that the decoder cannot read past (:func:`guard_bytes`).

Why the guard suffices: the decoder reads 2 words to start; decoding a symbol from its CDF
(``Rans64DecAdvance``) reads at most one word, and so does each 4-bit bypass value
(``Rans64DecGetBits``) of an escaped symbol: a first value, more while the value is 15, then
as many values as their sum. Once the pointer is in the guard, a refill puts 32 zero bits at
the bottom of the state, so a run of 15s ends after at most the 8 values the state held
(it is below 2^63 and refills below 2^31) plus 8 for each string word read during the run;
the sum is then at most ``15 * 8 + 14 = 134`` plus 15 per 15 read from the string, and 134
values span at most 18 words. So a symbol reads at most 1 guard word, an escaped one at
most ``1 + 1 + 1 + 18 = 21``, and each 15 the string holds (at most two per byte) adds at
most 15 values, 15/8 words: 4 bytes per symbol, 84 per escape, 15 per string byte, and a
few words for the start and a partial last word. The guard exists only while the entropy
decoder runs, before the synthesis transform allocates its own, larger, activations.
"""

from __future__ import annotations

import math

import torch

from licexp.quant.symbols import CdfTables

PRECISION = 16
"""Bits of CompressAI's quantised CDFs (``entropy_coder_precision``)."""
ROUNDING_SLACK = 2.0**-14
"""Fraction of a symbol's cost the encoder's integer arithmetic may lose: coding an entry of
frequency ``f`` from a state of at least ``2^15 f`` scales it by ``2^16 / f`` less at most
``2^16 - f``, a relative loss below ``(2^16 - f) / 2^31``, which is ``2^-15`` of the cost."""
BYPASS_BITS = 4
"""Bits of each bypass value of an escaped symbol (CompressAI's ``bypass_precision``)."""
ESCAPE_CHECK_INTERVAL = 16384
"""Symbols a counting decoder reads between two checks of its escapes against the budget."""
GUARD_PER_SYMBOL = 4
GUARD_PER_ESCAPE = 84
GUARD_PER_STRING_BYTE = 16
GUARD_FIXED = 64


class StreamError(ValueError):
    """A string that cannot hold the symbols asked of it: damaged, truncated or forged."""


def min_bits_per_symbol(tables: CdfTables) -> float:
    """Fewest bits an rANS string spends on one symbol coded with ``tables``:
    ``-log2(f_max / 2^16)`` of the most probable entry of any table, less the rounding
    (:data:`ROUNDING_SLACK`)."""
    cdf = tables.cdf.to(torch.int64)
    frequencies = cdf[:, 1:] - cdf[:, :-1]
    valid = torch.arange(frequencies.size(1)) < (tables.lengths.to(torch.int64) - 1)[:, None]
    largest = int(frequencies[valid].max()) if valid.any() else 1 << PRECISION
    return (PRECISION - math.log2(largest)) * (1 - ROUNDING_SLACK)


def min_bits_per_escape(tables: CdfTables) -> float:
    """Fewest bits an escaped symbol costs: the likeliest escape entry of any table, less
    the rounding, and the first bypass value, which every escape writes."""
    cdf = tables.cdf.to(torch.int64)
    last = tables.lengths.to(torch.int64) - 1
    escapes = cdf.gather(1, last[:, None]) - cdf.gather(1, last[:, None] - 1)
    largest = int(escapes.max()) if escapes.numel() else 1 << PRECISION
    return (PRECISION - math.log2(largest)) * (1 - ROUNDING_SLACK) + BYPASS_BITS


def max_symbols(length: int, min_bits: float) -> float:
    """Most symbols a string of ``length`` bytes can hold at ``min_bits`` bits each.

    The encoder's state starts at 2^31, ends below 2^63 and is flushed as 8 bytes; each
    symbol raises its log2 by at least ``min_bits`` and each 32-bit word written lowers it
    by 32, so ``n * min_bits < 8 * length``. Infinite where a symbol may cost nothing
    (a table of one entry). The Gaussian table of CompressAI's smallest scale spends
    ``-log2(65533 / 65536)`` bits on its likeliest symbol, about 1.2e5 symbols per byte:
    a weak bound, which is why strings are also :func:`guarded`.
    """
    return 8 * length / min_bits if min_bits > 0 else math.inf


def check_symbol_count(what: str, length: int, symbols: int, min_bits: float) -> None:
    """Raises :class:`StreamError` when ``symbols`` cannot fit in ``length`` bytes."""
    capacity = max_symbols(length, min_bits)
    if symbols > capacity:
        raise StreamError(
            f"{what} declares {symbols} symbols, more than its {length} bytes can hold "
            f"(at most {capacity:.0f} under this model's tables): the file is damaged or forged"
        )


def escape_budget(length: int, tables: CdfTables) -> int:
    """Most escaped symbols a string of ``length`` bytes coded with ``tables`` can hold."""
    return int(max_symbols(length, min_bits_per_escape(tables)))


def guard_bytes(length: int, symbols: int, escapes: int) -> int:
    """Zero bytes after a ``length``-byte string that CompressAI's decoder cannot read past
    while decoding ``symbols`` symbols of which at most ``escapes`` escape (the module
    docstring derives the bound)."""
    return (
        GUARD_PER_SYMBOL * symbols
        + GUARD_PER_ESCAPE * escapes
        + GUARD_PER_STRING_BYTE * length
        + GUARD_FIXED
    )


def guarded(string: bytes, symbols: int, escapes: int) -> bytes:
    """``string`` followed by :func:`guard_bytes` zeros: honest strings decode as before
    (rANS reads exactly the words its encoder wrote), any other string stays in bounds."""
    return string + bytes(guard_bytes(len(string), symbols, escapes))


def bounded_strings(
    what: str, strings: list[bytes], symbols: int, tables: CdfTables, counts_escapes: bool
) -> list[bytes]:
    """Each string checked to hold ``symbols`` symbols coded with ``tables``
    (:func:`check_symbol_count`) and :func:`guarded`: what CompressAI's decoder may be handed.

    A decoder that ``counts_escapes`` (stops past :func:`escape_budget`, checking every
    :data:`ESCAPE_CHECK_INTERVAL` symbols) gets a guard for that many escapes; any other
    a guard for every symbol escaping, 22 times larger.
    """
    min_bits = min_bits_per_symbol(tables)
    bounded = []
    for string in strings:
        check_symbol_count(what, len(string), symbols, min_bits)
        escapes = symbols
        if counts_escapes:
            escapes = min(symbols, escape_budget(len(string), tables) + ESCAPE_CHECK_INTERVAL)
        bounded.append(guarded(string, symbols, escapes))
    return bounded
