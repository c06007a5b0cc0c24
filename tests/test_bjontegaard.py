"""BD-rate and BD-PSNR: cases with a known answer, errors, and the ``bjontegaard`` package."""

from __future__ import annotations

import json
import math
import warnings

import bjontegaard
import numpy as np
import pytest
from helpers import SHARED_DIR

from licexp.evaluation.bjontegaard import bd_psnr, bd_rate

KODAK_ANCHORS = SHARED_DIR / "data" / "anchors" / "kodak"

RATES = [0.13, 0.21, 0.32, 0.48, 0.67, 0.94]
PSNRS = [27.6, 29.2, 31.0, 32.8, 34.5, 36.7]


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_every_rate_scaled_by_0_9_is_minus_10_percent(method) -> None:
    scaled = [0.9 * r for r in RATES]
    assert bd_rate(RATES, PSNRS, scaled, PSNRS, method) == pytest.approx(-10.0, abs=1e-9)
    assert bd_rate(scaled, PSNRS, RATES, PSNRS, method) == pytest.approx(100 / 9, abs=1e-9)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_a_curve_shifted_up_by_half_a_db_is_plus_half_a_db(method) -> None:
    shifted = [p + 0.5 for p in PSNRS]
    assert bd_psnr(RATES, PSNRS, RATES, shifted, method) == pytest.approx(0.5, abs=1e-12)
    assert bd_psnr(RATES, shifted, RATES, PSNRS, method) == pytest.approx(-0.5, abs=1e-12)
    assert bd_rate(RATES, PSNRS, RATES, PSNRS, method) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_straight_lines_of_different_slopes_over_a_partial_overlap(method) -> None:
    """log10 R = P / 10 - 3 (reference) and P / 8 - 3.5 (test), both exact for either method.

    PSNR ranges [30, 40] and [32, 44] overlap on [32, 40]; the mean of the log-rate difference
    P / 40 - 0.5 there is 36 / 40 - 0.5 = 0.4, so BD-rate = (10^0.4 - 1) * 100 %.
    """
    ref_psnr = np.linspace(30, 40, 5)
    test_psnr = np.linspace(32, 44, 6)
    ref_rate = 10 ** (ref_psnr / 10 - 3)
    test_rate = 10 ** (test_psnr / 8 - 3.5)
    expected = (10**0.4 - 1) * 100
    assert bd_rate(ref_rate, ref_psnr, test_rate, test_psnr, method) == pytest.approx(expected)


def test_points_may_come_in_any_order() -> None:
    order = [3, 0, 5, 1, 4, 2]
    shuffled_rates, shuffled_psnrs = [RATES[i] for i in order], [PSNRS[i] for i in order]
    scaled = [0.8 * r for r in RATES]
    assert bd_rate(shuffled_rates, shuffled_psnrs, scaled, PSNRS) == pytest.approx(-20.0)


@pytest.mark.parametrize(
    ("method", "rates", "psnrs", "message"),
    [
        ("pchip", [0.5], [30.0], "needs at least 2"),
        ("cubic", [0.1, 0.2, 0.4], [27.0, 29.0, 31.0], "needs at least 4"),
        ("pchip", [0.1, 0.3, 0.2], [27.0, 29.0, 31.0], "not monotone"),
        ("pchip", [0.1, 0.1, 0.2], [27.0, 29.0, 31.0], "repeated rates"),
        ("pchip", [0.0, 0.1], [27.0, 29.0], "positive finite rates"),
        ("pchip", [0.1, 0.2], [27.0, math.inf], "finite PSNRs"),
        ("spline", RATES, PSNRS, "unknown BD interpolation method"),
    ],
)
def test_bad_test_curves_are_refused_with_the_reason(method, rates, psnrs, message) -> None:
    with pytest.raises(ValueError, match=message):
        bd_rate(RATES, PSNRS, rates, psnrs, method)


def test_curves_without_overlap_are_refused() -> None:
    high = [p + 20 for p in PSNRS]
    with pytest.raises(ValueError, match="do not overlap in PSNR"):
        bd_rate(RATES, PSNRS, RATES, high)
    with pytest.raises(ValueError, match="do not overlap in rate"):
        bd_psnr(RATES, PSNRS, [100 * r for r in RATES], PSNRS)


def test_bd_psnr_needs_only_distinct_rates() -> None:
    """PSNR as a function of log-rate exists even where PSNR falls with rate."""
    dipping = [27.0, 29.0, 28.5, 31.0, 33.0, 35.0]
    assert math.isfinite(bd_psnr(RATES, PSNRS, RATES, dipping))
    with pytest.raises(ValueError, match="not monotone"):
        bd_rate(RATES, PSNRS, RATES, dipping)


def _package(function, *curves, method: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns below 75 % overlap
        return function(*curves, method=method, require_matching_points=False)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_agrees_with_the_bjontegaard_package_on_random_curves(method) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        curves = []
        for _ in range(2):
            rates = np.sort(rng.uniform(0.05, 2.0, size=int(rng.integers(4, 9))))
            psnrs = 30 + 4 * np.log(rates) + np.cumsum(rng.uniform(0.01, 0.5, size=rates.size))
            curves += [rates, psnrs]
        ours = bd_rate(*curves, method=method), bd_psnr(*curves, method=method)
        theirs = (
            _package(bjontegaard.bd_rate, *curves, method=method),
            _package(bjontegaard.bd_psnr, *curves, method=method),
        )
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-9)


def _anchor(name: str) -> tuple[list[float], list[float]]:
    path = KODAK_ANCHORS / name
    if not path.is_file():
        pytest.skip(f"anchor {path} not present")
    results = json.loads(path.read_text())["results"]
    return results["bpp"], results["psnr-rgb"]


@pytest.mark.parametrize("method", ["pchip", "cubic"])
@pytest.mark.parametrize(
    ("reference", "test"),
    [
        ("compressai-bmshj2018-hyperprior_mse_cpu.json", "compressai-mbt2018-mean_mse_cpu.json"),
        ("compressai-bmshj2018-hyperprior_mse_cpu.json", "compressai-mbt2018_mse_cpu.json"),
        ("compressai-mbt2018-mean_mse_cpu.json", "paper-mbt2018-mean.json"),
        ("vtm.json", "compressai-cheng2020-anchor_mse_cpu.json"),
    ],
)
def test_agrees_with_the_bjontegaard_package_on_the_kodak_anchors(reference, test, method) -> None:
    curves = (*_anchor(reference), *_anchor(test))
    assert bd_rate(*curves, method=method) == pytest.approx(
        _package(bjontegaard.bd_rate, *curves, method=method), rel=1e-9
    )
    assert bd_psnr(*curves, method=method) == pytest.approx(
        _package(bjontegaard.bd_psnr, *curves, method=method), rel=1e-9
    )
