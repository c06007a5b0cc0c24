"""Fourier-series quantisation error compensation with Laplace noise (QECM, Jiang et al.).

Jiang, Yuan, Li, Hamzaoui, Wang and Huo, "Interleaved Block-based Learned Image Compression
with Feature Enhancement and Quantization Error Compensation", Section III-E (extending
their ICIP 2023 paper). The quantisation error ``Q_err(y) = y - round(y)`` (Eq. 6) is a
period-1 sawtooth, approximated by the truncated Fourier series ``s(y)`` (Eqs. 7-8). The
coded variable is the compensated latent (Eqs. 10-11)::

    y_qc = y - s(y),                 z_qc = z - s(z)

training adds uniform noise to it, ``y_tilde_qc = y_qc + u``, and the decoder side maps
back (Eqs. 12-13)::

    y_tilde = y_tilde_qc + s(y_tilde_qc)

At test time the quantised coded value is dithered by Laplace noise inside the sawtooth
(Eqs. 14-15)::

    y_hat = y_hat_qc + s(y_hat_qc + dn),   dn ~ Laplace(mu, b) limited to (-1/2, 1/2)

The paper prints ``s(y) = (1/pi) sum_n (-1)^(n+1) sin(n y) / n``, the series of the
period-``2 pi`` sawtooth ``y / 2``; the period-1 sawtooth equal to ``y - round(y)`` needs
``sin(2 pi n y)`` (see :func:`fourier_sawtooth`). The paper uses 5 harmonics and gives no
values of ``mu`` and ``b``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from licexp.quant.base import (
    LikelihoodFunction,
    QuantizationStrategy,
    QuantizedLatent,
    additive_uniform_noise,
)
from licexp.quant.symbols import EntropyParameters


def fourier_sawtooth(x: Tensor, harmonics: int = 5) -> Tensor:
    """The ``K = harmonics``-term Fourier series of the quantisation error ``x - round(x)``.

    ``s_K(x) = sum_{n=1}^{K} (-1)^(n+1) sin(2 pi n x) / (pi n)``: the Fourier coefficients of
    the period-1 sawtooth equal to ``x`` on ``(-1/2, 1/2)`` are ``b_n = 2 int_{-1/2}^{1/2}
    x sin(2 pi n x) dx = (-1)^(n+1) / (pi n)``. ``s_K`` is odd, has period 1, vanishes at
    integers and half-integers, and converges to ``x - round(x)`` away from the jumps at
    half-integers as ``K`` grows (Gibbs overshoot next to them). The argument is first
    reduced to ``x - round(x)``, exact in floating point, so that ``sin`` sees at most
    ``pi K`` in magnitude; the gradient is unchanged (``s_K`` has period 1). ``K = 0`` gives 0.
    """
    if harmonics < 0:
        raise ValueError(f"harmonics must be >= 0, got {harmonics}")
    phase = x - torch.round(x)
    total = torch.zeros_like(x)
    for n in range(1, harmonics + 1):
        sign = 1.0 if n % 2 else -1.0
        total = total + (sign / (math.pi * n)) * torch.sin((2 * math.pi * n) * phase)
    return total


def truncated_laplace(
    shape: tuple[int, ...] | torch.Size,
    loc: float,
    scale: float,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    low: float = -0.5,
    high: float = 0.5,
) -> Tensor:
    """Samples ``Laplace(loc, scale)`` truncated to the open interval ``(low, high)``, on CPU.

    Inverse-CDF sampling: ``p ~ U(F(low), F(high))`` and ``x = F^-1(p)`` with the Laplace
    CDF ``F(x) = exp((x - loc) / scale) / 2`` below ``loc`` and ``1 - exp(-(x - loc) /
    scale) / 2`` above it, computed in float64; the result is cast to ``dtype`` and kept
    strictly inside ``(low, high)`` (a measure-zero correction at the ends).
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if not low < high:
        raise ValueError(f"need low < high, got ({low}, {high})")

    def cdf(value: float) -> float:
        if value < loc:
            return 0.5 * math.exp((value - loc) / scale)
        return 1.0 - 0.5 * math.exp(-(value - loc) / scale)

    lower, upper = cdf(low), cdf(high)
    if not upper > lower:
        raise ValueError(f"Laplace({loc}, {scale}) has no mass left on ({low}, {high})")
    p = lower + (upper - lower) * torch.rand(shape, generator=generator, dtype=torch.float64)
    below = p < 0.5
    samples = torch.where(
        below,
        loc + scale * torch.log(2 * p.clamp_min(torch.finfo(torch.float64).tiny)),
        loc - scale * torch.log(2 * (1 - p)),
    ).to(dtype)
    inside_low = torch.nextafter(torch.tensor(low, dtype=dtype), torch.tensor(high, dtype=dtype))
    inside_high = torch.nextafter(torch.tensor(high, dtype=dtype), torch.tensor(low, dtype=dtype))
    return samples.clamp(inside_low, inside_high)


