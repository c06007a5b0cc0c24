"""Trellis-coded quantisation: search speed, linear scaling, and the gain on memoryless sources.

    .venv/bin/python benchmarks/tcq.py [--device cpu|cuda] [--skip-reference] [--skip-gain]

1. **Speed**: the vectorised Viterbi search (``TrellisSymbols.search``) on a Kodak-sized
   latent, 320 x 32 x 48 elements (Tiny-LIC's and mbt2018-mean's ``y`` of a 768 x 512
   image), with Gaussian residuals and log-uniform scales, against a straightforward
   per-element Python trellis over the same candidates and costs (the same minimum cost is
   checked), and at 1x, 4x and 16x the elements (batch 1, 4, 16).
2. **Gain**: SNR of 4- and 8-state TCQ over plain rounding and over RDOQ (per sample the
   cheapest of floor, ceil and 0 under the same rate model, ``rd_lambda`` the high-rate
   slope of its step, :func:`rdoq_curve`) at equal rate on i.i.d. unit-variance Gaussian and
   uniform sources, 1 to 4 bits per sample; the rate is
   the ideal code length of the indices under the source's mass over each index's
   decision cell in its state's quantiser (scalar: over its rounding cell), so both use
   the same entropy model. Steps are swept for both and the SNR curves interpolated at
   each rate. ``lambda = 0`` is the trellis alone (nearest-path search); ``lambda = RD``
   searches with ``rd_lambda = 2 ln 2 (2 Delta)^2 / 12 / 2``, the high-rate slope of each
   quantiser's step halved, which adds entropy-constrained decisions (and, at low rate, a
   dead zone scalar rounding lacks).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine_description, update_section  # noqa: E402

from licexp.quant import EntropyParameters  # noqa: E402
from licexp.quant.tcq import TrellisSymbols  # noqa: E402
from licexp.quant.trellis import (  # noqa: E402
    TRELLISES,
    decision_cell,
    reconstruction_level,
    viterbi,
)

KODAK_LATENT = (320, 32, 48)


def kodak_like_latent(batch: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals ``y - mu ~ N(0, sigma)`` with ``sigma`` log-uniform in [0.11, 8]."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, *KODAK_LATENT)
    scales = torch.exp(
        torch.empty(shape).uniform_(math.log(0.11), math.log(8), generator=generator)
    )
    residual = torch.randn(shape, generator=generator) * scales
    return residual.to(device), scales.to(device)


def python_reference_cost(
    residual: list[list[float]], scales: list[list[float]], coding: TrellisSymbols
) -> list[float]:
    """The minimum cost of every chain by a per-element, per-state Python trellis."""
    trellis, step, rd_lambda, n = coding.trellis, coding.step, coding.rd_lambda, coding.neighbours

    def level(k: int, q: int) -> float:
        return 2 * k - (k > 0) * q + (k < 0) * q

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    costs = []
    for chain, chain_scales in zip(residual, scales, strict=True):
        cost = [0.0] + [math.inf] * (trellis.num_states - 1)
        for v, sigma in zip(chain, chain_scales, strict=True):
            sigma = max(sigma, 0.11)
            new = [math.inf] * trellis.num_states
            for state, state_cost in enumerate(cost):
                if state_cost == math.inf:
                    continue
                q = trellis.quantisers[state]
                u = v / step
                inverse = u / 2 if q == 0 else (u + math.copysign(1.0, u) * (u != 0)) / 2
                base = math.floor(inverse)
                for k in [*range(base - n + 1, base + n + 1), 0]:
                    low = (level(k - 1, q) + level(k, q)) / 2 * step
                    high = (level(k + 1, q) + level(k, q)) / 2 * step
                    if low + high > 0:
                        low, high = -high, -low
                    mass = max(phi(high / sigma) - phi(low / sigma), 1e-9)
                    total = state_cost + (v - level(k, q) * step) ** 2 - rd_lambda * math.log2(mass)
                    following = trellis.successors[state][k % 2]
                    new[following] = min(new[following], total)
            cost = new
        costs.append(min(cost))
    return costs


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed_section(device: str, reference: bool, repeats: int) -> str:
    rows = []
    residual, scales = kodak_like_latent(1, device)
    parameters = EntropyParameters(scales)
    for states in (4, 8):
        for scan in ("row", "plane"):
            for exact in (True, False):
                coding = TrellisSymbols(
                    states=states, step=0.5, rd_lambda=0.1, scan=scan, exact=exact
                )
                coding.search(residual, parameters)  # warm-up
                seconds = timed(lambda c=coding: c.search(residual, parameters), repeats)
                rows.append((states, scan, "exact" if exact else "fixed (n=1)", seconds))
    lines = [
        "| states | chains | candidates | search (s) | elements / s |",
        "|---|---|---|---|---|",
    ]
    elements = residual.numel()
    for states, scan, candidates, seconds in rows:
        lines.append(
            f"| {states} | {scan} | {candidates} | {seconds:.3f} | {elements / seconds:,.0f} |"
        )

    coding = TrellisSymbols(states=8, step=0.5, rd_lambda=0.1, scan="row")
    chains = coding.chains(residual).reshape(-1, KODAK_LATENT[-1])
    chain_scales = coding.chains(scales).reshape(-1, KODAK_LATENT[-1])
    if reference:

        def vectorised_costs() -> torch.Tensor:
            def cost(indices, quantiser):
                lv = reconstruction_level(indices, quantiser) * coding.step
                bits = -torch.log2(
                    coding.cell_likelihoods(indices, quantiser, chain_scales.unsqueeze(-1))
                )
                return (chains.unsqueeze(-1) - lv) ** 2 + coding.rd_lambda * bits

            return viterbi(chains / coding.step, cost, coding.trellis).cost

        fast = timed(vectorised_costs, repeats)
        start = time.perf_counter()
        slow_costs = python_reference_cost(
            chains.double().cpu().tolist(), chain_scales.double().cpu().tolist(), coding
        )
        slow = time.perf_counter() - start
        agree = np.allclose(vectorised_costs().cpu().numpy(), slow_costs, rtol=1e-4)
        lines += [
            "",
            f"Per-element Python trellis (8 states, rows, same candidates): {slow:.1f} s against "
            f"{fast:.3f} s vectorised: **{slow / fast:,.0f}x** faster (minimum costs agree: "
            f"{agree}).",
        ]

    lines += ["", "| elements (batch) | search (s) | per element (us) |", "|---|---|---|"]
    for batch in (1, 4, 16):
        residual, scales = kodak_like_latent(batch, device, seed=batch)
        parameters = EntropyParameters(scales)
        coding.search(residual, parameters)
        seconds = timed(lambda r=residual, p=parameters: coding.search(r, p), repeats)
        lines.append(
            f"| {residual.numel():,} ({batch}) | {seconds:.3f} | "
            f"{1e6 * seconds / residual.numel():.3f} |"
        )
    return "\n".join(lines)


def source(kind: str, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        x = torch.randn(count, generator=generator, dtype=torch.float64)
    else:
        x = (torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1) * math.sqrt(3)
    return x / x.std()


def source_mass(kind: str, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    if kind == "gaussian":
        return (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp_min(1e-12)
    edge = math.sqrt(3)
    return ((upper.clamp(-edge, edge) - lower.clamp(-edge, edge)) / (2 * edge)).clamp_min(1e-12)


def scalar_curve(x: torch.Tensor, kind: str, steps: np.ndarray) -> np.ndarray:
    points = []
    for step in steps:
        k = torch.round(x / step)
        rate = -torch.log2(source_mass(kind, (k - 0.5) * step, (k + 0.5) * step)).mean()
        points.append((rate.item(), ((x - k * step) ** 2).mean().item()))
    return np.array(points)


def rdoq_curve(x: torch.Tensor, kind: str, steps: np.ndarray) -> np.ndarray:
    """RDOQ (floor, ceil or 0 per sample under the source's cell masses) with ``rd_lambda``
    the high-rate slope of its step, ``2 ln 2 step^2 / 12``: of 0.5, 1, 2 and 4 times that
    slope, the best for RDOQ on both sources at 1 to 4 bits (measured when this was written)."""
    points = []
    for step in steps:
        rd_lambda = 2 * math.log(2) * step**2 / 12
        scaled = x / step
        options = torch.stack([torch.floor(scaled), torch.ceil(scaled), torch.zeros_like(x)], -1)
        bits = -torch.log2(source_mass(kind, (options - 0.5) * step, (options + 0.5) * step))
        cost = (x.unsqueeze(-1) - options * step) ** 2 + rd_lambda * bits
        choice = cost.argmin(-1, keepdim=True)
        rate = bits.gather(-1, choice).mean()
        error = x - options.gather(-1, choice)[..., 0] * step
        points.append((rate.item(), (error**2).mean().item()))
    return np.array(points)


def trellis_curve(
    x: torch.Tensor, kind: str, steps: np.ndarray, states: int, rd: bool
) -> np.ndarray:
    chains = x.reshape(-1, 1000)
    trellis = TRELLISES[states]
    points = []
    for step in steps:
        rd_lambda = 2 * math.log(2) * (2 * step) ** 2 / 12 / 2 if rd else 0.0

        def cost(indices: torch.Tensor, quantiser, step=step, rd_lambda=rd_lambda):
            lower, upper = decision_cell(indices, quantiser)
            bits = -torch.log2(source_mass(kind, lower * step, upper * step))
            error = chains.unsqueeze(-1) - reconstruction_level(indices, quantiser) * step
            return error**2 + rd_lambda * bits

        path = viterbi(chains / step, cost, trellis, distortion_weight=step**2)
        quantisers = trellis.quantiser_table()[path.states]
        lower, upper = decision_cell(path.indices, quantisers)
        rate = -torch.log2(source_mass(kind, lower * step, upper * step)).mean()
        error = chains - reconstruction_level(path.indices, quantisers) * step
        points.append((rate.item(), (error**2).mean().item()))
    return np.array(points)


def snr_at(points: np.ndarray, rate: float) -> float:
    """SNR (dB) at ``rate`` on the curve through ``points``; NaN outside it (no extrapolation)."""
    order = np.argsort(points[:, 0])
    rates, snrs = points[order, 0], -10 * np.log10(points[order, 1])
    if not rates[0] <= rate <= rates[-1]:
        return math.nan
    return float(np.interp(rate, rates, snrs))


def gain_section(samples: int) -> str:
    lines = [
        "| source | search | states | baseline | 1 bit | 2 bits | 3 bits | 4 bits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    steps = np.geomspace(0.02, 4.0, 56)
    for kind in ("gaussian", "uniform"):
        x = source(kind, samples, seed=0)
        baselines = {"rounding": scalar_curve(x, kind, steps), "RDOQ": rdoq_curve(x, kind, steps)}
        for rd in (False, True):
            for states in (4, 8):
                tcq = trellis_curve(x, kind, steps / 2, states, rd)
                for name, baseline in baselines.items():
                    gains = [snr_at(tcq, r) - snr_at(baseline, r) for r in (1, 2, 3, 4)]
                    cells = " | ".join(f"{g:+.2f} dB" for g in gains)
                    search = "lambda=RD" if rd else "lambda=0"
                    lines.append(f"| {kind} | {search} | {states} | {name} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-gain", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else machine_description()
    command = "`.venv/bin/python benchmarks/tcq.py" + (
        f" --device {args.device}`" if args.device != "cpu" else "`"
    )
    body = (
        f"## TCQ search speed, {args.device} ({device_name})\n\n"
        "Viterbi search (`TrellisSymbols.search`, step 0.5, rd_lambda 0.1, one candidate "
        "level on each side plus zero, widened to every level that can be optimal: "
        "`exact`, the default) on a Kodak-sized latent of "
        f"{'x'.join(map(str, KODAK_LATENT))} elements; median of {args.repeats}.\n\n"
        f"{speed_section(args.device, not args.skip_reference, args.repeats)}\n\n"
        f"Command: {command}"
    )
    print(body)
    update_section(f"tcq-speed-{args.device}", body)
    if not args.skip_gain:
        body = (
            "## TCQ gain over scalar quantisation on memoryless sources\n\n"
            "SNR of TCQ minus SNR of a scalar baseline at equal rate (ideal code length "
            f"under the source's cell masses), {args.samples:,} samples, chains of 1000 "
            "(benchmarks/tcq.py docstring). Baselines: plain rounding (no rate-distortion "
            "decision) and RDOQ (per sample the cheapest of floor, ceil and 0 under the same "
            "rate model, as VVC measures dependent quantisation). 1.53 dB bounds the granular "
            "gain at high rate only; at low rates the gain over plain rounding exceeds it, "
            "because the RD search also decides what rounding never does (zeros, a dead "
            "zone); RDOQ makes those decisions too, and against it the gain is below the "
            "bound except at 1 bit on the uniform source. Entropy-constrained TCQ is reported at "
            "about 1 dB over ECSQ at high rate, and 4-state TCQ 0.87 dB over scalar on a "
            "uniform source at 4 bits (fixed rate).\n\n"
            f"{gain_section(args.samples)}\n\n"
            f"Command: {command}"
        )
        print(body)
        update_section("tcq-gain", body)


if __name__ == "__main__":
    main()
