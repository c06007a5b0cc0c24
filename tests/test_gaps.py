"""Pan et al.'s three gaps: hand-computed cases and analytic expectations."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from licexp.gaps import (
    discrete_gap,
    entropy_estimation_gap,
    histogram_figure,
    latent_histogram,
    local_smoothness_score,
    quantisation_error_histogram,
    rate_gap_bits,
    wasserstein_1d,
)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _expected_chi(n: int, scale: float) -> float:
    """``E||xi||`` for ``xi ~ N(0, scale^2 I_n)``: the mean of a chi distribution."""
    return scale * math.sqrt(2.0) * math.exp(math.lgamma((n + 1) / 2) - math.lgamma(n / 2))


# --- discrete gap -------------------------------------------------------------------------


def test_discrete_gap_is_zero_for_a_straight_through_approximation() -> None:
    y = torch.randn(2, 8, 4, 4) * 3
    hard = torch.round(y)
    ste = y + (torch.round(y) - y).detach()
    assert discrete_gap(hard, ste).item() == 0.0
    assert discrete_gap(hard, ste, p=2).item() == 0.0


def test_discrete_gap_of_uniform_noise_on_integers_matches_the_moments_of_u() -> None:
    y = torch.randint(-5, 6, (4, 50, 32, 32)).float()  # already integer: R(y) = y
    u = torch.rand(y.shape, generator=_generator()) - 0.5
    approx = y + u
    assert discrete_gap(torch.round(y), approx, p=1).item() == pytest.approx(0.25, abs=3e-3)
    assert discrete_gap(torch.round(y), approx, p=2).item() == pytest.approx(1 / 12, abs=2e-3)


def test_discrete_gap_hand_computed() -> None:
    hard = torch.tensor([1.0, 0.0, -2.0, 3.0])
    approx = torch.tensor([1.5, -0.25, -2.0, 2.0])
    # |differences| = 0.5, 0.25, 0, 1
    assert discrete_gap(hard, approx).item() == pytest.approx(1.75 / 4)
    assert discrete_gap(hard, approx, p=2).item() == pytest.approx((0.25 + 0.0625 + 1) / 4)
    assert discrete_gap(hard, approx).dim() == 0


def test_discrete_gap_rejects_mismatched_shapes_and_bad_p() -> None:
    with pytest.raises(ValueError):
        discrete_gap(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError):
        discrete_gap(torch.zeros(3), torch.zeros(3), p=0)


# --- Wasserstein distance -----------------------------------------------------------------


def test_wasserstein_of_identical_samples_is_zero() -> None:
    a = torch.randn(1000)
    assert wasserstein_1d(a, a).item() == 0.0
    assert wasserstein_1d(a, a[torch.randperm(a.numel())]).item() == 0.0  # order is ignored


def test_wasserstein_of_a_shift_is_the_shift() -> None:
    a = torch.randn(3, 7, 11, dtype=torch.float64)
    assert wasserstein_1d(a, a + 0.7).item() == pytest.approx(0.7, abs=1e-12)
    assert wasserstein_1d(a - 2.0, a).item() == pytest.approx(2.0, abs=1e-12)


def test_wasserstein_of_shifted_uniform_distributions() -> None:
    a = torch.rand(200_000, generator=_generator(1), dtype=torch.float64)
    b = torch.rand(200_000, generator=_generator(2), dtype=torch.float64) + 0.3
    assert wasserstein_1d(a, b).item() == pytest.approx(0.3, abs=5e-3)


def test_wasserstein_of_point_masses() -> None:
    assert wasserstein_1d(torch.zeros(5), torch.full((5,), 2.0)).item() == pytest.approx(2.0)
    # 1/4 of the mass moves from 0 to 1.
    a = torch.tensor([0.0, 0.0, 1.0, 1.0])
    b = torch.tensor([0.0, 1.0, 1.0, 1.0])
    assert wasserstein_1d(a, b).item() == pytest.approx(0.25)


def test_wasserstein_with_unequal_sizes_hand_computed() -> None:
    # Quantile functions differ (0 against 1) only on t in (1/2, 2/3].
    a = torch.tensor([0.0, 1.0])
    b = torch.tensor([0.0, 0.0, 1.0])
    assert wasserstein_1d(a, b).item() == pytest.approx(1 / 6)
    assert wasserstein_1d(b, a).item() == pytest.approx(1 / 6)
    assert wasserstein_1d(torch.tensor([3.0]), torch.tensor([0.0, 1.0, 2.0])).item() == (
        pytest.approx(2.0)
    )


def test_wasserstein_with_unequal_sizes_is_exact() -> None:
    a = torch.randn(300, dtype=torch.float64)
    b = torch.randn(1000, dtype=torch.float64) * 2 + 1
    # Repeating every sample leaves the empirical distribution (and W1) unchanged.
    equal = wasserstein_1d(a.repeat_interleave(10), b.repeat_interleave(3))
    assert wasserstein_1d(a, b).item() == pytest.approx(equal.item(), abs=1e-12)
    stats = pytest.importorskip("scipy.stats")
    reference = stats.wasserstein_distance(a.numpy(), b.numpy())
    assert wasserstein_1d(a, b).item() == pytest.approx(reference, rel=1e-10)


def test_wasserstein_rejects_empty_samples() -> None:
    with pytest.raises(ValueError):
        wasserstein_1d(torch.zeros(0), torch.zeros(3))


# --- entropy-estimation gap ---------------------------------------------------------------


def test_entropy_gap_vanishes_for_a_latent_the_gaussian_describes() -> None:
    def gap(size: int, seed: int) -> float:
        g = _generator(seed)
        means = torch.randn(size, generator=g) * 2
        scales = torch.rand(size, generator=g) + 0.2
        latent = means + torch.randn(size, generator=g) * scales  # continuous, not rounded
        return entropy_estimation_gap(latent, means, scales, generator=_generator(seed + 100))

    large = gap(200_000, 0).item()
    small = sum(gap(200, seed).item() for seed in range(5)) / 5
    assert large < 0.015
    assert small > 3 * large  # shrinks with the number of elements


def test_entropy_gap_of_a_rounded_latent_far_from_the_mean_is_the_distance() -> None:
    means = torch.randn(4, 8, 16, 16, generator=_generator(3))
    scales = torch.full_like(means, 1e-4)
    rounded = means + 3.0
    value = entropy_estimation_gap(rounded, means, scales, _generator(), scale_bound=0.0)
    assert value.item() == pytest.approx(3.0, abs=1e-3)
    assert value.dim() == 0


def test_entropy_gap_lower_bounds_the_scale() -> None:
    rounded = torch.zeros(200_000)
    scales = torch.zeros(200_000)
    assert entropy_estimation_gap(rounded, None, scales, _generator(), scale_bound=0.0) == 0
    # sigma = max(0, 0.11): W1(delta_0, N(0, 0.11^2)) = 0.11 * E|delta| = 0.11 * sqrt(2 / pi).
    bounded = entropy_estimation_gap(rounded, None, scales, _generator())
    assert bounded.item() == pytest.approx(0.11 * math.sqrt(2 / math.pi), abs=1e-3)


def test_entropy_gap_is_reproducible_with_a_generator_and_broadcasts() -> None:
    rounded = torch.round(torch.randn(2, 4, 8, 8) * 2)
    means = torch.zeros(2, 4, 1, 1)
    scales = torch.tensor(1.5)
    first = entropy_estimation_gap(rounded, means, scales, _generator(7))
    second = entropy_estimation_gap(rounded, means, scales, _generator(7))
    assert first.item() == second.item() > 0


# --- rate gap -----------------------------------------------------------------------------


def test_rate_gap_hand_computed_and_signed() -> None:
    train = torch.full((2, 3, 4, 4), 0.5)  # 1 bit per element
    hard = torch.full((2, 3, 4, 4), 0.25)  # 2 bits per element
    assert rate_gap_bits(train, hard, num_pixels=96).item() == pytest.approx(-1.0)
    assert rate_gap_bits(hard, train, num_pixels=96).item() == pytest.approx(1.0)
    # 96 bits of difference over 2 images of 4 x 4 pixels.
    assert rate_gap_bits(hard, train, num_pixels=32).item() == pytest.approx(3.0)
    assert rate_gap_bits(train, train, num_pixels=32).item() == 0.0


def test_rate_gap_stays_finite_for_zero_likelihoods_and_rejects_no_pixels() -> None:
    assert math.isfinite(rate_gap_bits(torch.zeros(4), torch.ones(4), 4).item())
    with pytest.raises(ValueError):
        rate_gap_bits(torch.ones(4), torch.ones(4), 0)


# --- local smoothness score ---------------------------------------------------------------


def test_lss_of_a_quadratic_at_its_minimum_is_c_times_the_mean_norm() -> None:
    c, scale = 0.3, 0.5
    y0 = torch.randn(2, 4, 2, 4, dtype=torch.float64)
    n = y0.numel()

    def loss(y: torch.Tensor) -> torch.Tensor:
        return c * (y - y0).pow(2).sum()

    score = local_smoothness_score(loss, y0, scale, samples=4000, generator=_generator())
    assert score.item() == pytest.approx(c * _expected_chi(n, scale), rel=0.01)
    # One element: E|xi| = scale * sqrt(2 / pi).
    one = local_smoothness_score(
        lambda y: c * y.pow(2).sum(), torch.zeros(1), scale, 20_000, _generator(1)
    )
    assert one.item() == pytest.approx(c * scale * math.sqrt(2 / math.pi), rel=0.03)


def test_lss_of_a_quadratic_away_from_its_minimum_has_the_same_expectation() -> None:
    c, scale = 0.3, 0.5
    y0 = torch.randn(64, dtype=torch.float64)
    y_hat = y0 + 0.5 * torch.randn(64, dtype=torch.float64)  # the cross term averages out

    def loss(y: torch.Tensor) -> torch.Tensor:
        return c * (y - y0).pow(2).sum()

    score = local_smoothness_score(loss, y_hat, scale, samples=4000, generator=_generator(2))
    assert score.item() == pytest.approx(c * _expected_chi(64, scale), rel=0.04)


def test_lss_of_a_linear_loss_is_zero_signed_and_known_absolute() -> None:
    g = torch.randn(64, dtype=torch.float64)
    y_hat = torch.randn(64, dtype=torch.float64)

    def loss(y: torch.Tensor) -> torch.Tensor:
        return (g * y).sum()

    signed = local_smoothness_score(loss, y_hat, 0.5, samples=4000, generator=_generator(3))
    # <g, xi> / ||xi|| = ||g|| cos(angle): mean 0, standard deviation ||g|| / sqrt(64).
    assert abs(signed.item()) < 0.01 * g.norm().item()  # ~5 standard errors
    absolute = local_smoothness_score(loss, y_hat, 0.5, 10_000, _generator(4), absolute=True)
    # E|<g, u>| = ||g|| E|u_1| for u uniform on the unit sphere of R^64.
    mean_abs_u1 = math.exp(math.lgamma(32) - math.lgamma(32.5)) / math.sqrt(math.pi)
    assert absolute.item() == pytest.approx(g.norm().item() * mean_abs_u1, rel=0.05)


def test_lss_of_a_constant_loss_is_zero_and_evaluated_without_gradients() -> None:
    def loss(y: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled()
        return torch.tensor(2.5)

    y_hat = torch.randn(2, 3, 4, 4, requires_grad=True)
    score = local_smoothness_score(loss, y_hat, generator=_generator())
    assert score.item() == 0.0
    assert score.dim() == 0


def test_lss_validates_its_arguments() -> None:
    with pytest.raises(ValueError):
        local_smoothness_score(lambda y: y, torch.zeros(3))  # not one value
    with pytest.raises(ValueError):
        local_smoothness_score(lambda y: y.sum(), torch.zeros(3), scale=0.0)
    with pytest.raises(ValueError):
        local_smoothness_score(lambda y: y.sum(), torch.zeros(3), samples=0)


# --- histograms ---------------------------------------------------------------------------


def test_latent_histogram_has_the_papers_bins_and_sums_to_one() -> None:
    values = torch.rand(10_000) * 7 - 4
    counts, edges = latent_histogram(values)
    assert counts.shape == (140,)
    assert edges.shape == (141,)
    assert edges[0].item() == -4.0 and edges[-1].item() == 3.0
    assert torch.allclose(edges[1:] - edges[:-1], torch.full((140,), 0.05, dtype=edges.dtype))
    assert counts.sum().item() == pytest.approx(1.0)


def test_latent_histogram_drops_values_outside_the_range() -> None:
    values = torch.tensor([-5.0, 0.01, 3.0, 4.0, float("nan"), -4.0])
    counts, _ = latent_histogram(values)
    assert counts.sum().item() == pytest.approx(0.5)  # dropped fraction = 1 - sum
    assert counts[80].item() == pytest.approx(1 / 6)  # 0.01 in [0, 0.05)
    assert counts[-1].item() == pytest.approx(1 / 6)  # the upper end is in the last bin
    assert counts[0].item() == pytest.approx(1 / 6)
    with pytest.raises(ValueError):
        latent_histogram(values, bin_width=0.3)  # 7 / 0.3 is not whole


def test_quantisation_error_histogram_of_quarter_offsets() -> None:
    values = torch.arange(-3, 4).float().repeat(10) + 0.25
    counts, edges = quantisation_error_histogram(values)
    assert counts.shape == (50,) and edges.shape == (51,)
    index = int(torch.nonzero(counts).squeeze())
    assert edges[index] <= 0.25 < edges[index + 1]
    assert counts[index].item() == pytest.approx(1.0)
    # Errors are a fixed point: passing y - round(y) gives the same histogram.
    y = torch.randn(1000) * 3
    assert torch.equal(
        quantisation_error_histogram(y)[0], quantisation_error_histogram(y - torch.round(y))[0]
    )
    assert quantisation_error_histogram(y)[0].sum().item() == pytest.approx(1.0)


def test_histogram_figure_draws_one_bar_per_bin(tmp_path) -> None:
    counts, edges = latent_histogram(torch.randn(5000))
    figure = histogram_figure(counts, edges, "y")
    assert isinstance(figure, Figure)
    assert len(figure.axes[0].patches) == 140
    figure.savefig(tmp_path / "histogram.png")
    plt.close(figure)
    assert (tmp_path / "histogram.png").stat().st_size > 0
