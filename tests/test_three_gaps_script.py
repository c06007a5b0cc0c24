"""experiments/three_gaps.py on a fabricated sweep: figures, table and the RD loss formula."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT
from omegaconf import OmegaConf


def load_script():
    spec = importlib.util.spec_from_file_location(
        "three_gaps", REPO_ROOT / "experiments" / "three_gaps.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["three_gaps"] = module
    spec.loader.exec_module(module)
    return module


def fake_job(directory: Path, quant: str, discrete: float, psnrs: list[float]) -> None:
    (directory / ".hydra").mkdir(parents=True)
    OmegaConf.save({"run_name": f"m-{quant}", "lmbda": 0.01}, directory / ".hydra/config.yaml")
    OmegaConf.save([f"quant={quant}"], directory / ".hydra/overrides.yaml")
    (directory / "csv").mkdir()
    with open(directory / "csv/metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, ["step", "train/loss", "train/gaps/discrete"])
        writer.writeheader()
        for step in range(10):
            writer.writerow({"step": step, "train/loss": 2.0, "train/gaps/discrete": discrete})
            writer.writerow({"step": step, "train/loss": 1.9, "train/gaps/discrete": ""})
    (directory / "eval").mkdir()
    with open(directory / "eval/per_image.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, ["name", "bpp", "psnr"])
        writer.writeheader()
        for index, psnr in enumerate(psnrs):
            writer.writerow({"name": f"img{index}", "bpp": 0.5, "psnr": psnr})
    (directory / "gaps").mkdir()
    histogram = {"counts": [0.5, 0.5], "edges": [-0.5, 0.0, 0.5], "step": 9}
    (directory / "gaps/latent_histogram_step0000009.json").write_text(json.dumps(histogram))


def test_figures_table_and_rd_loss_of_a_sweep(tmp_path, monkeypatch) -> None:
    script = load_script()
    sweep = tmp_path / "sweep"
    fake_job(sweep / "0", "noise", 0.25, [30.0, 40.0])
    fake_job(sweep / "1", "ste", 0.0, [30.0, 30.0])
    (sweep / "multirun.yaml").write_text("{}")  # a file beside the jobs is ignored
    monkeypatch.setattr(sys, "argv", ["three_gaps.py", str(sweep), "--out", str(tmp_path / "o")])
    script.main()
    for name in ("gap_curves.png", "latent_histograms.png", "rd_points.png", "summary.md"):
        assert (tmp_path / "o" / name).stat().st_size > 0

    jobs = {job.name: job for job in map(script.read_job, sorted(sweep.iterdir())) if job}
    assert set(jobs) == {"noise", "ste"}
    assert jobs["noise"].curves["discrete"] == [(step, 0.25) for step in range(10)]
    assert len(jobs["noise"].curves["loss"]) == 20
    # RD loss per image: lambda * 255^2 * 10^(-PSNR/10) + bpp, averaged over the images.
    expected = (0.01 * 255**2 * (1e-3 + 1e-4) + 2 * 0.5) / 2
    assert jobs["noise"].rd_loss == pytest.approx(expected)
    summary = (tmp_path / "o" / "summary.md").read_text()
    assert "| noise | 0.2500 |" in summary and "| ste | 0.0000 |" in summary
