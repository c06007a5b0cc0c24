"""Training throughput under DDP on CPU, and per precision on one GPU.

    .venv/bin/python benchmarks/ddp.py [--backbone mean_scale_small] [--batch 16]
    .venv/bin/python benchmarks/ddp.py --device cuda [--backbone mean_scale] [--size 256]

CPU (default): the median training-step time of 1 process against 2 DDP processes (gloo)
at the same global batch (``--batch``, split over the processes), on a fixed in-memory
batch, with the codec, loss, metrics and both optimisers of ``CodecModule``. Each setting
runs in its own ``python`` process (a DDP run starts its second rank by running this script
again), the two settings alternating for ``--rounds`` rounds.

``--device cuda``: images/s of one GPU at fp32 (TF32 off for matmuls and convolutions),
TF32 and bf16 autocast (Lightning's ``bf16-mixed``), and how far one forward pass's bpp
and PSNR on the fixed batch move from fp32 under each (the entropy model's likelihoods
are the part most exposed to reduced precision).

Results go into BENCHMARKS.md unless ``--print-only``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra import compose, initialize_config_dir
from report import machine_description, update_section
from torch.utils.data import DataLoader, Dataset

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
RESULT_PREFIX = "DDP-BENCHMARK-RESULT "
PRECISIONS = {  # name: (Lightning precision, TF32 allowed)
    "fp32": ("32-true", False),
    "tf32": ("32-true", True),
    "bf16 autocast": ("bf16-mixed", False),
}


class FixedImages(Dataset):
    """The images of one fixed batch, repeated ``length`` times over."""

    def __init__(self, images: torch.Tensor, length: int) -> None:
        self.images, self.length = images, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index % len(self.images)], "name": str(index)}


class StepTimer(L.Callback):
    """Wall time of each training step (waiting for the GPU when ``synchronize``)."""

    def __init__(self, synchronize: bool = False) -> None:
        self.synchronize = synchronize
        self.times: list[float] = []

    def _now(self) -> float:
        if self.synchronize:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, *args: Any) -> None:
        self.start = self._now()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(self._now() - self.start)


def build_module(backbone: str, quant: str) -> L.LightningModule:
    """``CodecModule`` as ``licexp.train`` builds it, without a learning-rate schedule.

    Composed without Hydra's runtime, so that Lightning re-runs this script for rank 1
    with its plain command line.
    """
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"backbone={backbone}", f"quant={quant}"])
    codec = hydra.utils.instantiate(cfg.backbone, quantizer=hydra.utils.instantiate(cfg.quant))
    cfg.model.scheduler = None
    return hydra.utils.instantiate(cfg.model, codec=codec)


def fixed_batch(batch: int, size: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def fit_times(
    module: L.LightningModule,
    images: torch.Tensor,
    steps: int,
    per_process_batch: int,
    synchronize: bool = False,
    **trainer_options: Any,
) -> tuple[L.Trainer, list[float]]:
    """Trains ``steps`` steps; returns the trainer and every step's time."""
    timer = StepTimer(synchronize)
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
        **trainer_options,
    )
    loader = DataLoader(FixedImages(images, steps * len(images)), batch_size=per_process_batch)
    trainer.fit(module, train_dataloaders=loader)
    return trainer, timer.times


