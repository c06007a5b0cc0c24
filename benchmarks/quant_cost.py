"""Cost of each quantisation strategy and of the gap metrics per training step, on CPU.

    .venv/bin/python benchmarks/quant_cost.py [--backbone mean_scale] [--size 256] [--batch 8]

For every strategy the same training step as ``CodecModule.training_step`` (loss, logged
metrics, both optimisers, clipping) runs as a plain loop on a fixed in-memory batch, in
alternating rounds over the strategies so that the machine's drift spreads over all of
them; the median step is compared with ``ste``'s. The gap metrics (``GapMetrics.measure``
on the step's output, as the callback runs it every ``every_n_steps``) are timed on the same
batch, and their overhead per training step at the default interval is reported. The
result goes into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import compose_train  # noqa: E402
from report import machine_description, update_section  # noqa: E402
from step_time import build, plain_loop_times  # noqa: E402

from licexp.callbacks import GapMetrics  # noqa: E402

STRATEGIES = ("ste", "noise", "soft_ste", "ste_sn", "fourier_qecm")


def gap_measure_times(module, batch: torch.Tensor, repeats: int) -> list[float]:
    """Time of one ``GapMetrics.measure`` on a training-mode output of ``batch``."""
    callback = GapMetrics()
    output = module.codec(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            callback.measure(module, batch, output.detach())
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mean_scale")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    batch = torch.rand(args.batch, 3, args.size, args.size)
    steps: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    gaps: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    for _ in range(args.rounds):
        for name in STRATEGIES:
            _, module = build(args.backbone, name)
            times = plain_loop_times(module, batch, args.warmup + args.steps)
            steps[name] += times[args.warmup :]
            gaps[name] += gap_measure_times(module, batch, 2)[1:]

    interval = compose_train().callbacks.gap_metrics.every_n_steps
    ste = statistics.median(steps["ste"])
    rows = []
    for name in STRATEGIES:
        step, gap = statistics.median(steps[name]), statistics.median(gaps[name])
        rows.append(
            f"| `{name}` | {step:.3f} | {step / ste:.2f} | {gap:.3f} | "
            f"{100 * gap / interval / step:.1f} % |"
        )
    table = "\n".join(rows)
    command = (
        f".venv/bin/python benchmarks/quant_cost.py --backbone {args.backbone} "
        f"--size {args.size} --batch {args.batch} --steps {args.steps} --rounds {args.rounds}"
    )
    body = f"""
## Quantisation strategies and gap metrics: {args.backbone}, {args.size}x{args.size}, \
batch {args.batch}, CPU

| strategy | median step (s) | step / `ste` step | one gap measurement (s) | gap overhead \
per step at `every_n_steps={interval}` |
|---|---|---|---|---|
{table}

A step is `CodecModule.training_step`'s work as a plain loop (forward, loss and metrics,
main and aux optimiser steps, clipping); {args.rounds} alternating rounds of {args.steps}
measured steps after {args.warmup} warm-up per strategy, same process, fixed in-memory batch
({machine_description()}). `soft_ste` is FGSM dequantisation (one extra backward of the
rate through the entropy model) plus spectral norm on `g_a` (one power iteration per
convolution); `ste_sn` is the spectral norm alone. One gap measurement is
`GapMetrics.measure` on a step's output: hard rounding, W1 over all latent elements, the
rate of the rounded latent and `lss_samples` extra decoder passes for the LSS; the
callback runs it every `every_n_steps` training steps, so its overhead per step is its time
over the interval and the step. Validation batches are re-run once with the training
approximation for the gaps (not counted here). The strategies' extra work is small
beside the convolutions, so their step ratios lie within this machine's run-to-run
spread (10-30 %): read them as "no measurable cost", not as a ranking.

Command: `{command}`
"""
    print(body)
    update_section(f"quant-cost-{args.backbone}-{args.size}-{args.batch}", body)


if __name__ == "__main__":
    main()
