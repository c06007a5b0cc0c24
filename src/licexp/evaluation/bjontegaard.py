"""Bjontegaard delta rate and delta PSNR (VCEG-M33) between two rate-distortion curves.

With ``r = log10(rate)`` and each curve interpolated through its points,

* BD-rate: the mean horizontal distance of the curves over the overlap ``[P_L, P_H]`` of
  their PSNR ranges, ``dR = 1 / (P_H - P_L) * integral_{P_L}^{P_H} (r_test(P) - r_ref(P)) dP``,
  reported as ``(10^dR - 1) * 100 %``: the average rate change at equal PSNR (negative: the
  test curve needs fewer bits);
* BD-PSNR: the mean vertical distance over the overlap ``[r_L, r_H]`` of their log-rate
  ranges, ``dP = 1 / (r_H - r_L) * integral_{r_L}^{r_H} (P_test(r) - P_ref(r)) dr`` in dB.

Interpolation ``method``:

* ``"pchip"``, the modern practice (JVET's common test conditions, the ``bjontegaard``
  package): a piecewise cubic Hermite interpolant through the points, shape preserving, no
  overshoot between points; needs at least 2 points per curve.
* ``"cubic"``, Bjontegaard's original: one cubic polynomial fitted (least squares) through
  all points of a curve; needs at least 4 points per curve.

Rates must be positive and finite, PSNRs finite, and no two points may share a rate. BD-rate
integrates log-rate as a function of PSNR, so it also needs a monotone curve: PSNR strictly
increasing with rate. Violations raise :class:`ValueError` naming the curve and the problem.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = ["METHODS", "bd_rate", "bd_psnr"]

Method = Literal["pchip", "cubic"]

#: Interpolation methods and the number of points each needs per curve.
METHODS: dict[str, int] = {"pchip": 2, "cubic": 4}


def _sorted_points(
    rate: Sequence[float], psnr: Sequence[float], curve: str, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(log10(rate), psnr)`` sorted by rate, after checking the curve can be interpolated."""
    if method not in METHODS:
        raise ValueError(f"unknown BD interpolation method {method!r}; choose one of {METHODS}")
    rates, psnrs = np.asarray(rate, dtype=float), np.asarray(psnr, dtype=float)
    if rates.shape != psnrs.shape or rates.ndim != 1:
        raise ValueError(f"{curve} curve: {rates.size} rates but {psnrs.size} PSNR values")
    if rates.size < METHODS[method]:
        raise ValueError(
            f"{curve} curve has {rates.size} points; BD with {method} interpolation needs "
            f"at least {METHODS[method]}"
        )
    if not (np.all(np.isfinite(rates)) and np.all(rates > 0) and np.all(np.isfinite(psnrs))):
        raise ValueError(
            f"{curve} curve needs positive finite rates and finite PSNRs, got rates "
            f"{rates.tolist()} and PSNRs {psnrs.tolist()}"
        )
    order = np.argsort(rates, kind="stable")
    rates, psnrs = rates[order], psnrs[order]
    if np.any(np.diff(rates) <= 0):
        raise ValueError(f"{curve} curve has repeated rates: {rates.tolist()}")
    return np.log10(rates), psnrs


def _check_monotone(log_rate: np.ndarray, psnr: np.ndarray, curve: str) -> None:
    if np.any(np.diff(psnr) <= 0):
        points = ", ".join(f"({10**r:.4g}, {p:.3f})" for r, p in zip(log_rate, psnr, strict=True))
        raise ValueError(
            f"{curve} curve is not monotone: PSNR does not increase with rate at every "
            f"point, (rate, PSNR) sorted by rate: {points}"
        )


def _mean_difference(
    x_ref: np.ndarray,
    y_ref: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    method: str,
    axis: str,
    shown: Callable[[float], float] = float,
) -> float:
    """Mean of ``y_test(x) - y_ref(x)`` over the overlap of the two ``x`` ranges.

    ``x`` must be increasing; errors name ``x`` as ``axis`` and show its values as ``shown(x)``.
    """
    low, high = max(x_ref[0], x_test[0]), min(x_ref[-1], x_test[-1])
    if high <= low:
        ranges = [f"[{shown(x[0]):.4g}, {shown(x[-1]):.4g}]" for x in (x_ref, x_test)]
        raise ValueError(
            f"the curves do not overlap in {axis}: reference {ranges[0]}, test {ranges[1]}"
        )
    if method == "pchip":
        areas = [
            PchipInterpolator(x, y).integrate(low, high)
            for x, y in ((x_ref, y_ref), (x_test, y_test))
        ]
    else:
        antiderivatives = [
            np.polyint(np.polyfit(x, y, 3)) for x, y in ((x_ref, y_ref), (x_test, y_test))
        ]
        areas = [np.polyval(p, high) - np.polyval(p, low) for p in antiderivatives]
    return float((areas[1] - areas[0]) / (high - low))


def bd_rate(
    ref_rate: Sequence[float],
    ref_psnr: Sequence[float],
    test_rate: Sequence[float],
    test_psnr: Sequence[float],
    method: Method = "pchip",
) -> float:
    """BD-rate of the test curve against the reference in percent (see the module docstring).

    Rates in any positive unit (bpp, kbit/s), the same for both curves; points in any order.
    """
    ref_r, ref_p = _sorted_points(ref_rate, ref_psnr, "reference", method)
    test_r, test_p = _sorted_points(test_rate, test_psnr, "test", method)
    _check_monotone(ref_r, ref_p, "reference")
    _check_monotone(test_r, test_p, "test")
    mean_log_ratio = _mean_difference(ref_p, ref_r, test_p, test_r, method, "PSNR (dB)")
    return (10**mean_log_ratio - 1) * 100


def bd_psnr(
    ref_rate: Sequence[float],
    ref_psnr: Sequence[float],
    test_rate: Sequence[float],
    test_psnr: Sequence[float],
    method: Method = "pchip",
) -> float:
    """BD-PSNR of the test curve against the reference in dB (see the module docstring)."""
    ref_r, ref_p = _sorted_points(ref_rate, ref_psnr, "reference", method)
    test_r, test_p = _sorted_points(test_rate, test_psnr, "test", method)
    return _mean_difference(ref_r, ref_p, test_r, test_p, method, "rate", lambda r: 10**r)
