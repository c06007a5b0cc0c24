"""The quantisation-strategy interface every backbone's latent coding calls.

A strategy decides, for a latent ``y`` and its entropy parameters (``EntropyParameters``:
the predicted scales and means, ``means=None`` for a zero-mean model), three things:

1. **What the rate term sees** (``QuantizedLatent.rate_input``): the value at which the
   entropy model's likelihood is evaluated in training (or the likelihoods themselves,
   ``QuantizedLatent.likelihoods``, for a strategy with its own pmfs).
2. **What the decoder sees** (``QuantizedLatent.decoder_input``): the value passed to
   ``g_s``, to ``h_s`` for the hyper latent, and to any context model.
3. **Its symbols** (``symbol_coding``, :mod:`licexp.quant.symbols`): how the hard
   inference path turns the coded latent into rANS symbols, their CDF tables and the
   reconstruction, and how the decoder rebuilds it; the real bitstream, the hard
   forward pass, the estimated bpp and the gap metrics all go through it. The default is
   scalar rounding around the mean, ``round(v - mu) + mu``.

Strategies work on the *coded variable* ``v = to_coded(y)`` and map back with
``from_coded``. The three extension points later strategies need are part of the
interface from the start:

- **Wrapping modules** (Soft-STE's spectral normalisation of the encoder ``g_a``):
  ``attach(codec)`` is called once by the backbone after it is built and may replace or
  re-parametrise any of its modules.
- **The rate as a function of the latent** (Soft-STE's FGSM dequantisation,
  ``xi = eps * sign(d rate / d y_hat)``): ``quantize_train`` receives
  ``likelihood_fn``, the entropy model's element-wise likelihood of a coded value with the
  entropy parameters held fixed, so a strategy can differentiate the rate w.r.t. its
  input.
- **A change of the coded variable's domain** (the Fourier QECM of Jiang et al., which
  codes ``y_qc = y - s(y)`` and decodes ``y_qc_hat + s(y_qc_hat + dn)``):
  ``to_coded`` / ``from_coded`` map between the latent and the coded domain, for ``y`` and
  for the hyper latent ``z`` alike; ``from_coded`` is told whether it runs in training or
  at inference, where it must be deterministic so that the decoder reproduces it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from licexp.quant.symbols import EntropyParameters, ScalarSymbols, SymbolCoding

LikelihoodFunction = Callable[[Tensor], Tensor]
"""Element-wise likelihood of a coded value under the entropy model (parameters fixed)."""


class QuantizedLatent(NamedTuple):
    """A training-time quantisation approximation of one latent tensor."""

    rate_input: Tensor
    """Coded-domain value at which the likelihood (the rate term) is evaluated."""
    decoder_input: Tensor
    """Coded-domain value handed on (through ``from_coded``) to the decoder side."""
    likelihoods: Tensor | None = None
    """The rate term's likelihoods, for a strategy whose pmfs are not the Gaussian's mass
    over ``[v - 1/2, v + 1/2]``; ``None``: that mass at ``rate_input``."""


def straight_through_round(x: Tensor) -> Tensor:
    """``round(x)`` in the forward pass with the identity gradient (Bengio et al., 2013)."""
    return x + (torch.round(x) - x).detach()


def straight_through_round_around(x: Tensor, offset: Tensor | None) -> Tensor:
    """``round(x - offset) + offset`` forward, identity gradient; ``round(x)`` without offset."""
    if offset is None:
        return straight_through_round(x)
    return straight_through_round(x - offset) + offset


def uniform_noise_like(x: Tensor) -> Tensor:
    """Samples ``u ~ U(-1/2, 1/2)`` of the shape of ``x``: Balle et al.'s proxy of rounding."""
    return torch.empty_like(x).uniform_(-0.5, 0.5)


def additive_uniform_noise(coded: Tensor) -> QuantizedLatent:
    """Balle et al.'s training proxy ``v + u``, ``u ~ U(-1/2, 1/2)``, for rate and decoder alike."""
    noisy = coded + uniform_noise_like(coded)
    return QuantizedLatent(rate_input=noisy, decoder_input=noisy)


class QuantizationStrategy(nn.Module, ABC):
    """How a latent is quantised in training and at inference (see the module docstring)."""

    @property
    def symbol_coding(self) -> SymbolCoding:
        """The hard path's symbols: rounding around the predicted mean by default."""
        return ScalarSymbols(centred=True)

    def attach(self, codec: nn.Module) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called once by the backbone after construction; may wrap the codec's modules."""

    def calibrate(self, codec: nn.Module) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called with the codec when it is prepared for coding and when a training run
        starts; may measure what the strategy needs of the model (TCQ's channel weights)."""

    def to_coded(self, latent: Tensor) -> Tensor:
        """Maps a latent into the domain of the coded variable (identity by default)."""
        return latent

    def from_coded(self, coded: Tensor, *, inference: bool) -> Tensor:
        """Maps a (quantised) coded value back to the latent the decoder sees.

        At inference (``inference=True``) the result must be a deterministic function of
        ``coded`` (and of state the decoder has), so that decoding a bitstream reproduces
        the encoder's reconstruction exactly.
        """
        del inference
        return coded

    @abstractmethod
    def quantize_train(
        self, coded: Tensor, parameters: EntropyParameters, likelihood_fn: LikelihoodFunction
    ) -> QuantizedLatent:
        """Training-time approximation of quantising the conditionally coded latent."""

    def quantize_hyper_train(self, coded: Tensor, median: Tensor) -> QuantizedLatent:
        """Training-time approximation for the factorised hyper latent ``z``.

        CompressAI's convention: the rate sees ``z + u``, ``u ~ U(-1/2, 1/2)``, and
        ``h_s`` sees the median-centred straight-through rounding
        ``STE(z - median) + median``.
        """
        median = median.detach()
        return QuantizedLatent(
            rate_input=coded + uniform_noise_like(coded),
            decoder_input=straight_through_round(coded - median) + median,
        )
