"""Latent histograms as in Pan et al.'s Figure 2, and of the quantisation error.

Figure 2 of "Three gaps for quantisation in learned image compression" shows the average
histogram of the latent ``y`` over Kodak with bins of width 0.05 on ``[-4, 3]``: a model
trained with the straight-through estimator collapses towards point masses at the
integers, one trained with uniform noise spreads its mass evenly within each bin.

Normalisation: counts are **fractions of all input values**, including those outside the
range, which are dropped from the bars. So ``counts.sum() == 1`` when every value lies in
the range, and ``1 - counts.sum()`` is the dropped fraction (the mass outside the range and
any NaN). Divide by the bin width for a density. Bins are half-open ``[e_i, e_{i+1})``
except the last, which also holds the upper end of the range (numpy's convention).
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

__all__ = ["histogram_figure", "latent_histogram", "quantisation_error_histogram"]


def _histogram(values: Tensor, low: float, high: float, bins: int) -> tuple[Tensor, Tensor]:
    """Fractions of all values in ``bins`` equal bins over ``[low, high]`` (float64)."""
    if not high > low:
        raise ValueError(f"empty range [{low}, {high}]")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    flat = values.detach().flatten().to(torch.float64)
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64, device=flat.device)
    inside = flat[(flat >= low) & (flat <= high)]
    # edges[i] <= v < edges[i + 1] -> i; v == high -> the last bin.
    index = (torch.bucketize(inside, edges, right=True) - 1).clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).to(torch.float64)
    if flat.numel() > 0:
        counts = counts / flat.numel()
    return counts, edges


def latent_histogram(
    values: Tensor, bin_width: float = 0.05, value_range: tuple[float, float] = (-4.0, 3.0)
) -> tuple[Tensor, Tensor]:
    """Histogram of latent values as in Pan et al.'s Figure 2 (bin width 0.05 over [-4, 3]).

    Args:
        values: latent values, any shape (flattened).
        bin_width: width of each bin; must divide the range into a whole number of bins
            (the default gives 140 bins).
        value_range: ``(low, high)``; values outside it (and NaN) are dropped.

    Returns:
        ``(counts, edges)``: ``counts`` (``bins``) are fractions of *all* values, so
        ``1 - counts.sum()`` is the dropped fraction; ``edges`` (``bins + 1``). Both
        float64, on ``values``' device.
    """
    low, high = value_range
    if bin_width <= 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width}")
    ratio = (high - low) / bin_width
    bins = round(ratio)
    if bins < 1 or not math.isclose(ratio, bins, rel_tol=1e-6, abs_tol=1e-9):
        raise ValueError(f"bin width {bin_width} does not divide [{low}, {high}] into whole bins")
    return _histogram(values, low, high, bins)


def quantisation_error_histogram(values: Tensor, bins: int = 50) -> tuple[Tensor, Tensor]:
    """Histogram of the quantisation error ``y - round(y)`` over ``[-1/2, 1/2]``.

    ``round`` rounds halves to even, so the error lies in ``[-1/2, 1/2]`` and nothing is
    dropped (but NaN). The map is idempotent: passing errors already in ``[-1/2, 1/2]``
    gives their own histogram. Uniform-noise training tends to spread the mass evenly; a
    straight-through model concentrates it near 0.

    Args:
        values: latent values ``y`` (or their errors), any shape.
        bins: number of equal bins over ``[-1/2, 1/2]`` (default 50, width 0.02).

    Returns:
        ``(counts, edges)`` as in :func:`latent_histogram`.
    """
    values = values.detach()
    if not values.is_floating_point():
        values = values.to(torch.float64)
    return _histogram(values - torch.round(values), -0.5, 0.5, bins)


def histogram_figure(counts: Tensor, edges: Tensor, title: str) -> Figure:
    """Bar plot of a histogram like Pan et al.'s Figure 2; the caller saves and closes it.

    The figure is created through ``pyplot`` (Agg backend), so ``plt.close(figure)`` frees it.
    """
    counts = counts.detach().cpu().to(torch.float64)
    edges = edges.detach().cpu().to(torch.float64)
    if edges.numel() != counts.numel() + 1:
        raise ValueError(f"{counts.numel()} counts need {counts.numel() + 1} edges")
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    widths = (edges[1:] - edges[:-1]).tolist()
    axis.bar(edges[:-1].tolist(), counts.tolist(), width=widths, align="edge", linewidth=0)
    axis.set_xlim(float(edges[0]), float(edges[-1]))
    axis.set_xlabel("value")
    axis.set_ylabel("fraction of values")
    axis.set_title(title)
    axis.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    return figure
