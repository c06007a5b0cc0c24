"""The staged rANS pipes: CompressAI's bytes, reads of any size, index checks, checksums."""

from __future__ import annotations

import pytest
import torch
from compressai.ans import RansEncoder
from helpers import gaussian_table_model

from licexp.backbones.staged_rans import StagedRansDecoder, StagedRansEncoder, symbol_checksum
from licexp.quant.symbols import SymbolEncoding

GAUSSIAN = gaussian_table_model()
TABLES = GAUSSIAN.tables_for(GAUSSIAN.coding)


def random_stage(count: int, seed: int) -> SymbolEncoding:
    """Two images' symbols (escapes included: beyond a table's range) and table indexes."""
    generator = torch.Generator().manual_seed(seed)
    symbols = torch.randint(-40, 41, (2, count), generator=generator, dtype=torch.int32)
    indexes = torch.randint(0, len(TABLES), (2, count), generator=generator, dtype=torch.int32)
    return SymbolEncoding(symbols, indexes, torch.empty(0), torch.empty(0))


def test_one_write_is_compressais_one_call_and_reads_of_any_size_decode_it() -> None:
    """Stages smaller than the tables (rows trimmed to those used) and larger (every row)
    decode exactly; one write gives the bytes of CompressAI's ``encode_with_indexes``."""
    entries = int(TABLES.lengths.sum())
    stages = [random_stage(count, seed) for seed, count in enumerate((7, entries + 500, 90, 0))]
    encoder = StagedRansEncoder(TABLES, batch_size=2)
    for stage in stages:
        encoder.write(stage)
    strings = encoder.flush()
    decoder = StagedRansDecoder(TABLES, strings, symbols=sum(s.symbols.size(1) for s in stages))
    for stage in stages:
        assert torch.equal(decoder.read(stage.indexes), stage.symbols)

    single = random_stage(300, seed=9)
    encoder = StagedRansEncoder(TABLES, batch_size=2)
    encoder.write(single)
    expected = RansEncoder().encode_with_indexes(  # as GaussianConditional.compress calls it
        single.symbols[1].tolist(),
        single.indexes[1].tolist(),
        TABLES.cdf.tolist(),
        TABLES.lengths.tolist(),
        TABLES.offsets.tolist(),
    )
    assert encoder.flush()[1] == expected


@pytest.mark.parametrize("index", [-1, len(TABLES)])
def test_a_table_index_outside_the_tables_is_refused(index) -> None:
    stage = random_stage(5, seed=1)
    encoder = StagedRansEncoder(TABLES, batch_size=2)
    encoder.write(stage)
    decoder = StagedRansDecoder(TABLES, encoder.flush(), symbols=5)
    indexes = stage.indexes.clone()
    indexes[1, 3] = index
    with pytest.raises(ValueError, match=f"CDF table indexes .*outside 0..{len(TABLES)}"):
        decoder.read(indexes)


def test_the_checksums_agree_exactly_when_the_reader_uses_the_writers_tables() -> None:
    stage = random_stage(200, seed=4)
    with symbol_checksum() as written:
        encoder = StagedRansEncoder(TABLES, batch_size=2)
        encoder.write(stage)
        strings = encoder.flush()
    with symbol_checksum() as read:
        StagedRansDecoder(TABLES, strings, 200).read(stage.indexes)
    other = stage.indexes.clone()
    other[0, 0] = (other[0, 0] + 1) % len(TABLES)
    with symbol_checksum() as misread:
        StagedRansDecoder(TABLES, strings, 200).read(other)
    assert written.value == read.value != misread.value
