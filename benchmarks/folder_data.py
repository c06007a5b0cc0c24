"""Training step time on folder data against an in-memory batch (issue: data=folder speed).

    .venv/bin/python benchmarks/folder_data.py [--steps 40] [--quick]

The default recipe's step (``mean_scale_small`` + ``noise``, 64x64 crops, batch 16,
forward, RD loss, backward, both optimiser steps; CPU) is timed with its batches from

1. one fixed in-memory batch (the reference),
2. ``data=folder`` over the 38 photographs of ../shared/data/photos (about 1024x683; the
   five bundled photos written to a folder when ../shared is absent), with the folder's
   default ``num_workers`` and ``crops_per_image=16``: without the decoded-image cache
   (``cache_mib=0``, every crop decodes its PNG) and with it (the default 512 MiB),
3. the same for a folder of twelve large images (3072x2048 PNGs resized from the photos).

The loaders are licexp's own (``ImageDataModule``: the resumable shuffle, persistent
workers); each timing is the median step after two epochs of warm-up, so that every
worker's cache is filled. The result rewrites the ``folder-data-cpu`` section of
BENCHMARKS.md; ``--quick`` runs a few steps and writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import hydra
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import SHARED_DIR, compose_train  # noqa: E402
from report import machine_description, update_section  # noqa: E402

from licexp.data import DEFAULT_PHOTOS, load_photo  # noqa: E402
from licexp.evaluation.evaluate import save_png  # noqa: E402
from licexp.training import RateDistortionLoss, split_parameters  # noqa: E402

CROP, BATCH, CROPS_PER_IMAGE = 64, 16, 16
NOTE = """\
Ratios under 1 are the noise of one run each on a 2-core machine. With the cache the
workers decode each file once per run and cut crops from memory; a folder beyond the
budget (12 of these large images take 226 MB a worker as uint8) decodes the rest per
item, as the `cache_mib=0` rows do.
"""


def photo_folder(root: Path) -> tuple[str, Path]:
    shared = SHARED_DIR / "data" / "photos"
    if shared.is_dir():
        return "38 photos of ../shared/data/photos (about 1024x683)", shared
    root.mkdir(parents=True, exist_ok=True)
    for name in DEFAULT_PHOTOS:
        save_png(load_photo(name), root / f"{name}.png")
    return "the 5 bundled photos", root


def large_folder(source: Path, root: Path, count: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    files = sorted(source.glob("*.png"))
    for index in range(count):
        with Image.open(files[index % len(files)]) as image:
            image.convert("RGB").resize((3072, 2048), Image.BICUBIC).save(root / f"{index}.png")
    return root


class Step:
    """The default recipe's training step on a batch."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        cfg = compose_train([])
        self.codec = hydra.utils.instantiate(
            cfg.backbone, quantizer=hydra.utils.instantiate(cfg.quant)
        ).train()
        self.loss = RateDistortionLoss(cfg.lmbda)
        main, aux = split_parameters(self.codec)
        self.main = main
        self.optimizer, self.aux = torch.optim.Adam(main, 1e-3), torch.optim.Adam(aux, 1e-3)

    def __call__(self, x: torch.Tensor) -> None:
        loss = self.loss(self.codec(x), x)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.main, 1.0)
        self.optimizer.step()
        self.aux.zero_grad(set_to_none=True)
        self.codec.aux_loss().backward()
        self.aux.step()


def in_memory_times(steps: int, warmup: int) -> list[float]:
    step, x = Step(), torch.rand(BATCH, 3, CROP, CROP)
    times = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        step(x)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def folder_times(root: Path, cache_mib: float, steps: int, warmup: int) -> list[float]:
    cfg = compose_train(
        [
            "data=folder",
            f"data.train.root={root}",
            f"data.train.crop_size={CROP}",
            f"data.batch_size={BATCH}",
            f"data.train.crops_per_image={CROPS_PER_IMAGE}",
            f"data.train.cache_mib={cache_mib}",
        ]
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    step, times, index = Step(), [], 0
    while len(times) < steps:
        start = time.perf_counter()
        for batch in loader:
            step(batch["image"])
            now = time.perf_counter()
            if index >= warmup:
                times.append(now - start)
            index += 1
            start = now
            if len(times) >= steps:
                break
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 3 if args.quick else args.steps
    with tempfile.TemporaryDirectory() as scratch:
        described, photos = photo_folder(Path(scratch) / "photos")
        large = large_folder(photos, Path(scratch) / "large", 2 if args.quick else 12)
        epoch = lambda folder: len(list(folder.glob("*.png"))) * CROPS_PER_IMAGE // BATCH  # noqa: E731
        reference = statistics.median(in_memory_times(steps, 3))
        rows = [f"| one in-memory batch | - | {reference:.3f} | 1.00 |"]
        for label, folder in ((described, photos), ("12 images of 3072x2048", large)):
            warmup = 1 if args.quick else 2 * epoch(folder)
            for cache in (0, 512):
                median = statistics.median(folder_times(folder, cache, steps, warmup))
                rows.append(f"| {label} | {cache} | {median:.3f} | {median / reference:.2f} |")
                print(rows[-1], file=sys.stderr, flush=True)
    body = "\n".join(
        [
            "## Folder data against an in-memory batch: the default recipe's step, CPU",
            "",
            f"`mean_scale_small` + `noise`, {CROP}x{CROP} crops, batch {BATCH}, the folder's",
            f"default `num_workers` (2), `crops_per_image={CROPS_PER_IMAGE}`; median of {steps}",
            "steps after two"
            " epochs of warm-up (each worker's cache filled); `cache_mib=0` decodes every crop's",
            "file (the loader before the cache):",
            "",
            "| batches from | cache_mib | median step (s) | against in-memory |",
            "|---|---|---|---|",
            *rows,
            "",
            *NOTE.splitlines(),
            "",
            f"Machine: {machine_description()}. Command: "
            f"`.venv/bin/python benchmarks/folder_data.py --steps {steps}`",
        ]
    )
    print(body)
    if not args.quick:
        update_section("folder-data-cpu", body)


if __name__ == "__main__":
    main()
