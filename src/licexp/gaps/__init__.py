"""Pan et al.'s three gaps of quantisation approximations, as pure tensor functions."""

from licexp.gaps.histogram import (
    histogram_figure,
    latent_histogram,
    quantisation_error_histogram,
)
from licexp.gaps.metrics import (
    discrete_gap,
    entropy_estimation_gap,
    local_smoothness_score,
    rate_gap_bits,
    wasserstein_1d,
)

__all__ = [
    "discrete_gap",
    "entropy_estimation_gap",
    "histogram_figure",
    "latent_histogram",
    "local_smoothness_score",
    "quantisation_error_histogram",
    "rate_gap_bits",
    "wasserstein_1d",
]
