"""The three gaps of Pan et al., "Three gaps for quantisation in learned image compression".

Pure functions of tensors (no Lightning, no model): a callback collects ``y``, its rounding
and its training approximation and hands them here. Symbols follow the paper:

- ``y``: the latent; ``R(y) = round(y)`` (or ``round(y - mu) + mu``, the mean-centred
  rounding the bitstream decodes to) is the *rounded* latent ``y~``;
- ``Q(y) = y^``: the training approximation of quantisation (``y + u`` for uniform noise,
  ``R(y)`` in the forward pass of the straight-through estimator, ...);
- ``mu_y``, ``sigma_y``: the mean and scale the entropy model predicts for each element;
- ``L = L_D + lambda * L_R``: the rate-distortion loss.

The three gaps (Sections 3.1-3.3 and 5.2 of the paper):

1. **Discrete gap** (Eq. 3), ``G_d = sum |R(y) - Q(y)|_p``: how far the training-time
   latent is from the one inference uses (:func:`discrete_gap`).
2. **Entropy-estimation gap** (Eq. 4), ``G_EE = dist(P_y~(y~ = i) || int_B Q_y^(y^) dy^)``,
   estimated in Section 5.2 as ``G^_EE = E W1(P(y~), N(mu_y, sigma_y))`` with samples
   ``y' = mu_y + delta * sigma_y``, ``delta ~ N(0, I)`` (:func:`entropy_estimation_gap`).
   :func:`rate_gap_bits` gives a second, rate-based view of the same gap: the rate the
   model estimates in training against the rate of the rounded latent.
3. **Local smoothness gap** (Eq. 5), ``LSS = E_D[(L(y^ + xi) - L(y^)) / xi]`` with ``xi``
   added *after* the quantisation approximation (:func:`local_smoothness_score`).

All functions return 0-dim tensors on the device of their inputs and accept any shape
(``B x C x H x W`` latents in practice); a batch is one sample of the paper's
expectations, so averaging the returned values over batches gives the paper's estimates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "discrete_gap",
    "entropy_estimation_gap",
    "local_smoothness_score",
    "rate_gap_bits",
    "wasserstein_1d",
]


def _floating(x: Tensor) -> Tensor:
    """``x`` as a floating tensor (at least float32; float64 stays float64)."""
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _standard_normal(
    like: Tensor, generator: torch.Generator | None, dtype: torch.dtype | None = None
) -> Tensor:
    """``delta ~ N(0, I)`` of the shape of ``like``, drawn on the generator's device.

    A CPU generator (the usual, reproducible choice) can drive CUDA tensors: the sample is
    drawn where the generator lives and moved to ``like``'s device.
    """
    dtype = dtype or _floating(like).dtype
    device = generator.device if generator is not None else like.device
    sample = torch.randn(like.shape, generator=generator, device=device, dtype=dtype)
    return sample.to(like.device)


def discrete_gap(hard: Tensor, approx: Tensor, p: float = 1.0) -> Tensor:
    """Discrete gap ``G_d`` (Pan et al., Eq. 1-3), as the per-element mean ``|R(y) - Q(y)|^p``.

    The paper defines ``GAP = R(y) - Q(y)`` (Eq. 1) and ``G_d = sum |R(y) - Q(y)|_p``
    (Eq. 3), with ``R(y) = y~`` the rounded latent and ``Q(y) = y^`` the training
    approximation. A sum grows with the number of elements, so this returns the **mean**
    over all elements of ``|R(y) - Q(y)|^p`` instead (no ``1/p`` root), which is comparable
    across image sizes, batch sizes and latent widths; multiply by ``hard.numel()`` for the
    sum, and take the ``1/p`` power of the mean for an RMS-like norm.

    Reference values: the straight-through estimator has ``Q(y) = R(y)`` in the forward pass,
    so ``G_d = 0``. Uniform noise ``Q(y) = y + u``, ``u ~ U(-1/2, 1/2)``, on a latent that
    is already integer gives ``E|u| = 1/4`` for ``p = 1`` and ``E u^2 = 1/12`` for ``p = 2``.

    Args:
        hard: ``R(y)``, the rounded latent inference uses.
        approx: ``Q(y)``, the training approximation; same shape as ``hard``.
        p: exponent, ``> 0``.

    Returns:
        0-dim tensor ``mean(|hard - approx|^p)``.
    """
    if hard.shape != approx.shape:
        raise ValueError(f"shapes differ: hard {tuple(hard.shape)}, approx {tuple(approx.shape)}")
    if p <= 0:
        raise ValueError(f"p must be > 0, got {p}")
    if hard.numel() == 0:
        raise ValueError("empty tensors have no discrete gap")
    difference = (_floating(hard) - _floating(approx)).abs()
    if p != 1.0:
        difference = difference.pow(p)
    return difference.mean()


def wasserstein_1d(a: Tensor, b: Tensor) -> Tensor:
    """Exact 1-Wasserstein distance between the empirical distributions of two samples.

    Both tensors are flattened: each element is one sample of a 1-D distribution with
    weight ``1/n`` (``a``) or ``1/m`` (``b``). In one dimension
    ``W1 = int_0^1 |F_a^-1(t) - F_b^-1(t)| dt``, with ``F^-1`` the quantile functions.

    - **Equal sizes** (``n == m``): the quantile functions are step functions on the same
      grid ``k/n``, so ``W1 = mean_k |a_(k) - b_(k)|`` over the sorted samples.
    - **Different sizes**: quantile matching on the common grid, the union of the
      breakpoints ``{i/n}`` and ``{j/m}``. Both quantile functions are constant between
      consecutive grid points ``t_{k-1} < t_k``, so
      ``W1 = sum_k (t_k - t_{k-1}) |a_(floor(n t)) - b_(floor(m t))|`` with ``t`` the
      segment's midpoint; this is exact (not an approximation), costs ``O((n + m) log(n+m))``
      and reduces to the equal-size formula when ``n == m``. The grid is built in integer
      units of ``1/(n m)``, so no rounding error misplaces a breakpoint.

    Identical samples give 0; shifting every sample of one side by ``c`` gives ``|c|``.

    Args:
        a: samples of the first distribution (any shape, non-empty).
        b: samples of the second distribution (any shape, non-empty).

    Returns:
        0-dim tensor on ``a``'s device, in the promoted floating dtype of the inputs.
    """
    a = _floating(a).detach().flatten()
    b = _floating(b).detach().flatten().to(a.device)
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("W1 needs at least one sample on each side")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a_sorted = torch.sort(a.to(dtype)).values
    b_sorted = torch.sort(b.to(dtype)).values
    n, m = a_sorted.numel(), b_sorted.numel()
    if n == m:
        return (a_sorted - b_sorted).abs().mean()
    # Breakpoints i/n = i*m/(n*m) and j/m = j*n/(n*m), as integers in units of 1/(n*m).
    device = a_sorted.device
    grid = torch.cat(
        (
            torch.arange(n + 1, device=device, dtype=torch.int64) * m,
            torch.arange(1, m, device=device, dtype=torch.int64) * n,
        )
    )
    grid = torch.sort(grid).values
    left, right = grid[:-1], grid[1:]
    # Segment midpoint (left + right) / 2, in units of 1/(2 n m): index floor(t n) of a.
    twice_mid = left + right
    index_a = torch.div(twice_mid, 2 * m, rounding_mode="floor").clamp_max(n - 1)
    index_b = torch.div(twice_mid, 2 * n, rounding_mode="floor").clamp_max(m - 1)
    widths = (right - left).to(dtype) / (n * m)
    return (widths * (a_sorted[index_a] - b_sorted[index_b]).abs()).sum()


def entropy_estimation_gap(
    rounded: Tensor,
    means: Tensor | None,
    scales: Tensor,
    generator: torch.Generator | None = None,
    scale_bound: float = 0.11,
) -> Tensor:
    """Estimated entropy-estimation gap ``G^_EE`` (Pan et al., Eq. 4 and Section 5.2).

    Eq. 4 defines ``G_EE = dist(P_y~(y~ = i) || int_B Q_y^(y^) dy^)``, the distance between
    the probability mass function of the rounded latent ``y~`` and the entropy model's
    continuous density ``Q_y^`` integrated over the quantisation bins ``B``. The paper
    estimates it (Section 5.2) as

        ``G^_EE = E_{y~ ~ P(y~), y' ~ N(mu_y, sigma_y)} Wasserstein(P(y~), N(mu_y, sigma_y))``

    with ``y' = mu_y + delta * sigma_y``, ``delta ~ N(0, I)`` (reparameterisation). This
    function computes one term of that expectation, for one batch: it draws one ``delta``
    of the latent's shape and returns the 1-D W1 distance (:func:`wasserstein_1d`) between
    the **pooled** empirical distribution of all elements of ``rounded`` and that of all
    elements of ``y'``. Pooling compares distributions, not elements: the pairing of an
    element with its own ``mu, sigma`` only enters through the mixture ``y'`` is drawn
    from. Averaging the values of many batches gives ``G^_EE``.

    Reference values: a latent that is itself drawn from ``N(mu, sigma)`` (i.e. one the
    entropy model describes exactly) gives a value that goes to 0 as the number of elements
    grows; ``rounded = mu + c`` with ``sigma -> 0`` gives ``|c|``.

    Args:
        rounded: ``y~``, the rounded latent (e.g. ``round(y - mu) + mu``).
        means: ``mu_y``, broadcastable to ``rounded``; ``None`` for a zero-mean model.
        scales: ``sigma_y``, broadcastable to ``rounded``.
        generator: random generator for ``delta`` (may live on the CPU for CUDA inputs).
        scale_bound: lower bound of ``sigma``, applied as ``max(sigma, scale_bound)`` as
            CompressAI's ``GaussianConditional`` does (default 0.11); 0 disables it.

    Returns:
        0-dim tensor, the W1 distance of this batch.
    """
    rounded = _floating(rounded).detach()
    sigma = _floating(scales).detach().to(rounded.device)
    if scale_bound > 0:
        sigma = sigma.clamp_min(scale_bound)
    sigma = torch.broadcast_to(sigma, rounded.shape)
    delta = _standard_normal(rounded, generator, dtype=sigma.dtype)
    samples = delta * sigma
    if means is not None:
        samples = samples + torch.broadcast_to(_floating(means).detach(), rounded.shape)
    return wasserstein_1d(rounded, samples)


def rate_gap_bits(train_likelihoods: Tensor, hard_likelihoods: Tensor, num_pixels: int) -> Tensor:
    """Rate view of the entropy-estimation gap: training rate estimate minus real rate (bpp).

    ``(sum -log2 p_train - sum -log2 p_hard) / num_pixels``, where ``p_train`` are the
    likelihoods the entropy model assigns in training (to ``Q(y)``, e.g. ``y + u``: the rate
    term ``L_R`` the optimiser sees) and ``p_hard`` those of the rounded latent ``y~`` (the
    rate an entropy coder actually spends, up to the coder's overhead).

    Sign convention: **positive** means the training estimate is *above* the real rate
    (training over-estimates the rate), **negative** means it is below (training
    under-estimates it, as when the model learns to exploit the continuous relaxation).

    Likelihoods are clamped below at the smallest normal number of their dtype only to keep
    ``log2(0)`` finite; CompressAI already bounds them at ``1e-9``, which this leaves intact.
    The two tensors need not have the same shape (only their sums enter).

    Args:
        train_likelihoods: element-wise likelihoods in training.
        hard_likelihoods: element-wise likelihoods of the rounded latent.
        num_pixels: pixels of the images the latent codes, ``B * H * W``.

    Returns:
        0-dim tensor, bits per pixel.
    """
    if num_pixels <= 0:
        raise ValueError(f"num_pixels must be > 0, got {num_pixels}")

    def bits(likelihoods: Tensor) -> Tensor:
        likelihoods = _floating(likelihoods).detach()
        tiny = torch.finfo(likelihoods.dtype).tiny
        return -torch.log2(likelihoods.clamp_min(tiny)).sum()

    train_bits = bits(train_likelihoods)
    hard_bits = bits(hard_likelihoods).to(train_bits.device)
    return (train_bits - hard_bits) / num_pixels


def local_smoothness_score(
    loss_fn: Callable[[Tensor], Tensor],
    y_hat: Tensor,
    scale: float = 0.5,
    samples: int = 4,
    generator: torch.Generator | None = None,
    *,
    absolute: bool = False,
) -> Tensor:
    """Monte-Carlo Local Smoothness Score (Pan et al., Section 3.3, Eq. 5).

    ``LSS = E_D[(L(y^ + xi) - L(y^)) / |xi|]``: the finite-difference slope of the
    rate-distortion loss ``L = L_D + lambda L_R`` around ``y^ = Q(y)``, the latent *after*
    the quantisation approximation, under a random perturbation ``xi``. Definitions chosen
    here (the paper leaves them open):

    - ``xi ~ N(0, scale^2 I)``: i.i.d. Gaussian of standard deviation ``scale`` for every
      element, of the shape of ``y_hat`` (the whole batch is perturbed at once);
    - ``|xi| = ||xi||_2``: the Euclidean norm of the perturbation over the whole tensor;
    - the score is **signed**, as Eq. 5 is written: ``absolute=True`` takes
      ``|L(y^ + xi) - L(y^)|`` instead, a Monte-Carlo local Lipschitz estimate.

    ``L`` is evaluated under ``torch.no_grad()``: ``L(y^)`` once and ``L(y^ + xi)`` once
    per sample, and the score is the mean over ``samples`` draws.

    Closed forms with ``n = y_hat.numel()`` and ``E||xi|| = scale * sqrt(2) *
    Gamma((n + 1) / 2) / Gamma(n / 2)`` (the mean of a chi distribution with ``n`` degrees
    of freedom): for ``L(y) = c ||y - y0||^2`` the score is ``c E||xi||`` at *any* ``y^``
    (the cross term ``2c <y^ - y0, xi>`` averages out); for a linear ``L(y) = <g, y>`` it is
    0, and with ``absolute=True`` it is ``||g|| E|u_1| = ||g|| Gamma(n/2) / (sqrt(pi)
    Gamma((n + 1)/2))`` (``u`` uniform on the unit sphere); a constant loss scores 0. For a
    smooth ``L`` and small ``scale`` the signed score is ``~ (E||xi|| / 2) tr(H) / n``,
    ``H`` the Hessian: it measures curvature, the first-order term cancelling.

    Args:
        loss_fn: ``L``, maps a tensor of ``y_hat``'s shape to a scalar (one-element) tensor.
        y_hat: ``y^ = Q(y)``, the latent after the quantisation approximation (detached).
        scale: standard deviation of each element of ``xi``, ``> 0``.
        samples: number of Monte-Carlo draws, ``>= 1``.
        generator: random generator for ``xi`` (may live on the CPU for CUDA inputs).
        absolute: use ``|L(y^ + xi) - L(y^)|`` (local Lipschitz estimate).

    Returns:
        0-dim tensor, the mean score over the draws.
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    y_hat = _floating(y_hat).detach()

    def loss(value: Tensor) -> Tensor:
        result = loss_fn(value)
        if result.numel() != 1:
            raise ValueError(f"loss_fn must return one value, got shape {tuple(result.shape)}")
        return _floating(result).reshape(())

    with torch.no_grad():
        base = loss(y_hat)
        total = torch.zeros((), dtype=base.dtype, device=base.device)
        for _ in range(samples):
            xi = _standard_normal(y_hat, generator) * scale
            norm = torch.linalg.vector_norm(xi).clamp_min(torch.finfo(xi.dtype).tiny)
            change = loss(y_hat + xi) - base
            if absolute:
                change = change.abs()
            total = total + change / norm.to(change.device, change.dtype)
    return total / samples
