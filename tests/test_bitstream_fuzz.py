"""A seeded, structure-aware fuzz of the container: random damage, and forged headers with
every CRC recomputed (huge and inconsistent sizes, missing, unknown, repeated and swapped
latents, lengths past the end, strings of noise and of 15s), each decoded in a child
process under a memory limit. Every file but the original must be refused by
``BitstreamError``: no signal, no other exception, no hang, no allocation above the limit."""

from __future__ import annotations

import json
import random
import resource
import struct
import subprocess
import sys
import zlib

import pytest
from helpers import REPO_ROOT, informative_codec

from licexp.data import PhotoSamples
from licexp.evaluation.bitstream import MAGIC, VERSION, unpack
from licexp.evaluation.codec import code_image

pytestmark = pytest.mark.slow

MAX_PIXELS = 1 << 24
"""The decoder's limit in the child: what a service would set for its memory."""
MEMORY_LIMIT = 6 << 30
"""Address space of the child, torch's libraries included (about 3 GiB of it)."""


def container(
    sizes: tuple[int, int, int, int],
    fingerprint: bytes,
    entries: list[tuple[str, bytes]],
    checksum: int = 0,
    padding: int = 0,
    declared: dict[str, int] | None = None,
) -> bytes:
    """A container written field by field as anyone can (licexp's ``pack`` refuses what a
    forger wants): ``declared`` overrides the length a latent's entry states."""
    declared = declared or {}
    header = [struct.pack("<HHHH", *sizes), fingerprint, struct.pack("<IB", checksum, padding)]
    header += [struct.pack("<B", len(text)) + text for text in (b"MeanScaleHyperprior", b"", b"")]
    header.append(struct.pack("<B", len(entries)))
    for name, string in entries:
        length = declared.get(name, len(string))
        header.append(
            struct.pack("<B", len(name))
            + name.encode()
            + struct.pack("<II", length, zlib.crc32(string))
        )
    header_bytes = b"".join(header)
    preamble = struct.pack("<4sBHI", MAGIC, VERSION, len(header_bytes), zlib.crc32(header_bytes))
    return preamble + header_bytes + b"".join(string for _, string in entries)


def damaged(original: bytes, rng: random.Random) -> bytes:
    """One random damage: flipped bytes, a cut, an insertion, a deletion or an append."""
    data = bytearray(original)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= rng.randint(1, 255)
    elif kind == 1:
        del data[rng.randrange(len(data)) :]
    elif kind == 2:
        position = rng.randrange(len(data))
        data[position:position] = rng.randbytes(rng.randint(1, 64))
    elif kind == 3:
        start = rng.randrange(len(data))
        del data[start : start + rng.randint(1, 64)]
    else:
        data += rng.randbytes(rng.randint(1, 64))
    return bytes(data)


def forged_cases(original: bytes, rng: random.Random) -> dict[str, bytes]:
    coded = unpack(original)
    fingerprint, checksum = coded.identity.fingerprint, coded.symbol_checksum
    z, y = coded.bitstreams.strings["z"][0], coded.bitstreams.strings["y"][0]
    real = (coded.height, coded.width, *coded.bitstreams.latent_size)

    def consistent(height: int, width: int) -> tuple[int, int, int, int]:
        return height, width, -(-height // 64), -(-width // 64)

    def noise(length: int) -> bytes:
        return rng.randbytes(length) if rng.random() < 0.7 else b"\xff" * length

    cases: dict[str, bytes] = {}
    for i in range(40):  # sizes: consistent (some huge), inconsistent; strings of noise
        side = rng.choice([1, 64, 1024, 4096, 16384, 65535])
        height, width = rng.randint(1, side), rng.randint(1, side)
        sizes = consistent(height, width)
        if i % 4 == 1:
            sizes = (height, width, rng.randint(0, 2000), rng.randint(0, 2000))
        # A z string long enough for its symbols reaches y, which then reads far past its own.
        z_length = 16 * sizes[2] * sizes[3] if i % 3 == 0 else rng.randint(0, 5000)
        strings = [("z", noise(min(z_length, 1 << 20))), ("y", noise(rng.randint(0, 64)))]
        cases[f"sizes_{i:02d}"] = container(sizes, fingerprint, strings, checksum)
    for i in range(40):  # the real sizes, strings of noise or 15s of any length
        strings = [("z", noise(rng.randint(0, 300))), ("y", noise(rng.randint(0, 3000)))]
        if i % 3 == 0:  # one of them real
            strings[i % 2] = [("z", z), ("y", y)][i % 2]
        cases[f"strings_{i:02d}"] = container(real, fingerprint, strings, checksum)
    names = {
        "missing_y": [("z", z)],
        "missing_z": [("y", y)],
        "none": [],
        "unknown": [("z", z), ("y", y), ("w", b"\x01\x02")],
        "renamed": [("z", z), ("Y", y)],
        "swapped": [("y", z), ("z", y)],
        "repeated": [("z", z), ("z", z), ("y", y)],
        "empty_strings": [("z", b""), ("y", b"")],
    }
    for name, strings in names.items():
        cases[f"names_{name}"] = container(real, fingerprint, strings, checksum)
    for i in range(10):  # lengths past the end (or short of it), CRCs of the real strings
        latent = rng.choice(["z", "y"])
        delta = rng.choice([1, 4, 1000, 1 << 31, (1 << 32) - 1 - len(y) - len(z)])
        cases[f"length_{i}"] = container(
            real, fingerprint, [("z", z), ("y", y)], checksum, declared={latent: len(y) + delta}
        )
    for i in range(10):  # checksum, padding or fingerprint forged
        field = i % 3
        cases[f"fields_{i}"] = container(
            real,
            fingerprint if field != 2 else rng.randbytes(8),
            [("z", z), ("y", y)],
            checksum ^ rng.randint(1, 1 << 31) if field == 0 else checksum,
            padding=rng.randint(0, 255) if field == 1 else 0,
        )
    return cases


def test_every_damaged_or_forged_container_is_refused_by_a_bitstream_error(tmp_path) -> None:
    codec = informative_codec()
    coding = code_image(codec, PhotoSamples(["coffee"], crop_size=128)[0]["image"])
    original = coding.container
    rng = random.Random(22)
    cases = {f"damage_{i:03d}": damaged(original, rng) for i in range(150)}
    cases.update(forged_cases(original, rng))
    cases = {name: data for name, data in cases.items() if data != original}
    assert len(cases) > 250
    for name, data in {**cases, "original": original}.items():
        (tmp_path / f"{name}.lic").write_bytes(data)

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tests" / "bitstream_fuzz_child.py"),
            str(tmp_path),
            str(MAX_PIXELS),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=limit_memory,
        env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "tests"), "PATH": ""},
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    finished = {line["case"]: line for line in lines if line["outcome"] != "started"}
    last = lines[-1]["case"] if lines else None
    assert result.returncode == 0, (
        f"the child died (status {result.returncode}) on {last}: {result.stderr[-2000:]}"
    )
    assert finished.pop("original")["outcome"] == "decoded"
    assert finished.keys() == cases.keys()
    escaped = {name: line for name, line in finished.items() if line["outcome"] != "refused"}
    assert not escaped, next(iter(escaped.values()))
    assert all("\n" not in line["message"] for line in finished.values())
