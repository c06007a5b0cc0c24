"""A self-describing, self-checking container for the bitstreams of one coded image.

Layout, version 3 (integers little-endian)::

    magic       b"LICX"
    version     u8 (3)
    header      u16 length, then u32 CRC-32 of the header bytes, then the header:
        image height, width              u16 each
        hyper latent height, width       u16 each (the size the decoder starts from)
        model fingerprint                8 bytes (:func:`model_fingerprint`)
        symbol checksum                  u32 (CRC-32 of every y symbol and its table index)
        padding                          u8 (an index into :data:`PADDINGS`)
        backbone, strategy, run name     each u8 length + UTF-8
        latent count                     u8
        per latent: name (u8 length + ASCII), string length (u32), CRC-32 of the string (u32)
    payload     the latents' strings, in decoding order

The header's own CRC catches a damaged size or name before anything is read or
allocated; the strings' CRCs catch a damaged payload before any symbol is decoded (an rANS
decoder reads damaged bytes into arbitrary symbols otherwise); the declared lengths catch a
truncated or extended file. The fingerprint (weights, CDF tables and the strategy) names
the model a file needs, and the symbol checksum, recomputed while decoding
(:func:`licexp.backbones.staged_rans.symbol_checksum`), catches a decoder whose entropy
parameters differ from the encoder's. The header costs 80-130 bytes by the names it
records (92 for ``MeanScaleHyperprior`` + ``NoiseQuantization`` and 102 with
``StraightThroughQuantization`` without a run name, 121 with a dated one), counted in
``bpp_file`` but not in ``bpp``, which counts the strings alone as CompressAI's
``eval_model`` does.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, field

import torch
from torch import nn

from licexp.backbones import Bitstreams

MAGIC = b"LICX"
VERSION = 3
FINGERPRINT_BYTES = 8
_PREAMBLE = struct.Struct("<4sBHI")
_SIZES = struct.Struct("<HHHH")
_MAX_SIDE = 65535
MAX_PIXELS = 2**28
"""Largest image a container may declare before it is decoded (``--max-pixels``): about
16k x 16k, beyond what a decoder's activations fit in the memory of one machine."""
PADDINGS = ("replicate", "centred_zeros")
"""How the image was padded to the codec's multiple: licexp's replicate padding at the bottom
and right, or zeros around the centred image (the Tiny-LIC release's evaluation)."""


class BitstreamError(ValueError):
    """A bitstream that is not a licexp container, is damaged, or belongs to another model."""


@dataclass(frozen=True)
class ModelIdentity:
    """What a container says about the model that wrote it."""

    fingerprint: bytes = bytes(FINGERPRINT_BYTES)
    backbone: str = ""
    strategy: str = ""
    run: str = ""

    def describe(self) -> str:
        run = f" of run {self.run!r}" if self.run else ""
        return f"{self.backbone} + {self.strategy}{run} (fingerprint {self.fingerprint.hex()})"


