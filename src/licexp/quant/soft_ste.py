"""Soft-STE quantisation with dequantisation and a spectrally normalised encoder (Pan et al.).

Pan, Finlay, Besenbruch and Knottenbelt, "Three Gaps for Quantisation in Learned Image
Compression" (2021), Section 4. The decoder sees the straight-through rounding
``y_hat = STE(y)``, which closes the discrete gap; only the rate term sees a *dequantised*
latent ``y_hat + xi`` (Eq. 6), which keeps the entropy model from collapsing onto point
masses (the entropy estimation gap)::

    L = E[-log p(x | y_hat)] + lambda * E[-log P(y_hat + xi)],   y_hat = STE(y)
      = round(y - mu) + mu  (identity gradient)

The perturbation ``xi`` is uniform or Gaussian noise, or, as in the paper's results, the
adversarial FGSM perturbation ``xi = epsilon * sign(grad_{y_hat} L_R*)`` where ``L_R*`` is
the rate *without* dequantisation and ``epsilon = Var(U(-1/2, 1/2)) = 1/12``, which keeps
``xi`` inside the quantisation bin. Spectral normalisation (Miyato et al., 2018) of every
convolution of the encoder ``g_a`` constrains the local Lipschitz constant (the local
smoothness gap): the rate's gradient only reaches the encoder.

With ``dequantization="none"`` the rate sees ``y_hat`` as well, i.e. plain STE; together
with ``spectral_norm=True`` this is the paper's "STE SN" model of Figure 4.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from licexp.quant.base import (
    LikelihoodFunction,
    QuantizationStrategy,
    QuantizedLatent,
    straight_through_round_around,
    uniform_noise_like,
)
from licexp.quant.symbols import EntropyParameters

DEQUANTIZATIONS = ("none", "uniform", "gaussian", "fgsm")
"""The perturbations ``xi`` the rate term may see."""

CONVOLUTIONS = (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d)
"""The layers spectral normalisation wraps."""


def spectral_normalize_convolutions(module: nn.Module, n_power_iterations: int = 1) -> int:
    """Re-parametrises every ``Conv2d`` / ``ConvTranspose2d`` / ``Conv3d`` of ``module`` as
    ``W / sigma(W)``.

    ``sigma(W)`` is the largest singular value of the weight reshaped to a matrix with the
    output channels as rows (``dim=0`` for a convolution, ``dim=1`` for a transposed one,
    whose weight is ``[in, out, k, k]``), estimated by ``n_power_iterations`` steps of the
    power method per training forward pass (Miyato et al., 2018; PyTorch's
    ``parametrizations.spectral_norm``). Convolutions already parametrised are left alone.
    Returns the number of convolutions wrapped.
    """
    wrapped = 0
    for child in module.modules():
        if not isinstance(child, CONVOLUTIONS):
            continue
        if parametrize.is_parametrized(child, "weight"):
            continue
        dim = 1 if isinstance(child, nn.ConvTranspose2d) else 0
        spectral_norm(child, n_power_iterations=n_power_iterations, dim=dim)
        wrapped += 1
    return wrapped


def rate_gradient_sign(y_hat: Tensor, likelihood_fn: LikelihoodFunction) -> Tensor:
    """``sign(d L_R / d y_hat)`` with ``L_R = sum -log2 likelihood_fn(y_hat)`` (FGSM's direction).

    The gradient is taken with ``torch.autograd.grad`` on a detached copy of ``y_hat``, so
    the training graph is untouched and the result is a constant; grad mode is switched on
    locally, so it works inside ``no_grad`` too (a callback measuring the training
    approximation during validation). Tensors made under ``torch.inference_mode`` cannot
    enter autograd at all: such a caller must run the codec outside inference mode.
    """
    with torch.enable_grad():
        probe = y_hat.detach().clone().requires_grad_(True)
        rate = -torch.log2(likelihood_fn(probe)).sum()
        (gradient,) = torch.autograd.grad(rate, probe)
    return torch.sign(gradient)


class SoftSTEQuantization(QuantizationStrategy):
    """Soft-STE: the decoder sees ``STE(y)``, the rate sees ``STE(y) + xi`` (Pan et al., Eq. 6).

    Args:
        dequantization: the perturbation ``xi`` of the rate term: ``"fgsm"`` (the paper's
            choice) ``xi = epsilon * sign(d L_R / d y_hat)`` at ``y_hat = STE(y)`` with
            ``L_R = sum -log2 P(y_hat)``; ``"uniform"`` ``xi ~ U(-1/2, 1/2)``;
            ``"gaussian"`` ``xi ~ N(0, noise_scale^2)``; ``"none"`` ``xi = 0`` (plain STE).
        epsilon: FGSM step, ``Var(U(-1/2, 1/2)) = 1/12`` in the paper; ``|xi| = epsilon``
            wherever the rate's gradient is non-zero. Must lie in ``[0, 1/2)`` so that
            ``xi`` stays inside the quantisation bin.
        noise_scale: standard deviation ``s`` of the Gaussian dequantisation. The paper
            gives none; the default ``sqrt(1/12)`` gives the Gaussian the variance of
            ``U(-1/2, 1/2)``, so that "uniform" and "gaussian" perturb the rate equally
            strongly.
        spectral_norm: spectrally normalise every convolution of the encoder ``g_a`` (and
            of no other transform) when attached to a codec.

    At inference the latent is ``round(y - mu) + mu``, the forward value of STE, and the
    hyper latent ``z`` keeps the base class's treatment. Where ``y_hat`` sits on the mode
    of a symmetric entropy model (e.g. ``y_hat = mu`` under a Gaussian) the rate is
    stationary, its gradient is zero and so is the FGSM perturbation.
    """

    def __init__(
        self,
        dequantization: str = "fgsm",
        epsilon: float = 1 / 12,
        noise_scale: float = math.sqrt(1 / 12),
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        if dequantization not in DEQUANTIZATIONS:
            raise ValueError(
                f"dequantization must be one of {DEQUANTIZATIONS}, got {dequantization!r}"
            )
        if not 0 <= epsilon < 0.5:
            raise ValueError(f"epsilon must lie in [0, 1/2) to stay in the bin, got {epsilon}")
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        self.dequantization = dequantization
        self.epsilon = epsilon
        self.noise_scale = noise_scale
        self.spectral_norm = spectral_norm

    def attach(self, codec: nn.Module) -> None:
        """Spectrally normalises the convolutions of ``codec.g_a`` when enabled."""
        if not self.spectral_norm:
            return
        encoder = getattr(codec, "g_a", None)
        if not isinstance(encoder, nn.Module):
            raise ValueError(
                f"spectral_norm needs a codec with an encoder module g_a; "
                f"{type(codec).__name__} has none"
            )
        if not any(isinstance(m, CONVOLUTIONS) for m in encoder.modules()):
            raise ValueError(f"{type(codec).__name__}.g_a has no convolution to normalise")
        spectral_normalize_convolutions(encoder)

    def quantize_train(
        self, coded: Tensor, parameters: EntropyParameters, likelihood_fn: LikelihoodFunction
    ) -> QuantizedLatent:
        y_hat = straight_through_round_around(coded, parameters.means)
        if self.dequantization == "none":
            return QuantizedLatent(rate_input=y_hat, decoder_input=y_hat)
        xi = self.perturbation(y_hat, likelihood_fn)
        return QuantizedLatent(rate_input=y_hat + xi, decoder_input=y_hat)

    def perturbation(self, y_hat: Tensor, likelihood_fn: LikelihoodFunction) -> Tensor:
        """The dequantisation ``xi`` for ``y_hat = STE(y)``: a constant (no gradient)."""
        if self.dequantization == "uniform":
            return uniform_noise_like(y_hat)
        if self.dequantization == "gaussian":
            return torch.randn_like(y_hat) * self.noise_scale
        if self.dequantization == "fgsm":
            return self.epsilon * rate_gradient_sign(y_hat, likelihood_fn)
        return torch.zeros_like(y_hat)

    def extra_repr(self) -> str:
        return (
            f"dequantization={self.dequantization!r}, epsilon={self.epsilon}, "
            f"noise_scale={self.noise_scale}, spectral_norm={self.spectral_norm}"
        )
