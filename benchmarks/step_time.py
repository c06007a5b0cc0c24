"""Training-step time of a backbone on CPU: Lightning's loop against a plain PyTorch loop.

    .venv/bin/python benchmarks/step_time.py [--backbone mean_scale] [--size 256] [--batch 8]

Both loops run in this process, in alternating rounds, on the same fixed in-memory batch
(no data loading), with the same codec, loss, metrics, two optimisers and gradient
clipping; the median over the measured steps is reported, after warm-up steps. The result
goes into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import hydra
import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
from helpers import compose_train  # noqa: E402
from report import machine_description, update_section  # noqa: E402


class FixedBatches(Dataset):
    def __init__(self, batch: torch.Tensor, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {"image": self.batch[index % len(self.batch)], "name": str(index)}


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter() - self.start)


def build(backbone: str, quant: str):
    cfg = compose_train([f"backbone={backbone}", f"quant={quant}", "model.scheduler=null"])
    codec = hydra.utils.instantiate(cfg.backbone, quantizer=hydra.utils.instantiate(cfg.quant))
    return cfg, hydra.utils.instantiate(cfg.model, codec=codec)


def plain_loop_times(module, batch: torch.Tensor, steps: int) -> list[float]:
    """The same work as CodecModule.training_step (loss and logged metrics, two optimiser
    steps, clipping), written as a bare PyTorch loop."""
    optimizer, aux_optimizer = module.configure_optimizers()
    main = [p for group in optimizer.param_groups for p in group["params"]]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        terms = module._step_terms(batch)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(main, module.clip_grad_norm)
        optimizer.step()
        aux_optimizer.zero_grad(set_to_none=True)
        module.codec.aux_loss().backward()
        aux_optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def lightning_times(module, batch: torch.Tensor, steps: int) -> list[float]:
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        limit_val_batches=0,
    )
    loader = DataLoader(FixedBatches(batch, steps * len(batch)), batch_size=len(batch))
    trainer.fit(module, train_dataloaders=loader)
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mean_scale")
    parser.add_argument("--quant", default="noise")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    batch = torch.rand(args.batch, 3, args.size, args.size)
    plain: list[float] = []
    lightning: list[float] = []
    for _ in range(args.rounds):  # alternating rounds spread the machine's drift over both
        _, module = build(args.backbone, args.quant)
        plain += plain_loop_times(module, batch, args.warmup + args.steps)[args.warmup :]
        _, module = build(args.backbone, args.quant)
        lightning += lightning_times(module, batch, args.warmup + args.steps)[args.warmup :]
    plain_median, lightning_median = statistics.median(plain), statistics.median(lightning)
    command = (
        f".venv/bin/python benchmarks/step_time.py --backbone {args.backbone} "
        f"--quant {args.quant} --size {args.size} --batch {args.batch} --steps {args.steps} "
        f"--rounds {args.rounds}"
    )
    body = f"""
## Training step: {args.backbone} + {args.quant}, {args.size}x{args.size}, batch {args.batch}, CPU

| loop | median step (s) | min (s) | max (s) |
|---|---|---|---|
| plain PyTorch | {plain_median:.3f} | {min(plain):.3f} | {max(plain):.3f} |
| Lightning (`CodecModule`, manual optimisation) | {lightning_median:.3f} | \
{min(lightning):.3f} | {max(lightning):.3f} |

Lightning / plain: **{lightning_median / plain_median:.3f}** of the medians,
{min(lightning) / min(plain):.3f} of the minima ({args.rounds} alternating rounds
of {args.steps} measured steps after {args.warmup} warm-up steps per loop, same process, fixed
in-memory batch; {machine_description()}).

Command: `{command}`
"""
    print(body)
    update_section(f"step-time-{args.backbone}-{args.quant}-{args.size}-{args.batch}", body)


if __name__ == "__main__":
    main()
