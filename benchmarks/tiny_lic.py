"""Tiny-LIC timings: training step, neighbourhood attention against dense, real coding.

    .venv/bin/python benchmarks/tiny_lic.py [--device cpu|cuda] [--quant soft_ste]
        [--attention auto|tiled|flex] [--quick]

Measures, on one device, in this process:

1. the training step (forward, rate-distortion loss, backward, both optimiser steps, with
   gradient clipping; a fixed in-memory batch of 256x256 crops, batch 8) of ``tiny_lic``
   and ``tiny_lic_small``: median seconds and images per second;
2. one neighbourhood attention call (8 heads of 16 channels, 7x7 windows, batch 1, forward
   and backward) against dense masked attention at 64x64 and 128x128 maps: time and peak
   memory (CUDA: ``max_memory_allocated``; CPU: the peak resident set of a fresh child
   process during the call, Linux's ``VmHWM`` reset just before it, minus its resident set
   before the call). Dense attention is skipped where its
   ``(H W)^2`` weights alone would exceed ``--dense-limit-gib`` (default: an eighth of the
   device's memory, as the call holds about five such tensors at its peak);
3. encoding and decoding a 768x512 image (Kodak's kodim01 when ../shared holds it, else a
   bundled photo padded to that size) with ``tiny_lic`` on real bitstreams (untrained
   weights: the rANS part of the time depends on the symbols, the networks' does not).

The result rewrites the ``tiny-lic-<device>`` section of BENCHMARKS.md (``-<attention>``
appended for a backend other than ``auto``; ``flex`` trains on CUDA only); ``--quick`` runs
every part at toy sizes to check that it works and writes nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hydra
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import SHARED_DIR, compose_train  # noqa: E402
from report import machine_description, update_section  # noqa: E402

from licexp.backbones.neighborhood_attention import (  # noqa: E402
    BACKENDS,
    dense_neighborhood_attention,
    natten_operators,
    neighborhood_attention,
)
from licexp.data import load_photo  # noqa: E402
from licexp.data.images import load_rgb  # noqa: E402
from licexp.evaluation.codec import code_image  # noqa: E402
from licexp.training import RateDistortionLoss, split_parameters  # noqa: E402

HEADS, HEAD_DIM, KERNEL = 8, 16, 7
"""The attention of Tiny-LIC's first stage (128 channels, 7x7 windows)."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_codec(backbone: str, quant: str, device: torch.device, attention: str = "auto"):
    cfg = compose_train(
        [f"backbone={backbone}", f"quant={quant}", f"backbone.attention={attention}"]
    )
    quantizer = hydra.utils.instantiate(cfg.quant)
    return hydra.utils.instantiate(cfg.backbone, quantizer=quantizer).to(device), cfg.lmbda


def step_times(
    backbone: str,
    quant: str,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    attention: str = "auto",
) -> list[float]:
    """Seconds per training step (the work of ``CodecModule.training_step``, plain loop)."""
    torch.manual_seed(0)
    codec, lmbda = build_codec(backbone, quant, device, attention)
    codec.train()
    loss_fn = RateDistortionLoss(lmbda)
    main, aux = split_parameters(codec)
    optimizer, aux_optimizer = torch.optim.Adam(main, 1e-4), torch.optim.Adam(aux, 1e-3)
    x = torch.rand(batch, 3, size, size, device=device)
    times = []
    for _ in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        loss = loss_fn(codec(x), x)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main, 1.0)
        optimizer.step()
        aux_optimizer.zero_grad(set_to_none=True)
        codec.aux_loss().backward()
        aux_optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def attention_call(
    dense: bool, side: int, device: torch.device, backend: str = "auto"
) -> Callable[[], None]:
    """One forward and backward pass of the attention on a ``side x side`` map."""
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (1, HEADS, side, side, HEAD_DIM)
    q, k, v = (
        torch.randn(shape, device=device, generator=generator).requires_grad_() for _ in range(3)
    )
    table = torch.zeros(HEADS, 2 * KERNEL - 1, 2 * KERNEL - 1, device=device, requires_grad=True)

    def attention(*tensors: torch.Tensor) -> torch.Tensor:
        if dense:
            return dense_neighborhood_attention(*tensors, KERNEL)
        return neighborhood_attention(*tensors, KERNEL, backend=backend)

    def call() -> None:
        attention(q, k, v, table).sum().backward()
        synchronize(device)

    return call


def _status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_rss_child(dense: bool, side: int, queue: multiprocessing.Queue) -> None:
    torch.set_num_threads(1)
    call = attention_call(dense, side, torch.device("cpu"))
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets the peak (VmHWM) to the current resident set
    call()
    queue.put(max(0, _status_bytes("VmHWM") - before))


def attention_peak_bytes(dense: bool, side: int, device: torch.device) -> int:
    """Peak memory of one call: CUDA allocator peak, or a child process's resident peak."""
    if device.type == "cuda":
        call = attention_call(dense, side, device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        call()
        return torch.cuda.max_memory_allocated(device) - base
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_peak_rss_child, args=(dense, side, queue))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the memory probe failed (exit code {child.exitcode})")
    return queue.get()