def model_fingerprint(codec: nn.Module) -> bytes:
    """SHA-256 (first 8 bytes) of everything decoding depends on: every parameter and buffer
    (the CDF tables included) by name, dtype, shape and value, and the strategy's settings."""
    digest = hashlib.sha256(repr(getattr(codec, "quantizer", None)).encode())
    for name, tensor in sorted(codec.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()[:FINGERPRINT_BYTES]


def identity_of(codec: nn.Module, run: str = "") -> ModelIdentity:
    """The identity a container of ``codec`` records."""
    quantizer = getattr(codec, "quantizer", None)
    return ModelIdentity(
        model_fingerprint(codec), type(codec).__name__, type(quantizer).__name__, run
    )


@dataclass
class CodedImage:
    """The bitstreams of one image, the size it decodes to and what decodes it."""

    bitstreams: Bitstreams
    height: int
    width: int
    identity: ModelIdentity = field(default_factory=ModelIdentity)
    symbol_checksum: int = 0
    padding: str = "replicate"


def _text(value: str, what: str) -> bytes:
    encoded = value.encode("utf-8")
    if len(encoded) > 255:
        raise ValueError(f"{what} {value!r} is longer than the container's 255 bytes")
    return struct.pack("<B", len(encoded)) + encoded


def pack(coded: CodedImage) -> bytes:
    """Serialises one image's bitstreams (a batch of one) into a container."""
    sizes = (coded.height, coded.width, *coded.bitstreams.latent_size)
    if not all(0 < side <= _MAX_SIDE for side in sizes):
        raise ValueError(f"sizes {sizes} do not fit the container's 1..{_MAX_SIDE}")
    identity = coded.identity
    if len(identity.fingerprint) != FINGERPRINT_BYTES:
        raise ValueError(
            f"a fingerprint has {FINGERPRINT_BYTES} bytes, got {identity.fingerprint!r}"
        )
    strings = coded.bitstreams.strings
    header = [
        _SIZES.pack(*sizes),
        identity.fingerprint,
        struct.pack("<IB", coded.symbol_checksum, PADDINGS.index(coded.padding)),
        _text(identity.backbone, "backbone name"),
        _text(identity.strategy, "strategy name"),
        _text(identity.run, "run name"),
        struct.pack("<B", len(strings)),
    ]
    payload = []
    for name, latent_strings in strings.items():
        if len(latent_strings) != 1:
            raise ValueError(
                f"a container holds one image; latent {name!r} has {len(latent_strings)} strings"
            )
        string = latent_strings[0]
        header.append(
            _text(name, "latent name") + struct.pack("<II", len(string), zlib.crc32(string))
        )
        payload.append(string)
    header_bytes = b"".join(header)
    preamble = _PREAMBLE.pack(MAGIC, VERSION, len(header_bytes), zlib.crc32(header_bytes))
    return preamble + header_bytes + b"".join(payload)


class _Reader:
    """Reads fields of a header that has passed its CRC (so a short read is a format error)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.position = data, 0

    def take(self, count: int) -> bytes:
        if self.position + count > len(self.data):
            raise BitstreamError(f"malformed header: field at byte {self.position} runs past it")
        chunk = self.data[self.position : self.position + count]
        self.position += count
        return chunk

    def unpack(self, layout: struct.Struct | str) -> tuple[int, ...]:
        layout = struct.Struct(layout) if isinstance(layout, str) else layout
        return layout.unpack(self.take(layout.size))

    def text(self, what: str) -> str:
        (length,) = self.unpack("<B")
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError as error:
            raise BitstreamError(f"malformed header: {what} is not UTF-8") from error


def unpack(data: bytes, max_pixels: int = MAX_PIXELS) -> CodedImage:
    """Parses and checks a container; raises :class:`BitstreamError` naming what is wrong.

    An image of more than ``max_pixels`` pixels is refused before anything is decoded or
    allocated for it.
    """
    if len(data) < _PREAMBLE.size:
        raise BitstreamError(
            f"bitstream too short: {len(data)} bytes, the preamble needs {_PREAMBLE.size}"
        )
    magic, version, header_length, header_crc = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise BitstreamError(f"not a licexp bitstream (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise BitstreamError(f"unsupported bitstream version {version} (this is {VERSION})")
    header = data[_PREAMBLE.size : _PREAMBLE.size + header_length]
    if len(header) != header_length:
        raise BitstreamError(
            f"bitstream truncated inside its header: {len(header)} of {header_length} bytes"
        )
    if zlib.crc32(header) != header_crc:
        raise BitstreamError("the header fails its CRC-32 check: sizes or names are damaged")
    reader = _Reader(header)
    height, width, latent_h, latent_w = reader.unpack(_SIZES)
    if 0 in (height, width, latent_h, latent_w):
        raise BitstreamError(
            f"malformed header: zero size in {(height, width, latent_h, latent_w)}"
        )
    if height * width > max_pixels:
        raise BitstreamError(
            f"the header declares a {height}x{width} image ({height * width} pixels), more "
            f"than the decoder's limit of {max_pixels} (raise it with --max-pixels if the "
            "file is trusted)"
        )
    fingerprint = reader.take(FINGERPRINT_BYTES)
    symbol_checksum, padding = reader.unpack("<IB")
    if padding >= len(PADDINGS):
        raise BitstreamError(f"malformed header: unknown padding {padding}")
    identity = ModelIdentity(
        fingerprint,
        reader.text("backbone name"),
        reader.text("strategy name"),
        reader.text("run name"),
    )
    (count,) = reader.unpack("<B")
    entries = []
    for _ in range(count):
        name = reader.text("latent name")
        if any(name == seen for seen, _, _ in entries):
            raise BitstreamError(f"malformed header: latent {name!r} appears twice")
        length, checksum = reader.unpack("<II")
        entries.append((name, length, checksum))
    if reader.position != header_length:
        raise BitstreamError(f"malformed header: {header_length - reader.position} unread bytes")
    position = _PREAMBLE.size + header_length
    expected = position + sum(length for _, length, _ in entries)
    if len(data) < expected:
        raise BitstreamError(f"bitstream truncated: {expected - len(data)} payload bytes missing")
    if len(data) > expected:
        raise BitstreamError(f"{len(data) - expected} unexpected trailing bytes after the payload")
    strings: dict[str, list[bytes]] = {}
    for name, length, checksum in entries:
        string = data[position : position + length]
        position += length
        if zlib.crc32(string) != checksum:
            raise BitstreamError(f"latent {name!r} fails its CRC-32 check: the payload is corrupt")
        strings[name] = [string]
    bitstreams = Bitstreams(strings, (latent_h, latent_w))
    return CodedImage(bitstreams, height, width, identity, symbol_checksum, PADDINGS[padding])
