"""Tiny-LIC's real coding on CPU, this tree against an earlier one (issue 15, goal 3).

    .venv/bin/python benchmarks/tiny_lic_coding.py [--before DIR] [--repeats 2] [--quick]

Encodes and decodes Kodak's kodim01 (else a bundled photo padded to 768x512) with the
paper-size ``tiny_lic`` (seeded, untrained weights; ``quant=ste``) by ``compress`` and
``decompress``, and reports the fastest of ``--repeats`` with the SHA-256 of the strings
and of the reconstruction. With ``--before DIR`` (a checkout of an earlier commit, e.g.
``git worktree add /tmp/before <commit>``) the same measurement runs first in a child
process that imports that checkout's ``src`` and reads its ``conf``, so the two rows
compare the code, on the same weights. The result rewrites the ``tiny-lic-coding-cpu``
section of BENCHMARKS.md; ``--quick`` codes a 256x256 crop once and writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
KODIM01 = REPO_ROOT.parent / "shared" / "data" / "kodak" / "kodim01.png"


def coding_image(quick: bool) -> tuple[str, torch.Tensor]:
    from licexp.data import load_photo
    from licexp.data.images import load_rgb
    from licexp.evaluation.codec import pad_image

    if quick:
        return "a 256x256 crop of astronaut", load_photo("astronaut")[None, :, :256, :256]
    if KODIM01.is_file():
        return "kodim01 (768x512)", load_rgb(KODIM01)[None]
    photo = pad_image(load_photo("motorcycle_left")[None], 256)
    return "motorcycle_left (741x500, padded to 768x512)", photo


def measure(tree: Path, repeats: int, quick: bool) -> dict[str, object]:
    """Fastest encode and decode of seeded ``tiny_lic`` from ``tree``'s config, and hashes."""
    from licexp.quant import StraightThroughQuantization

    torch.manual_seed(0)
    config = OmegaConf.load(tree / "conf" / "backbone" / "tiny_lic.yaml").backbone
    codec = hydra.utils.instantiate(config, quantizer=StraightThroughQuantization())
    codec.prepare_for_coding()
    name, x = coding_image(quick)
    encode, decode = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            bitstreams = codec.compress(x)
            encode.append(time.perf_counter() - start)
            start = time.perf_counter()
            x_hat = codec.decompress(bitstreams)
            decode.append(time.perf_counter() - start)
    strings = b"".join(s for name_ in sorted(bitstreams.strings) for s in bitstreams.strings[name_])
    return {
        "image": name,
        "encode": min(encode),
        "decode": min(decode),
        "bytes": len(strings),
        "strings_sha": hashlib.sha256(strings).hexdigest()[:12],
        "x_hat_sha": hashlib.sha256(x_hat.contiguous().numpy().tobytes()).hexdigest()[:12],
    }


def measure_in(tree: Path, repeats: int, quick: bool) -> dict[str, object]:
    """:func:`measure` in a child process importing ``tree/src``."""
    command = [sys.executable, __file__, "--measure", str(tree), "--repeats", str(repeats)]
    environment = {**os.environ, "PYTHONPATH": str(tree / "src")}
    output = subprocess.run(
        command + (["--quick"] if quick else []),
        env=environment,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="a checkout of an earlier commit")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    if args.measure:
        print(json.dumps(measure(args.measure, repeats, args.quick)))
        return

    rows = []
    if args.before:
        commit = subprocess.run(
            ["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        rows.append((f"before ({commit})", measure_in(args.before.resolve(), repeats, args.quick)))
    rows.append(("this tree", measure_in(REPO_ROOT, repeats, args.quick)))
    table = "\n".join(
        f"| {label} | {r['encode']:.2f} | {r['decode']:.2f} | {r['bytes']} | "
        f"`{r['strings_sha']}` | `{r['x_hat_sha']}` |"
        for label, r in rows
    )
    before = " --before <checkout>" if args.before else ""
    body = f"""## Tiny-LIC real coding on CPU, before and after

`tiny_lic` at the paper's size (seeded untrained weights, `quant=ste`), {rows[-1][1]["image"]},
`compress` / `decompress`, the fastest of {repeats}; equal hashes mean the same bytes and
the same reconstruction bit for bit:

| code | encode (s) | decode (s) | bytes | strings SHA-256 | reconstruction SHA-256 |
|---|---|---|---|---|---|
{table}

The paper reports 0.17 s / 0.12 s on an RTX 3090 Ti; GPU figures need a device machine.

Machine: x86_64, {args.threads} threads, torch {torch.__version__}. Command:
`.venv/bin/python benchmarks/tiny_lic_coding.py{before} --repeats {repeats}`
"""
    print(body)
    if not args.quick:
        sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
        from report import update_section

        update_section("tiny-lic-coding-cpu", body)


if __name__ == "__main__":
    main()
