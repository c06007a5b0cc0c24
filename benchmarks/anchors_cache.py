"""Classical anchors on Kodak: measured live (cold cache), read from the cache, published.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anchors_cache.py [--kodak DIR]
        [--codecs jpeg webp jpeg2000] [--cache DIR]

Reads the 24 Kodak images (``--kodak``, else ``$LICEXP_KODAK`` or ../shared/data/kodak),
then for each codec times :func:`~licexp.evaluation.anchor_sources.evaluation_anchors` as an
evaluation calls it: first with an empty cache (``--cache``, else a temporary folder: the
anchors are measured and stored), then again (read from the cache), then with
``anchors_source=published`` (CompressAI's files, where ../shared has them). The cached
results are checked equal to the measured ones. One thread, wall time
(``time.perf_counter``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from licexp.data import Kodak
from licexp.evaluation.anchor_sources import KODAK_ANCHOR_DIR, evaluation_anchors, is_kodak
from licexp.evaluation.anchors import ANCHOR_CODECS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kodak", type=Path, help="folder of kodim01.png ... kodim24.png")
    parser.add_argument("--codecs", nargs="+", default=list(ANCHOR_CODECS), choices=ANCHOR_CODECS)
    parser.add_argument("--cache", type=Path, help="cache folder (default: a temporary one)")
    return parser.parse_args()


def timed(function, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    dataset = Kodak(args.kodak)
    images = [(item["name"], item["image"]) for item in dataset]
    print(f"{len(images)} images from {dataset.root}; Kodak: {is_kodak(images)}")
    with tempfile.TemporaryDirectory() as temporary:
        cache = args.cache or Path(temporary)
        print(f"{'codec':10} {'live, cold (s)':>15} {'cached (s)':>11} {'published (s)':>14}")
        totals = [0.0, 0.0, 0.0]
        for codec in args.codecs:
            cold, cold_s = timed(evaluation_anchors, images, [codec], cache_dir=cache)
            warm, warm_s = timed(evaluation_anchors, images, [codec], cache_dir=cache)
            cold, warm = cold[codec], warm[codec]
            if warm.rows != cold.rows or warm.curve != cold.curve:
                raise SystemExit(f"{codec}: the cached anchors differ from the measured ones")
            published_s = float("nan")
            if KODAK_ANCHOR_DIR.is_dir():
                _, published_s = timed(evaluation_anchors, images, [codec], "published")
            for index, seconds in enumerate((cold_s, warm_s, published_s)):
                totals[index] += seconds
            print(f"{codec:10} {cold_s:15.2f} {warm_s:11.3f} {published_s:14.3f}")
        print(f"{'all':10} {totals[0]:15.2f} {totals[1]:11.3f} {totals[2]:14.3f}")


if __name__ == "__main__":
    main()