def attention_row(
    side: int, device: torch.device, dense_limit_gib: float, repeats: int, backend: str = "auto"
) -> str:
    dense_weights_gib = HEADS * side**4 * 4 / 2**30
    cells = []
    for dense in (False, True):
        if dense and dense_weights_gib > dense_limit_gib:
            cells += [f"skipped (weights alone {dense_weights_gib:.0f} GiB)", "-"]
            continue
        call = attention_call(dense, side, device, backend)
        call()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        peak = attention_peak_bytes(dense, side, device)
        cells += [f"{statistics.median(times) * 1000:.1f}", f"{peak / 2**20:.0f}"]
    return f"| {side}x{side} | " + " | ".join(cells) + " |"


def device_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**30
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def coding_image(quick: bool) -> tuple[str, torch.Tensor]:
    if quick:
        return "astronaut crop", load_photo("astronaut")[:, :256, :256]
    kodim01 = SHARED_DIR / "data" / "kodak" / "kodim01.png"
    if kodim01.is_file():
        return "kodim01 (768x512)", load_rgb(kodim01)
    return "motorcycle_left (741x500, padded to 768x512)", load_photo("motorcycle_left")


def coding_times(
    quant: str,
    image: torch.Tensor,
    repeats: int,
    device: torch.device,
    backbone: str = "tiny_lic",
    attention: str = "auto",
) -> tuple[float, float, float]:
    """Median encoding and decoding seconds of ``backbone``, and the bpp."""
    torch.manual_seed(0)
    codec, _ = build_codec(backbone, quant, device, attention)
    codec.eval()
    codec.update(force=True)
    image = image.to(device)
    codings = [code_image(codec, image) for _ in range(repeats)]
    if any(coding.decode_error != 0 for coding in codings):
        raise RuntimeError("the decoded image differs from the hard forward pass")
    return (
        statistics.median(coding.encoding_time for coding in codings),
        statistics.median(coding.decoding_time for coding in codings),
        codings[0].bpp,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quant", default="soft_ste")
    parser.add_argument("--attention", default="auto", choices=BACKENDS)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-limit-gib", type=float, default=None)
    parser.add_argument("--quick", action="store_true", help="toy sizes, writes nothing")
    args = parser.parse_args()
    device = torch.device(args.device)
    dense_limit_gib = args.dense_limit_gib or device_memory_gib(device) / 8
    size, batch = 256, (1 if args.quick else 8)
    steps, warmup, repeats = (1, 0, 1) if args.quick else (args.steps, args.warmup, args.repeats)
    sides = (16, 32) if args.quick else (64, 128)

    step_rows = []
    for backbone in ("tiny_lic", "tiny_lic_small"):
        times = step_times(backbone, args.quant, size, batch, steps, warmup, device, args.attention)
        median = statistics.median(times)
        step_rows.append(
            f"| `{backbone}` | {median:.3f} | {min(times):.3f} | {max(times):.3f} | "
            f"{batch / median:.2f} |"
        )
    attention_rows = [
        attention_row(side, device, dense_limit_gib, repeats, args.attention) for side in sides
    ]
    name, image = coding_image(args.quick)
    encoding, decoding, bpp = coding_times(
        args.quant, image, repeats, device, attention=args.attention
    )

    if args.attention == "flex":
        fast = "FlexAttention"
    elif device.type == "cuda" and args.attention == "auto" and natten_operators():
        fast = "NATTEN"
    else:
        fast = "tiled pure-PyTorch"
    hardware = machine_description()
    if device.type == "cuda":
        hardware = f"{torch.cuda.get_device_name(device)}, {hardware}"
    command = (
        f".venv/bin/python benchmarks/tiny_lic.py --device {args.device} --quant {args.quant} "
        f"--attention {args.attention} --steps {args.steps} --warmup {args.warmup} "
        f"--repeats {args.repeats}"
    )
    newline = "\n"
    body = f"""
## Tiny-LIC on {args.device.upper()}: training step, attention, real coding{
        "" if args.attention == "auto" else f" (`backbone.attention={args.attention}`)"
    }

Training step (forward, RD loss, backward, main and aux optimiser steps, clipping) with
`quant={args.quant}`, {size}x{size} crops, batch {batch}; median of {steps} steps after
{warmup} warm-up steps:

| backbone | median step (s) | min (s) | max (s) | images/s |
|---|---|---|---|---|
{newline.join(step_rows)}

One neighbourhood attention call, forward and backward ({HEADS} heads of {HEAD_DIM}
channels, {KERNEL}x{KERNEL} windows, batch 1), {fast} attention against dense
masked attention; median of {repeats}; peak memory of the call:

| map | neighbourhood (ms) | neighbourhood peak (MiB) | dense (ms) | dense peak (MiB) |
|---|---|---|---|---|
{newline.join(attention_rows)}

Real coding of {name} with `tiny_lic` (untrained weights, `quant={args.quant}`, padded to
multiples of 256, decode checked bit-exact): encoding **{encoding:.2f} s**, decoding
**{decoding:.2f} s** (median of {repeats}; {bpp:.3f} bpp). The paper reports 0.17 s / 0.12 s
on an RTX 3090 Ti.

Machine: {hardware}. Command: `{command}`
"""
    print(body)
    if not args.quick:
        suffix = "" if args.attention == "auto" else f"-{args.attention}"
        update_section(f"tiny-lic-{args.device}{suffix}", body)


if __name__ == "__main__":
    main()
