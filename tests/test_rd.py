"""``licexp.rd`` on run directories built here (no training): grouping, outputs, BD, errors."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import pytest
import yaml
from helpers import SHARED_DIR
from rich.console import Console

from licexp import rd
from licexp.evaluation.results import RDCurve, load_curve, save_curve
from licexp.evaluation.runs import find_runs, group_runs

KODAK_ANCHORS = SHARED_DIR / "data" / "anchors" / "kodak"
LAMBDAS = (0.0018, 0.0067, 0.025)
BPP = (0.15, 0.35, 0.8)
PSNR = (27.0, 30.0, 33.5)


def make_run(
    run_dir: Path,
    lmbda: float,
    bpp: float,
    psnr: float,
    quant: str = "noise",
    backbone: str = "mean_scale",
    test_set: str = "licexp.data.PhotoSamples",
    extra_overrides: tuple[str, ...] = (),
    results: bool = True,
) -> Path:
    """A run directory as ``python -m licexp.train`` leaves it, with a given RD point."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True)
    config = {
        "lmbda": lmbda,
        "run_name": "${hydra:runtime.choices.backbone}-${hydra:runtime.choices.quant}",
        "data": {"test": {"_target_": test_set, "names": ["astronaut", "coffee"]}},
    }
    overrides = [f"lmbda={lmbda}", f"quant={quant}", "callbacks.progress_bar=null"]
    hydra = {
        "hydra": {
            "runtime": {"choices": {"backbone": backbone, "quant": quant}},
            "overrides": {"task": [*overrides, *extra_overrides]},
        }
    }
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    if results:
        point = RDCurve(
            name=f"{backbone}-{quant}-lmbda{lmbda}",
            bpp=[bpp],
            psnr=[psnr],
            ms_ssim=[1 - 10 ** (-psnr / 25)],
            extra={"estimated_bpp": [0.97 * bpp]},
        )
        save_curve(point, run_dir / "eval" / "results.json")
    return run_dir


def make_sweep(root: Path, quant: str, rate_scale: float = 1.0, **kwargs) -> Path:
    for job, (lmbda, bpp, psnr) in enumerate(zip(LAMBDAS, BPP, PSNR, strict=True)):
        make_run(root / quant / str(job), lmbda, rate_scale * bpp, psnr, quant=quant, **kwargs)
    return root / quant


def run_rd(*args: object) -> tuple[int, str]:
    buffer = io.StringIO()
    code = rd.main([str(arg) for arg in args], console=Console(file=buffer, width=300))
    return code, buffer.getvalue()


def read_bd(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "bd.csv") as file:
        return {row["curve"]: row for row in csv.DictReader(file)}


def test_a_sweep_becomes_one_curve_per_quantiser_with_tables_json_figure_and_bd(tmp_path) -> None:
    make_sweep(tmp_path / "sweep", "noise")
    make_sweep(tmp_path / "sweep", "ste", rate_scale=0.9)
    make_run(tmp_path / "sweep" / "ste" / "3", 0.0932, 1.0, 36.0, quant="ste", results=False)
    out = tmp_path / "rd"

    code, output = run_rd(
        tmp_path / "sweep", "--no-default-anchors", "--reference", "mean_scale-noise", "--out", out
    )

    assert code == 0, output
    assert "skipped" in output and "no eval/results.json" in output
    assert "mean_scale-noise (evaluated on PhotoSamples(astronaut, coffee))" in output
    assert "mean_scale-ste" in output and "0.0067" in output
    curve = load_curve(out / "mean_scale-ste.json")
    assert curve.bpp == pytest.approx([0.9 * b for b in BPP])
    assert curve.extra["lmbda"] == list(LAMBDAS)
    assert curve.extra["estimated_bpp"] == pytest.approx([0.97 * 0.9 * b for b in BPP])
    assert len(curve.metadata["licexp"]["runs"]) == 3
    assert json.loads((out / "mean_scale-noise.json").read_text())["results"]["psnr-rgb"] == list(
        PSNR
    )
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bd = read_bd(out)
    assert set(bd) == {"mean_scale-ste"}
    assert float(bd["mean_scale-ste"]["bd_rate_pct"]) == pytest.approx(-10.0, abs=1e-9)
    assert float(bd["mean_scale-ste"]["bd_psnr_db"]) > 0


