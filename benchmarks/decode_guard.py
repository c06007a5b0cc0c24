"""What bounding the rANS decoder costs (issue 22): decode time with and without the guard.

    .venv/bin/python benchmarks/decode_guard.py [--repeats 6] [--threads 1]

``mean_scale`` + ``ste`` at N = 128, M = 192 (seeded initialisation, ``g_a``'s last layer
scaled to reach a low and a high rate) decodes one 768 x 512 container with every check of
:func:`~licexp.evaluation.codec.decode_container`, alternately with the guard of
:mod:`licexp.backbones.rans_bounds` and with the bare strings (honest strings decode the
same either way), ``--repeats`` times each; the fastest of each is printed as a Markdown
table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import licexp.backbones.rans_bounds as rans_bounds
from licexp.backbones import MeanScaleHyperprior
from licexp.evaluation.codec import code_image, decode_container
from licexp.quant import StraightThroughQuantization


def decode_time(codec: MeanScaleHyperprior, container: bytes, guarded: bool) -> float:
    bounded = rans_bounds.guarded
    if not guarded:
        rans_bounds.guarded = lambda string, symbols, escapes: string
    try:
        start = time.perf_counter()
        decode_container(codec, container)
        return time.perf_counter() - start
    finally:
        rans_bounds.guarded = bounded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpu ({platform.machine()}, {args.threads} thread(s), torch {torch.__version__})\n")
    print("| bpp | decode, guarded (s) | decode, bare strings (s) | cost |")
    print("|---|---|---|---|")
    for scale in (3.0, 10.0):
        torch.manual_seed(0)
        codec = MeanScaleHyperprior(N=128, M=192, quantizer=StraightThroughQuantization())
        with torch.no_grad():
            codec.g_a[-1].weight.mul_(scale)
        codec.prepare_for_coding()
        container = code_image(codec, torch.rand(3, 512, 768)).container
        times = {True: [], False: []}
        for _ in range(args.repeats):
            for guarded in times:
                times[guarded].append(decode_time(codec, container, guarded))
        guarded, bare = min(times[True]), min(times[False])
        bpp = 8 * len(container) / (512 * 768)
        print(f"| {bpp:.2f} | {guarded:.3f} | {bare:.3f} | {100 * (guarded / bare - 1):+.0f} % |")


if __name__ == "__main__":
    main()
