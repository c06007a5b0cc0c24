"""The bitstream container: round trip, and a clear error for every kind of damage."""

from __future__ import annotations

import struct
import zlib

import pytest

from licexp.backbones import Bitstreams
from licexp.evaluation.bitstream import (
    BitstreamError,
    CodedImage,
    ModelIdentity,
    pack,
    unpack,
)

IDENTITY = ModelIdentity(bytes(range(8)), "MeanScaleHyperprior", "NoiseQuantization", "run-1")


def _coded() -> CodedImage:
    bitstreams = Bitstreams({"z": [b"\x01\x02"], "y": [b"abc" * 100]}, (3, 5))
    return CodedImage(bitstreams, 131, 97, IDENTITY, symbol_checksum=0xDEADBEEF)


def test_pack_unpack_round_trip() -> None:
    coded = unpack(pack(_coded()))
    assert (coded.height, coded.width) == (131, 97)
    assert coded.bitstreams.latent_size == (3, 5)
    assert coded.bitstreams.strings == {"z": [b"\x01\x02"], "y": [b"abc" * 100]}
    assert list(coded.bitstreams.strings) == ["z", "y"], "decoding order is kept"
    assert coded.identity == IDENTITY and coded.symbol_checksum == 0xDEADBEEF


def _flip(data: bytes, position: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 0x10
    return bytes(damaged)


HEADER_START = 11  # magic 4, version 1, header length 2, header CRC 4

DAMAGE = {
    "too short": (lambda data: data[:5], "too short"),
    "other format": (lambda data: b"JPEG" + data[4:], "not a licexp bitstream"),
    "other version": (lambda data: data[:4] + b"\x09" + data[5:], "unsupported bitstream version"),
    "cut in the header": (lambda data: data[: HEADER_START + 6], "truncated inside its header"),
    "flipped height": (lambda data: _flip(data, HEADER_START), "header fails its CRC-32"),
    "flipped latent size": (lambda data: _flip(data, HEADER_START + 5), "header fails its CRC-32"),
    "flipped latent name": (lambda data: _flip(data, data.index(b"\x01y") + 1), "header fails"),
    "flipped header CRC": (lambda data: _flip(data, 8), "header fails its CRC-32"),
    "cut in the payload": (lambda data: data[:-10], "truncated: 10 payload bytes missing"),
    "extended": (lambda data: data + b"\x00", "1 unexpected trailing bytes"),
    "flipped payload bit": (lambda data: _flip(data, len(data) - 7), "'y' fails its CRC-32"),
    "random payload": (lambda data: data[:-300] + bytes(300), "'y' fails its CRC-32"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_every_kind_of_damage_fails_with_a_message_naming_it(kind) -> None:
    damage, message = DAMAGE[kind]
    with pytest.raises(BitstreamError, match=message):
        unpack(damage(pack(_coded())))


def test_a_header_with_valid_checksum_but_inconsistent_fields_is_refused() -> None:
    """A header whose CRC was recomputed over bad fields: lengths that run past it."""
    data = bytearray(pack(_coded()))
    length = struct.unpack_from("<H", data, 5)[0]
    header = bytearray(data[HEADER_START : HEADER_START + length])
    header[-10] = 200  # the last latent name's length byte now runs past the header
    data[7:11] = struct.pack("<I", zlib.crc32(bytes(header)))
    data[HEADER_START : HEADER_START + length] = header
    with pytest.raises(BitstreamError, match="malformed header"):
        unpack(bytes(data))


def test_a_batch_cannot_go_into_one_container() -> None:
    coded = CodedImage(Bitstreams({"y": [b"a", b"b"]}, (1, 1)), 64, 64)
    with pytest.raises(ValueError, match="one image"):
        pack(coded)


def test_sizes_outside_the_container_are_refused_when_packing() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        pack(CodedImage(Bitstreams({"y": [b"a"]}, (1, 1)), 70000, 64))
