"""Seed statistics of RD points: mean, standard deviation and count per lambda and coding, and
paired PSNR differences between codings with the test of whether they exceed the seed spread.

A point is a dict with ``stage1`` (the stage-1 model), ``seed`` (the seed of the training that
made the coded model, ``None`` where no training did), ``lmbda``, ``coding``, ``bpp`` and
``psnr``. Used by ``experiments/stage2.py``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

SPREAD = "the sample standard deviation of the paired difference over seeds (and stage-1 models)"
"""What "the seed spread" of :func:`differences` is; named in every table that uses it."""


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value: no spread measured)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summary(points: Iterable[dict]) -> list[dict]:
    """Mean, standard deviation and n of bpp and PSNR per (lambda, coding), in first-seen order."""
    groups: dict[tuple[float, str], list[dict]] = {}
    for point in points:
        groups.setdefault((point["lmbda"], point["coding"]), []).append(point)
    rows = []
    for (lmbda, coding), group in groups.items():
        row = {"lmbda": lmbda, "coding": coding, "n": len(group)}
        for key in ("bpp", "psnr"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([p[key] for p in group])
        rows.append(row)
    return rows


def differences(points: list[dict], coding: str, reference: str) -> list[dict]:
    """Per lambda, ``coding`` minus ``reference`` in PSNR (dB) and bpp (%), paired by stage-1
    model and, where the reference was trained too, by seed; mean, spread (:data:`SPREAD`), n,
    and whether |mean PSNR difference| exceeds twice the spread (``None``: n = 1)."""
    by_key = {(p["stage1"], p["seed"], p["coding"]): p for p in points}
    pairs: dict[float, list[tuple[dict, dict]]] = {}
    for point in points:
        if point["coding"] != coding:
            continue
        seed = point["seed"] if (point["stage1"], point["seed"], reference) in by_key else None
        base = by_key.get((point["stage1"], seed, reference))
        if base is None:
            raise ValueError(f"no {reference!r} point of {point['stage1']} to pair {coding!r} with")
        pairs.setdefault(point["lmbda"], []).append((point, base))
    rows = []
    for lmbda, group in sorted(pairs.items()):
        psnr, psnr_std = mean_std([p["psnr"] - b["psnr"] for p, b in group])
        bpp, _ = mean_std([100 * (p["bpp"] / b["bpp"] - 1) for p, b in group])
        exceeds = None if psnr_std is None else abs(psnr) > 2 * psnr_std
        rows.append(
            {
                "lmbda": lmbda,
                "coding": coding,
                "reference": reference,
                "n": len(group),
                "psnr_diff_mean": psnr,
                "psnr_diff_std": psnr_std,
                "bpp_diff_pct_mean": bpp,
                "exceeds_2_spread": exceeds,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    """The :func:`differences` rows as a Markdown table, the spread it uses named below it."""
    lines = [
        "| lambda | coding | against | n | PSNR diff (dB) | bpp diff | exceeds 2x spread |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = {True: "yes", False: "no", None: "n/a (n = 1)"}
    for row in rows:
        spread = "" if row["psnr_diff_std"] is None else f" ± {row['psnr_diff_std']:.3f}"
        lines.append(
            f"| {row['lmbda']:g} | {row['coding']} | {row['reference']} | {row['n']} | "
            f"{row['psnr_diff_mean']:+.3f}{spread} | {row['bpp_diff_pct_mean']:+.2f} % | "
            f"{verdicts[row['exceeds_2_spread']]} |"
        )
    lines += ["", f"Mean ± spread; the spread is {SPREAD}."]
    return "\n".join(lines) + "\n"
