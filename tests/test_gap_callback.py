"""The gap-metrics callback: values on known strategies, and no side effects."""

from __future__ import annotations

import csv
import math

import hydra
import lightning as L
import pytest
import torch
from helpers import compose_train
from omegaconf import open_dict

from licexp.backbones import MeanScaleHyperprior, ScaleHyperprior
from licexp.callbacks.gaps import GapMetrics, training_quantisation
from licexp.quant import NoiseQuantization, StraightThroughQuantization
from licexp.train import train
from licexp.training import CodecModule, RateDistortionLoss


def module_with(strategy, backbone=MeanScaleHyperprior) -> CodecModule:
    codec = backbone(N=16, M=24, quantizer=strategy)
    return CodecModule(codec, RateDistortionLoss(0.01), torch.optim.Adam, torch.optim.Adam)


def measure(module: CodecModule) -> dict[str, float]:
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        output = module.codec(x)
        return {k: float(v) for k, v in GapMetrics().measure(module, x, output).items()}


@pytest.mark.parametrize("backbone", [MeanScaleHyperprior, ScaleHyperprior])
def test_ste_has_no_discrete_gap_and_noise_has_one(backbone) -> None:
    assert measure(module_with(StraightThroughQuantization(), backbone))["discrete"] == 0
    noise = measure(module_with(NoiseQuantization(), backbone))
    # |round(y) - y - u| with u ~ U(-1/2, 1/2) is at least E|u| = 1/4 on average for
    # latents near integers, and at most 1/2 + 1/4 = 3/4 per element.
    assert 0.2 < noise["discrete"] < 0.75


def test_ste_trains_the_rate_on_the_rounded_latent_so_its_rate_gap_is_zero() -> None:
    gaps = measure(module_with(StraightThroughQuantization()))
    assert gaps["rate_gap_bits"] == pytest.approx(0.0, abs=1e-6)
    assert all(torch.isfinite(torch.tensor(v)) for v in gaps.values())


def test_measuring_validation_switches_only_the_latent_coders() -> None:
    codec = module_with(NoiseQuantization()).codec.eval()
    with training_quantisation(codec):
        assert codec.latent.training and codec.hyper_latent.training
        assert not codec.g_a.training and not codec.g_s.training
    assert not codec.latent.training and not codec.hyper_latent.training


@pytest.mark.parametrize("quant", ["soft_ste", "fourier_qecm", "noise"])
def test_validation_logs_every_gap_under_lightnings_inference_mode(quant, tmp_path) -> None:
    """Lightning validates under ``torch.inference_mode``; FGSM needs autograd there."""
    cfg = compose_train([f"quant={quant}", "debug=smoke", f"paths.output_dir={tmp_path}"])
    codec = hydra.utils.instantiate(cfg.backbone, quantizer=hydra.utils.instantiate(cfg.quant))
    module = hydra.utils.instantiate(cfg.model, codec=codec)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[GapMetrics()],
        inference_mode=True,
    )
    (metrics,) = trainer.validate(module, datamodule=hydra.utils.instantiate(cfg.data))
    for name in ("discrete", "entropy_w1", "rate_gap_bits", "lss"):
        assert torch.isfinite(torch.tensor(metrics[f"val/gaps/{name}"]))
    assert list((tmp_path / "gaps").glob("latent_histogram_step*.png"))


class RecordedGapMetrics(GapMetrics):
    """GapMetrics that keeps what each training measurement returned, by batch index."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batch_index = -1
        self.measured: dict[int, dict[str, float]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batch_index = batch_idx

    def measure(self, module, x, output):
        gaps = super().measure(module, x, output)
        if module.training:
            self.measured[self.batch_index] = {name: float(v) for name, v in gaps.items()}
        return gaps


class RandomImages(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(index))}


@pytest.mark.parametrize("log_every_n_steps", [1, 2])
def test_training_gaps_are_logged_every_n_steps_at_their_own_step_only(
    tmp_path, log_every_n_steps
) -> None:
    """With ``every_n_steps=3``, 8 steps are measured at batches 0, 3 and 6 (global steps 1,
    4, 7): ``train/gaps/*`` are written for these steps, at the step of the batch's own
    ``train/loss`` row, with the measured values, whatever ``log_every_n_steps``, and for no
    other step (Lightning would repeat an ``on_step`` value on every later row)."""
    torch.manual_seed(0)
    gaps = RecordedGapMetrics(every_n_steps=3, lss_samples=1)
    trainer = L.Trainer(
        max_steps=8,
        accelerator="cpu",
        callbacks=[gaps],
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=log_every_n_steps,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(
        module_with(NoiseQuantization()),
        torch.utils.data.DataLoader(RandomImages(), batch_size=1),
    )
    assert sorted(gaps.measured) == [0, 3, 6]
    with open(tmp_path / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    loss_steps = {int(row["step"]) for row in rows if row["train/loss"]}
    assert loss_steps == {b for b in range(8) if (b + 1) % log_every_n_steps == 0}
    logged: dict[int, dict[str, float]] = {}
    for row in rows:
        values = {k.removeprefix("train/gaps/"): v for k, v in row.items() if "train/gaps/" in k}
        if any(values.values()):
            assert all(values.values()), row  # the four gaps together
            assert int(row["step"]) not in logged, "one row per measurement"
            logged[int(row["step"])] = {name: float(value) for name, value in values.items()}
    assert sorted(logged) == [0, 3, 6]
    for step, values in logged.items():
        assert values == pytest.approx(gaps.measured[step], rel=1e-6)
    if log_every_n_steps == 1:
        assert set(logged) <= loss_steps


def test_gaps_of_a_bfloat16_step_output_are_measured_in_float32() -> None:
    """Under autocast a training step's output is partly bfloat16 while the weights stay
    float32: the measurement casts it back and runs without autocast, in float32."""
    module = module_with(NoiseQuantization())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = module.codec(x)
    assert output.latents["y_hat"].dtype == torch.bfloat16  # the case is a real mixed one
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        gaps = GapMetrics().measure(module, x, output)
    for name, value in gaps.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_a_mixed_precision_smoke_run_logs_finite_training_and_validation_gaps(
    precision, tmp_path
) -> None:
    """``trainer.precision=bf16-mixed`` (``16-mixed`` is bfloat16 on a CPU) with the default
    callbacks: the run finishes, its last checkpoint is written and every gap is finite."""
    cfg = compose_train(
        ["debug=smoke", f"trainer.precision={precision}", "evaluate=false"]
        + [f"paths.output_dir={tmp_path}"]
    )
    with open_dict(cfg):
        del cfg["hydra"]  # composed with Hydra's runtime set; the job itself never sees it
    train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    with open(tmp_path / "csv" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    for stage, steps in (("train", [0]), ("val", [1, 3])):  # measured at step 1, validated at 2, 4
        for name in ("discrete", "entropy_w1", "rate_gap_bits", "lss"):
            column = f"{stage}/gaps/{name}"
            values = {int(r["step"]): float(r[column]) for r in rows if r[column]}
            assert sorted(values) == steps, column
            assert all(math.isfinite(v) for v in values.values()), column
