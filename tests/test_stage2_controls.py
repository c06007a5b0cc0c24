"""experiments/stage2.py's controls and seed statistics: the stage-1 quantiser carried into the
``stage1-more`` control, and the per-lambda means, spreads and paired differences."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import REPO_ROOT, compose_train
from omegaconf import OmegaConf

sys.path.insert(0, str(REPO_ROOT / "experiments"))  # the scripts import each other by name
import seed_summary  # noqa: E402
import stage2  # noqa: E402

TCQ = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "quant" / "tcq.yaml"))


@pytest.mark.parametrize(
    "quant",
    [
        {"_target_": "licexp.quant.NoiseQuantization", "round_around_mean": False},
        {"_target_": "licexp.quant.NoiseQuantization", "round_around_mean": True},
        {"_target_": "licexp.quant.StraightThroughQuantization"},
        TCQ | {"states": 4, "scan": "plane", "rd_lambda": 0.05},
    ],
    ids=["noise", "noise_plus", "ste", "tcq-changed"],
)
def test_quant_overrides_give_the_control_the_stage1_quantiser(quant: dict) -> None:
    overrides = stage2.quant_overrides(quant)
    cfg = compose_train(["experiment=stage2", *overrides, "model.trainable=null"])
    assert OmegaConf.to_container(cfg.quant) == quant
    assert cfg.model.trainable is None


def test_quant_overrides_name_an_unknown_quantiser() -> None:
    with pytest.raises(ValueError, match="licexp.quant.Elsewhere"):
        stage2.quant_overrides({"_target_": "licexp.quant.Elsewhere"})


def point(stage1: str, seed: int | None, lmbda: float, coding: str, bpp: float, psnr: float):
    return {"stage1": stage1, "seed": seed, "lmbda": lmbda, "coding": coding}, bpp, psnr


def make_points(table: list) -> list[dict]:
    return [p | {"bpp": bpp, "psnr": psnr} for p, bpp, psnr in table]


def test_summary_and_paired_differences_match_numpy() -> None:
    rng = np.random.default_rng(0)
    seeds = [42, 43, 44]
    table = []
    for model, lmbda in (("a", 0.01), ("b", 0.01), ("c", 0.02)):
        table.append(point(model, None, lmbda, "stage1", rng.uniform(0.2, 1), rng.normal(27)))
        for seed in seeds:
            for coding in ("x", "y"):
                table.append(point(model, seed, lmbda, coding, rng.uniform(0.2, 1), rng.normal(27)))
    points = make_points(table)

    rows = {(r["lmbda"], r["coding"]): r for r in seed_summary.summary(points)}
    x = [p for p in points if p["coding"] == "x" and p["lmbda"] == 0.01]
    assert rows[0.01, "x"]["n"] == 6
    assert rows[0.01, "x"]["psnr_mean"] == pytest.approx(np.mean([p["psnr"] for p in x]))
    assert rows[0.01, "x"]["bpp_std"] == pytest.approx(np.std([p["bpp"] for p in x], ddof=1))
    assert rows[0.02, "stage1"]["n"] == 1 and rows[0.02, "stage1"]["psnr_std"] is None

    # x against the untrained stage1: each seed paired with its own stage-1 model's point
    stage1 = {p["stage1"]: p for p in points if p["coding"] == "stage1"}
    diffs = [p["psnr"] - stage1[p["stage1"]]["psnr"] for p in x]
    rate = [100 * (p["bpp"] / stage1[p["stage1"]]["bpp"] - 1) for p in x]
    row = seed_summary.differences(points, "x", "stage1")[0]
    assert (row["lmbda"], row["n"]) == (0.01, 6)
    assert row["psnr_diff_mean"] == pytest.approx(np.mean(diffs))
    assert row["psnr_diff_std"] == pytest.approx(np.std(diffs, ddof=1))
    assert row["bpp_diff_pct_mean"] == pytest.approx(np.mean(rate))
    assert row["exceeds_2_spread"] == (abs(np.mean(diffs)) > 2 * np.std(diffs, ddof=1))

    # x against y, both trained: paired by model and seed
    y = {(p["stage1"], p["seed"]): p for p in points if p["coding"] == "y"}
    paired = [p["psnr"] - y[p["stage1"], p["seed"]]["psnr"] for p in x]
    row = seed_summary.differences(points, "x", "y")[0]
    assert row["psnr_diff_mean"] == pytest.approx(np.mean(paired))
    assert row["psnr_diff_std"] == pytest.approx(np.std(paired, ddof=1))


@pytest.mark.parametrize("offset, exceeds", [(0.5, True), (0.0, False)])
def test_a_difference_exceeds_twice_the_spread_only_when_it_does(offset, exceeds) -> None:
    noise = [0.1, -0.1, 0.05]  # std 0.104: 2x spread 0.21
    table = [point("a", None, 0.01, "stage1", 0.5, 27.0)]
    table += [point("a", s, 0.01, "x", 0.5, 27.0 + offset + n) for s, n in enumerate(noise)]
    row = seed_summary.differences(make_points(table), "x", "stage1")[0]
    assert row["exceeds_2_spread"] is exceeds
    text = seed_summary.markdown([row])
    assert f"{offset + np.mean(noise):+.3f} ± {np.std(noise, ddof=1):.3f}" in text
    assert ("| yes |" if exceeds else "| no |") in text


def test_a_single_seed_has_no_spread_and_a_missing_reference_fails() -> None:
    table = [point("a", None, 0.01, "stage1", 0.5, 27.0), point("a", 7, 0.01, "x", 0.5, 27.2)]
    row = seed_summary.differences(make_points(table), "x", "stage1")[0]
    assert row["psnr_diff_std"] is None and row["exceeds_2_spread"] is None
    assert "n/a (n = 1)" in seed_summary.markdown([row])
    with pytest.raises(ValueError, match="no 'z' point of a"):
        seed_summary.differences(make_points(table), "x", "z")
