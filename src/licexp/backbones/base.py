"""What every backbone provides: a forward pass for training and metrics, and real coding."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel
from compressai.models.utils import update_registered_buffers
from torch import Tensor, nn

from licexp.backbones.latent_coders import GaussianLatentCoder, HardLatent, SymbolTableConditional
from licexp.quant import EntropyParameters, QuantizationStrategy


@dataclass
class CodecOutput:
    """The result of a backbone's forward pass.

    ``likelihoods`` maps each coded latent (``"y"``, ``"z"``) to its element-wise
    likelihoods; ``latents`` holds the tensors the metrics need: ``y`` and ``z`` before
    quantisation, ``y_hat`` (what the decoder saw), ``y_rate`` (what the rate saw, in the
    coded domain), ``means`` and ``scales`` of the conditional Gaussian. ``features`` holds
    what a feature loss compares (Jiang et al.: ``refined`` and ``enhanced``), else nothing.
    """

    x_hat: Tensor
    likelihoods: dict[str, Tensor]
    latents: dict[str, Tensor] = field(default_factory=dict)
    features: dict[str, Tensor] = field(default_factory=dict)

    def detach(self) -> CodecOutput:
        """A copy cut from the autograd graph (sharing storage)."""
        return CodecOutput(
            self.x_hat.detach(),
            {name: value.detach() for name, value in self.likelihoods.items()},
            {name: value.detach() for name, value in self.latents.items()},
            {name: value.detach() for name, value in self.features.items()},
        )


@dataclass
class EncoderSide:
    """What the encoder computed beside its strings; never written to a bitstream.

    The eval-mode forward pass computes the same hard path, so an evaluation checks a
    decode and reads the estimated rate from here instead of running the codec again.
    """

    y_hat: Tensor
    """The decoder-side latent (``g_s``'s input): a decode must rebuild it exactly."""
    bits: Tensor
    """``[B]``: the rate ``sum(-log2 p)`` the entropy model estimates for each image's
    coded symbols, every latent together."""


def estimated_bits(*likelihoods: Tensor) -> Tensor:
    """``[B]``: ``sum(-log2 p)`` per image over the element-wise likelihoods given."""
    return sum(-torch.log2(part).flatten(1).sum(1) for part in likelihoods)


@dataclass
class Bitstreams:
    """The strings of every coded latent of a batch, and the shape the decoder starts from."""

    strings: dict[str, list[bytes]]
    """Latent name -> one string per image of the batch, in decoding order."""
    latent_size: tuple[int, int]
    """Spatial size of the first-decoded latent (the hyper latent ``z``)."""
    encoder_side: EncoderSide | None = field(default=None, compare=False, repr=False)
    """What ``compress`` computed on the way (``None`` for bitstreams read from a file)."""


class LearnedCodec(CompressionModel):
    """Base class of the backbones: an auto-encoder whose latents are entropy coded.

    Subclasses build their transforms, then call :meth:`attach_quantizer` last so that a
    strategy may wrap the finished modules (e.g. spectral normalisation of ``g_a``).
    """

    downsampling_factor: int = 64
    """Input sides must be multiples of this; evaluation pads images to it."""

    hyper_latent_stride: int = 64
    """The hyper latent ``z`` is the (padded) image downsampled by this."""

    latent_names: tuple[str, ...] = ("z", "y")
    """The latents :meth:`compress` writes a string for, in decoding order."""

    searches_whole_latent: bool = True
    """Whether the strategy's search sees ``y`` whole (channels in dim 1), so that per-channel
    settings apply (``quant.channel_weights``); a context model's stages see slices."""

    module_roles: dict[str, tuple[str, ...]] = {}
    """Role -> module names, for training a part of the codec (``model.trainable``):
    ``synthesis`` (the decoder ``g_s``) and ``entropy_parameters`` (the hyper decoder and
    whatever else turns ``z_hat`` and decoded context into the means and scales)."""

    quantizer: QuantizationStrategy
    latent: GaussianLatentCoder

    def check_input(self, x: Tensor) -> None:
        """Raises a clear error unless ``x`` is ``[B, 3, H, W]`` with codable sides."""
        if x.dim() != 4 or x.size(1) != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        factor = self.downsampling_factor
        if height % factor or width % factor:
            raise ValueError(
                f"{type(self).__name__} needs sides divisible by {factor}, got {height}x{width}: "
                "crop training images to a multiple (data.train.size) or pad them "
                "(licexp.evaluation.codec.pad_to_multiple)"
            )

    def attach_quantizer(self, quantizer: QuantizationStrategy) -> None:
        """Registers the strategy and lets it wrap this codec's modules."""
        self.quantizer = quantizer
        quantizer.attach(self)

    def replace_quantizer(self, quantizer: QuantizationStrategy) -> None:
        """Codes with another strategy at inference, keeping the trained modules as they are.

        The new strategy's :meth:`~QuantizationStrategy.attach` is not called: a trained
        encoder keeps the parametrisation it was trained with (Soft-STE's spectral norm), and
        wrapping it anew would change what it computes. Call ``update(force=True)`` next to
        build the new strategy's CDF tables.
        """
        self.quantizer = quantizer

    def update(
        self, scale_table: Tensor | None = None, force: bool = False, update_quantiles: bool = False
    ) -> bool:
        """CompressAI's ``update``, building the CDF tables of the strategy's symbols."""
        for module in self.modules():
            if isinstance(module, SymbolTableConditional):
                module.coding = self.quantizer.symbol_coding
        return super().update(scale_table, force=force, update_quantiles=update_quantiles)

    def fit_quantiles(self) -> None:
        """Sets every ``EntropyBottleneck``'s quantiles to its learned density's own.

        The quantiles (the tails ``F(q) = tail_mass / 2``, ``1 - tail_mass / 2`` and the
        median) set the hyper latent coder's range and the offset ``z`` is rounded around.
        The aux loss fits them by gradient descent at lr 1e-3, far too slowly for short
        runs (the default run's aux loss fell only from 2630 to 2199 in 2000 steps);
        CompressAI's bisection (``update(update_quantiles=True)``) solves ``F(q) = target``
        directly, after which the aux loss is close to 0.
        """
        for module in self.modules():
            if isinstance(module, EntropyBottleneck):
                module.update(force=True, update_quantiles=True)

    def prepare_for_coding(self) -> None:
        """Eval mode, quantiles fitted (:meth:`fit_quantiles`), the strategy calibrated on
        this model (``QuantizationStrategy.calibrate``), its CDF tables built."""
        self.eval()
        self.fit_quantiles()
        self.quantizer.calibrate(self)
        self.update(force=True)

    def hard_latent(self, latents: dict[str, Tensor]) -> HardLatent:
        """The hard path of ``latents["y"]`` under the entropy parameters in ``latents``.

        For a hyperprior this is the eval-mode forward pass's own hard latent; for a context
        model it takes the parameters of the pass that made ``latents`` (in training, those
        of the training approximation's contexts).
        """
        parameters = EntropyParameters(latents["scales"], latents.get("means"))
        return self.latent.quantize_hard(latents["y"], parameters, self.quantizer)

    @abstractmethod
    def forward(self, x: Tensor) -> CodecOutput:
        """Training approximation in train mode; the hard-quantised pass in eval mode."""

    @abstractmethod
    def synthesize(self, y_hat: Tensor) -> Tensor:
        """``g_s``: the reconstruction from a decoder-side latent (for loss-surface probes)."""

    @abstractmethod
    def latent_likelihood(self, y_rate: Tensor, latents: dict[str, Tensor]) -> Tensor:
        """Likelihoods of a coded-domain ``y`` under the entropy parameters in ``latents``."""

    @abstractmethod
    def compress(self, x: Tensor) -> Bitstreams:
        """Entropy codes ``x`` (sides multiples of ``downsampling_factor``); the result
        carries its :class:`EncoderSide`."""

    @abstractmethod
    def decompress(self, bitstreams: Bitstreams) -> Tensor:
        """Decodes ``x_hat`` (unclamped) from the bitstreams."""


def check_channels(**channels: object) -> None:
    """Raises a clear error unless every channel count (``N=128``, ``M=192``) is a positive int."""
    for name, value in channels.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"backbone.{name} must be a positive integer, got {value!r}")


def resize_entropy_buffers(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Resizes the CDF buffers of every entropy model of ``model`` to those of ``state_dict``.

    ``update()`` gives the CDF tables their size only after training, so a plain
    ``load_state_dict`` of an updated checkpoint into a fresh model fails; CompressAI's
    ``CompressionModel.load_state_dict`` does this for a bare codec, and this function
    does the same for a codec nested in another module (the LightningModule).
    """
    buffers = {
        EntropyBottleneck: ["_quantized_cdf", "_offset", "_cdf_length"],
        GaussianConditional: ["_quantized_cdf", "_offset", "_cdf_length", "scale_table"],
    }
    for name, module in model.named_modules():
        for kind, names in buffers.items():
            if isinstance(module, kind) and any(k.startswith(f"{name}.") for k in state_dict):
                update_registered_buffers(module, name, names, dict(state_dict))