def test_points_are_sorted_by_bpp_and_other_varying_overrides_split_curves(tmp_path) -> None:
    for job, lmbda in enumerate((0.025, 0.0018)):  # jobs out of rate order
        bpp, psnr = (0.8, 33.0) if lmbda == 0.025 else (0.15, 27.0)
        for lr in ("1e-3", "1e-4"):
            extra = (f"model.optimizer.lr={lr}", "logger=csv" if lr == "1e-3" else "logger=none")
            make_run(tmp_path / f"{lr}_{job}", lmbda, bpp, psnr, extra_overrides=extra)
    runs, skipped = find_runs([tmp_path])
    curves = group_runs(runs)
    assert not skipped
    names = [sweep.curve.name for sweep in curves]
    assert names == [
        "mean_scale-noise model.optimizer.lr=1e-3",
        "mean_scale-noise model.optimizer.lr=1e-4",
    ]
    assert all(sweep.curve.extra["lmbda"] == [0.0018, 0.025] for sweep in curves)


def test_a_repeated_lambda_keeps_the_newer_run_and_says_so(tmp_path) -> None:
    sweep = make_sweep(tmp_path / "sweep", "noise")
    again = make_run(tmp_path / "again", LAMBDAS[0], 0.2, 28.0)
    os.utime(again / "eval" / "results.json", (2e9, 2e9))
    code, output = run_rd(sweep, again, "--no-default-anchors", "--out", tmp_path / "rd")
    assert code == 0, output
    assert "duplicate lambda" in output and str(sweep / "0") in output
    assert load_curve(tmp_path / "rd" / "mean_scale-noise.json").bpp[0] == 0.2


@pytest.mark.skipif(not KODAK_ANCHORS.is_dir(), reason="Kodak anchors not present")
def test_kodak_runs_are_compared_with_mbt2018_mean_by_default(tmp_path) -> None:
    anchor = load_curve(KODAK_ANCHORS / "compressai-mbt2018-mean_mse_cpu.json")
    for job, (bpp, psnr) in enumerate(zip(anchor.bpp, anchor.psnr, strict=True)):
        make_run(
            tmp_path / "sweep" / str(job),
            0.001 * (job + 1),
            0.8 * bpp,
            psnr,
            test_set="licexp.data.Kodak",
        )
    code, output = run_rd(tmp_path / "sweep", "--out", tmp_path / "rd")
    assert code == 0, output
    assert "BD against mbt2018-mean" in output
    bd = read_bd(tmp_path / "rd")
    assert float(bd["mean_scale-noise"]["bd_rate_pct"]) == pytest.approx(-20.0, abs=1e-9)
    assert bd["mean_scale-noise"]["note"] == ""
    assert math.isfinite(float(bd["bmshj2018-hyperprior"]["bd_rate_pct"]))
    curves = [load_curve(tmp_path / "rd" / "mean_scale-noise.json")]
    anchors = rd.collect_anchors([], kodak_defaults=True)
    assert rd.figure_title(curves, anchors) == "evaluated on Kodak"


@pytest.mark.skipif(not KODAK_ANCHORS.is_dir(), reason="Kodak anchors not present")
def test_runs_on_other_images_say_so_and_compare_among_themselves(tmp_path) -> None:
    make_sweep(tmp_path / "sweep", "noise")
    make_sweep(tmp_path / "sweep", "ste", rate_scale=0.9)
    code, output = run_rd(tmp_path / "sweep", "--out", tmp_path / "rd")
    assert code == 0, output
    assert "BD against mean_scale-noise" in output
    bd = read_bd(tmp_path / "rd")
    assert float(bd["mean_scale-ste"]["bd_rate_pct"]) == pytest.approx(-10.0, abs=1e-9)
    assert "different images: Kodak vs PhotoSamples" in bd["mbt2018-mean"]["note"]
    curves = [load_curve(tmp_path / "rd" / "mean_scale-noise.json")]
    anchors = rd.collect_anchors([], kodak_defaults=True)
    assert "measured on Kodak, other images" in rd.figure_title(curves, anchors)


def shifted_curve(root: Path, name: str = "shifted") -> Path:
    """A sweep's curve (``make_sweep``), 0.5 dB better, as a CompressAI-schema ``<name>.json``."""
    curve = RDCurve(name=name, bpp=list(BPP), psnr=[p + 0.5 for p in PSNR])
    save_curve(curve, root / f"{name}.json")
    return root / f"{name}.json"