def measure_processes(args: argparse.Namespace) -> None:
    """One setting (run by every rank): prints rank 0's step times after the warm-up."""
    torch.manual_seed(0)
    module = build_module(args.backbone, args.quant)
    trainer, times = fit_times(
        module,
        fixed_batch(args.batch, args.size),
        args.warmup + args.steps,
        args.batch // args.processes,
        accelerator="cpu",
        devices=args.processes,
        strategy="ddp" if args.processes > 1 else "auto",
    )
    if trainer.is_global_zero:
        result = {"times": times[args.warmup :], "threads": torch.get_num_threads()}
        print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_setting(args: argparse.Namespace, processes: int) -> dict[str, Any]:
    """Runs :func:`measure_processes` for ``processes`` in a fresh ``python`` process."""
    command = [
        sys.executable,
        __file__,
        "--measure-processes",
        str(processes),
        *(f"--{key}={getattr(args, key)}" for key in ("backbone", "quant", "size", "batch")),
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    return json.loads(line.removeprefix(RESULT_PREFIX))


def compare_processes(args: argparse.Namespace) -> str:
    """1 vs 2 CPU processes at the same global batch; returns the report section."""
    if args.batch % 2:
        raise SystemExit(f"--batch must be even to split over 2 processes, got {args.batch}")
    times: dict[int, list[float]] = {1: [], 2: []}
    threads: dict[int, int] = {}
    for _ in range(args.rounds):
        for processes in (1, 2):
            result = run_setting(args, processes)
            times[processes] += result["times"]
            threads[processes] = result["threads"]
    median = {n: statistics.median(t) for n, t in times.items()}
    rows = "\n".join(
        f"| {n} x batch {args.batch // n} | {threads[n]} | {median[n]:.3f} | "
        f"{min(times[n]):.3f} | {max(times[n]):.3f} | {args.batch / median[n]:.1f} |"
        for n in (1, 2)
    )
    return f"""
## DDP on CPU: {args.backbone} + {args.quant}, {args.size}x{args.size}, global batch {args.batch}

| processes x batch | threads per process | median step (s) | min (s) | max (s) | images/s |
|---|---|---|---|---|---|
{rows}

2 processes / 1 process: **{median[2] / median[1]:.3f}** of the median step time
({args.rounds} alternating rounds of {args.steps} measured steps after {args.warmup}
warm-up steps, fixed in-memory batch, `trainer=ddp_cpu`'s gloo DDP; {machine_description()}).

Command: `{command_line(args)}`
"""


def compare_precisions(args: argparse.Namespace) -> str:
    """Images/s and the bpp/PSNR shift of one forward pass per precision on one device."""
    images = fixed_batch(args.batch, args.size)
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    rows, reference = [], None
    for name, (precision, tf32) in PRECISIONS.items():
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.manual_seed(0)
        module = build_module(args.backbone, args.quant).to(args.device)
        terms = forward_terms(module, images.to(args.device), args.device, precision)
        reference = reference or terms
        _, times = fit_times(
            module,
            images,
            args.warmup + args.steps,
            args.batch,
            synchronize=args.device == "cuda",
            accelerator=accelerator,
            devices=1,
            precision=precision,
        )
        median = statistics.median(times[args.warmup :])
        rows.append(
            f"| {name} | {args.batch / median:.1f} | {median * 1000:.1f} | "
            f"{terms['bpp']:.5f} ({terms['bpp'] / reference['bpp'] - 1:+.2e}) | "
            f"{terms['psnr']:.3f} ({terms['psnr'] - reference['psnr']:+.3f} dB) |"
        )
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else machine_description()
    table = "\n".join(rows)
    return f"""
## Training throughput per precision: {args.backbone} + {args.quant}, \
{args.size}x{args.size}, batch {args.batch}, 1 x {device_name}

| precision | images/s | median step (ms) | bpp of one forward pass (vs fp32) | PSNR (vs fp32) |
|---|---|---|---|---|
{table}

fp32 turns TF32 off for matmuls and cuDNN convolutions; tf32 allows both; bf16 autocast is
Lightning's `bf16-mixed`. Median over {args.steps} steps after {args.warmup} warm-up steps,
fixed in-memory batch; the forward pass uses the same weights and noise for every precision.

Command: `{command_line(args)}`
"""


def forward_terms(
    module: L.LightningModule, images: torch.Tensor, device: str, precision: str
) -> dict[str, float]:
    """bpp and PSNR of one training-mode forward pass (noise seeded) at ``precision``."""
    torch.manual_seed(1)
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        terms = module.train()._step_terms(images)
    return {"bpp": float(terms["bpp"]), "psnr": float(terms["psnr"])}


def command_line(args: argparse.Namespace) -> str:
    options = " ".join(
        f"--{key.replace('_', '-')} {getattr(args, key)}"
        for key in ("device", "backbone", "quant", "size", "batch", "steps", "warmup", "rounds")
    )
    return f".venv/bin/python benchmarks/ddp.py {options}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--backbone", default=None, help="mean_scale_small (cpu), mean_scale")
    parser.add_argument("--quant", default="noise")
    parser.add_argument("--size", type=int, default=None, help="64 (cpu), 256 (cuda)")
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="cpu: alternating rounds")
    parser.add_argument("--print-only", action="store_true", help="leave BENCHMARKS.md alone")
    parser.add_argument("--measure-processes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    on_gpu = args.device == "cuda"
    args.backbone = args.backbone or ("mean_scale" if on_gpu else "mean_scale_small")
    args.size = args.size or (256 if on_gpu else 64)

    if args.measure_processes:
        args.processes = args.measure_processes
        measure_processes(args)
        return
    body = compare_precisions(args) if on_gpu else compare_processes(args)
    print(body)
    if not args.print_only:
        kind = "precision" if on_gpu else "ddp-cpu"
        update_section(f"{kind}-{args.backbone}-{args.quant}-{args.size}-{args.batch}", body)


if __name__ == "__main__":
    main()
