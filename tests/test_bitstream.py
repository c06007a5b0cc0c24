"""The bitstream container: round trip and clear errors for damaged input."""

from __future__ import annotations

import pytest

from licexp.backbones import Bitstreams
from licexp.evaluation.bitstream import BitstreamError, CodedImage, pack, unpack


def _coded() -> CodedImage:
    return CodedImage(Bitstreams({"z": [b"\x01\x02"], "y": [b"abc" * 100]}, (3, 5)), 131, 97)


def test_pack_unpack_round_trip() -> None:
    coded = unpack(pack(_coded()))
    assert (coded.height, coded.width) == (131, 97)
    assert coded.bitstreams.latent_size == (3, 5)
    assert coded.bitstreams.strings == {"z": [b"\x01\x02"], "y": [b"abc" * 100]}
    assert list(coded.bitstreams.strings) == ["z", "y"], "decoding order is kept"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:5], "too short"),
        (lambda data: b"JPEG" + data[4:], "not a licexp bitstream"),
        (lambda data: data[:4] + b"\x09" + data[5:], "unsupported bitstream version"),
        (lambda data: data[:-10], "truncated"),
        (lambda data: data + b"\x00", "trailing"),
    ],
)
def test_damaged_bitstreams_fail_with_a_message_naming_the_problem(damage, message) -> None:
    with pytest.raises(BitstreamError, match=message):
        unpack(damage(pack(_coded())))


def test_a_batch_cannot_go_into_one_container() -> None:
    coded = CodedImage(Bitstreams({"y": [b"a", b"b"]}, (1, 1)), 64, 64)
    with pytest.raises(ValueError, match="one image"):
        pack(coded)


def test_a_flipped_bit_in_a_payload_fails_its_checksum() -> None:
    data = bytearray(pack(_coded()))
    data[-40] ^= 0x10  # inside latent y's string
    with pytest.raises(BitstreamError, match="'y' fails its CRC-32 check"):
        unpack(bytes(data))