def test_positional_json_files_are_listed_drawn_and_compared_as_anchors(
    tmp_path, monkeypatch
) -> None:
    sweep = make_sweep(tmp_path / "sweep", "noise")
    shifted, other = shifted_curve(tmp_path), shifted_curve(tmp_path, "other")
    drawn = {}

    def plot(curves, path, title, anchors) -> None:
        drawn.update(curves=[c.name for c in curves], anchors=[a.name for a in anchors])

    monkeypatch.setattr(rd, "plot_rd", plot)
    code, output = run_rd(
        shifted, sweep, "--anchor", other, "--no-default-anchors", "--out", tmp_path / "b"
    )
    assert code == 0, output
    assert f"anchor shifted (dashed) from {shifted}" in output
    assert f"anchor other (dashed) from {other}" in output
    assert drawn == {"curves": ["mean_scale-noise"], "anchors": ["shifted", "other"]}
    assert "BD against mean_scale-noise" in output
    assert sorted(p.name for p in (tmp_path / "b").glob("*.json")) == ["mean_scale-noise.json"]
    assert float(read_bd(tmp_path / "b")["shifted"]["bd_psnr_db"]) == pytest.approx(0.5)

    code, output = run_rd(
        sweep, shifted, "--no-default-anchors", "--reference", "shifted", "--out", tmp_path / "c"
    )
    assert code == 0, output
    assert float(read_bd(tmp_path / "c")["mean_scale-noise"]["bd_psnr_db"]) == pytest.approx(-0.5)


@pytest.mark.skipif(not KODAK_ANCHORS.is_dir(), reason="Kodak anchors not present")
def test_a_positional_json_file_leaves_kodak_runs_compared_with_mbt2018_mean(tmp_path) -> None:
    for job, (lmbda, bpp, psnr) in enumerate(zip(LAMBDAS, BPP, PSNR, strict=True)):
        make_run(tmp_path / "sweep" / str(job), lmbda, bpp, psnr, test_set="licexp.data.Kodak")
    factorized = KODAK_ANCHORS / "compressai-bmshj2018-factorized_mse_cpu.json"
    code, output = run_rd(tmp_path / "sweep", factorized, "--out", tmp_path / "rd")
    assert code == 0, output
    assert "BD against mbt2018-mean" in output
    assert "anchor mbt2018-mean (dashed) from" in output
    assert f"anchor bmshj2018-factorized (dashed) from {factorized}" in output
    assert set(read_bd(tmp_path / "rd")) == {
        "mean_scale-noise",
        "bmshj2018-hyperprior",
        "bmshj2018-factorized",
    }


def test_json_files_without_a_sweep_are_refused(tmp_path) -> None:
    shifted = shifted_curve(tmp_path)
    code, output = run_rd(shifted, "--no-default-anchors", "--reference", "shifted")
    assert code == 2
    assert "no sweep or run directory given" in output


def test_a_second_run_says_it_replaces_the_results_and_rewrites_them(tmp_path) -> None:
    sweep = make_sweep(tmp_path / "sweep", "noise")
    make_sweep(tmp_path / "sweep", "ste", rate_scale=0.9)
    out = tmp_path / "sweep" / "rd"
    code, output = run_rd(tmp_path / "sweep", "--no-default-anchors")
    assert code == 0, output
    assert "replacing" not in output
    for name in ("rd.png", "bd.csv", "mean_scale-noise.json"):
        (out / name).write_text("stale")
    make_run(sweep / "3", 0.0932, 1.2, 36.0)

    code, output = run_rd(tmp_path / "sweep", "--no-default-anchors")
    assert code == 0, output
    assert output.count(f"replacing the results in {out}") == 1
    assert output.index("replacing") < output.index("mean_scale-noise (evaluated on")
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(read_bd(out)) == {"mean_scale-ste"}
    assert load_curve(out / "mean_scale-noise.json").bpp == pytest.approx([*BPP, 1.2])


@pytest.mark.parametrize(
    ("setup", "args", "code", "message"),
    [
        ("empty", [], 1, "no finished runs under"),
        ("bad_json", ["curve.json"], 2, "cannot read curve file"),
        ("sweep", ["--reference", "nonsense"], 2, "choose one of ['mean_scale-noise'"),
        ("sweep", ["does/not/exist"], 2, "no such file or directory"),
    ],
)
def test_bad_input_is_named(tmp_path, monkeypatch, setup, args, code, message) -> None:
    (tmp_path / "runs").mkdir()
    if setup == "sweep":
        make_sweep(tmp_path / "runs", "noise")
    (tmp_path / "curve.json").write_text("{not json")
    monkeypatch.chdir(tmp_path)
    result, output = run_rd("runs", *args, "--no-default-anchors")
    assert result == code
    assert message in output.replace("\n", "")


def test_a_run_with_corrupt_results_is_listed_and_the_others_go_on(tmp_path) -> None:
    make_sweep(tmp_path / "sweep", "noise")
    (tmp_path / "sweep" / "noise" / "1" / "eval" / "results.json").write_text("{truncated")
    code, output = run_rd(tmp_path / "sweep", "--no-default-anchors", "--out", tmp_path / "rd")
    assert code == 0
    assert "unreadable eval/results.json" in output
    assert load_curve(tmp_path / "rd" / "mean_scale-noise.json").extra["lmbda"] == [0.0018, 0.025]
