"""A self-describing container for the bitstreams of one coded image.

Layout (all integers little-endian): magic ``b"LICX"``, format version (u8), image height
and width (u16 each), latent height and width (u16 each), number of latents (u8), then per
latent its name (u8 length + ASCII), its string (u32 length + bytes) and the CRC-32 of the
string (u32). The header costs about 30 bytes, counted in the reported bpp like the
payload. The checksums turn a damaged payload into a :class:`BitstreamError` before any
symbol is decoded (an rANS decoder reads damaged bytes into arbitrary symbols otherwise).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from licexp.backbones import Bitstreams

MAGIC = b"LICX"
VERSION = 2
_HEADER = struct.Struct("<4sBHHHHB")


class BitstreamError(ValueError):
    """A bitstream that is not a licexp container, or is truncated or corrupt."""


@dataclass
class CodedImage:
    """The bitstreams of one image and the size of the image they decode to."""

    bitstreams: Bitstreams
    height: int
    width: int


def pack(coded: CodedImage) -> bytes:
    """Serialises one image's bitstreams (batch of one) into a container."""
    strings = coded.bitstreams.strings
    parts = [
        _HEADER.pack(
            MAGIC, VERSION, coded.height, coded.width, *coded.bitstreams.latent_size, len(strings)
        )
    ]
    for name, latent_strings in strings.items():
        if len(latent_strings) != 1:
            raise ValueError(
                f"a container holds one image; latent {name!r} has {len(latent_strings)} strings"
            )
        encoded_name = name.encode("ascii")
        parts.append(struct.pack("<B", len(encoded_name)) + encoded_name)
        string = latent_strings[0]
        parts.append(struct.pack("<I", len(string)) + string)
        parts.append(struct.pack("<I", zlib.crc32(string)))
    return b"".join(parts)


def unpack(data: bytes) -> CodedImage:
    """Parses a container; raises :class:`BitstreamError` naming what is wrong."""
    if len(data) < _HEADER.size:
        raise BitstreamError(f"bitstream too short: {len(data)} bytes, header needs {_HEADER.size}")
    magic, version, height, width, latent_h, latent_w, count = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BitstreamError(f"not a licexp bitstream (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise BitstreamError(f"unsupported bitstream version {version} (this is {VERSION})")
    position = _HEADER.size
    strings: dict[str, list[bytes]] = {}
    try:
        for _ in range(count):
            (name_length,) = struct.unpack_from("<B", data, position)
            position += 1
            name = data[position : position + name_length].decode("ascii")
            position += name_length
            (length,) = struct.unpack_from("<I", data, position)
            position += 4
            if position + length + 4 > len(data):
                raise BitstreamError(
                    f"latent {name!r} is truncated: needs {length} bytes and its checksum, "
                    f"{len(data) - position} left"
                )
            string = data[position : position + length]
            position += length
            (checksum,) = struct.unpack_from("<I", data, position)
            position += 4
            if zlib.crc32(string) != checksum:
                raise BitstreamError(
                    f"latent {name!r} fails its CRC-32 check: the bitstream is corrupt"
                )
            strings[name] = [string]
    except (struct.error, UnicodeDecodeError) as error:
        raise BitstreamError(f"corrupt bitstream header at byte {position}: {error}") from error
    if position != len(data):
        raise BitstreamError(f"{len(data) - position} unexpected trailing bytes")
    return CodedImage(Bitstreams(strings, (latent_h, latent_w)), height, width)