class FourierQECMQuantization(QuantizationStrategy):
    """QECM: codes ``y_qc = y - s(y)``, decodes ``y_hat_qc + s(y_hat_qc + dn)`` (Jiang et al.).

    Args:
        harmonics: the number ``K`` of terms of :func:`fourier_sawtooth` (5 in the paper).
        laplace_mu: location ``mu`` of the test-time noise ``dn``; must lie in ``(-1/2, 1/2)``.
        laplace_b: scale ``b`` of ``dn``. The paper gives no value; the default 0.1 is our
            choice (a noise concentrated well inside the bin: before truncation its
            standard deviation is ``sqrt(2) b ~ 0.14`` against ``sqrt(1/12) ~ 0.29`` of
            ``U(-1/2, 1/2)``).
        noise_seed: seed of the test-time noise. Every inference-time :meth:`from_coded`
            call draws ``dn`` afresh from a ``torch.Generator`` seeded with it, so the hard
            forward pass, ``compress`` and ``decompress`` draw the same ``dn`` and the
            decoder reproduces it from the configuration alone.

    Training (``quantize_train``): the rate and the decoder see ``y_qc + u``,
    ``u ~ U(-1/2, 1/2)``; the decoder side maps back with ``v + s(v)``. The hyper latent
    ``z`` is coded as ``z_qc`` too (``to_coded`` is applied to both), with the base class's
    training approximation. Inference quantises ``round(y_qc - mu) + mu``.

    ``dn`` is drawn for one item of the batch (shape ``coded.shape[1:]``) and shared by
    every item, so an image decodes to the same reconstruction whether it was coded alone
    or in a batch.
    """

    def __init__(
        self,
        harmonics: int = 5,
        laplace_mu: float = 0.0,
        laplace_b: float = 0.1,
        noise_seed: int = 0,
    ) -> None:
        super().__init__()
        if harmonics < 0:
            raise ValueError(f"harmonics must be >= 0, got {harmonics}")
        if not -0.5 < laplace_mu < 0.5:
            raise ValueError(f"laplace_mu must lie in (-1/2, 1/2), got {laplace_mu}")
        if laplace_b <= 0:
            raise ValueError(f"laplace_b must be > 0, got {laplace_b}")
        self.harmonics = harmonics
        self.laplace_mu = laplace_mu
        self.laplace_b = laplace_b
        self.noise_seed = noise_seed

    def sawtooth(self, x: Tensor) -> Tensor:
        """``s(x)`` with this strategy's number of harmonics."""
        return fourier_sawtooth(x, self.harmonics)

    def to_coded(self, latent: Tensor) -> Tensor:
        """``y_qc = y - s(y)`` (Eqs. 10-11)."""
        return latent - self.sawtooth(latent)

    def from_coded(self, coded: Tensor, *, inference: bool) -> Tensor:
        """``v + s(v)`` in training (Eqs. 12-13), ``v + s(v + dn)`` at inference (Eqs. 14-15)."""
        if not inference:
            return coded + self.sawtooth(coded)
        return coded + self.sawtooth(coded + self.laplace_noise_like(coded))

    def laplace_noise_like(self, coded: Tensor) -> Tensor:
        """The test-time noise ``dn`` for ``coded``: the same for every call with its shape."""
        sample_shape = coded.shape[1:] if coded.dim() > 1 else coded.shape
        generator = torch.Generator().manual_seed(self.noise_seed)
        noise = truncated_laplace(
            sample_shape,
            self.laplace_mu,
            self.laplace_b,
            generator=generator,
            dtype=coded.dtype,
        )
        return noise.to(coded.device)

    def quantize_train(
        self, coded: Tensor, parameters: EntropyParameters, likelihood_fn: LikelihoodFunction
    ) -> QuantizedLatent:
        """``y_tilde_qc = y_qc + u``, ``u ~ U(-1/2, 1/2)``, for the rate and the decoder."""
        del parameters, likelihood_fn
        return additive_uniform_noise(coded)

    def extra_repr(self) -> str:
        return (
            f"harmonics={self.harmonics}, laplace_mu={self.laplace_mu}, "
            f"laplace_b={self.laplace_b}, noise_seed={self.noise_seed}"
        )
