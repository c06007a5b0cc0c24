"""Hyperprior backbones: Balle et al. (2018) scale hyperprior and its mean-scale variant.

Layers follow CompressAI's ``bmshj2018-hyperprior`` and ``mbt2018-mean`` models; the
mean-scale model without context is the architecture of Pan et al.'s three-gaps study.
"""

from __future__ import annotations

import torch
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from licexp.backbones.base import (
    Bitstreams,
    CodecOutput,
    EncoderSide,
    LearnedCodec,
    check_channels,
    estimated_bits,
)
from licexp.backbones.gdn import GDN
from licexp.backbones.latent_coders import GaussianLatentCoder, HyperLatentCoder
from licexp.quant import EntropyParameters, QuantizationStrategy


def gdn_analysis(N: int, M: int) -> nn.Sequential:
    """``g_a``: four stride-2 5x5 convolutions with GDN between them (Balle et al., 2018)."""
    return nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))


def gdn_synthesis(N: int, M: int) -> nn.Sequential:
    """``g_s``: four stride-2 5x5 transposed convolutions with inverse GDN between them."""
    return nn.Sequential(
        deconv(M, N),
        GDN(N, inverse=True),
        deconv(N, N),
        GDN(N, inverse=True),
        deconv(N, N),
        GDN(N, inverse=True),
        deconv(N, 3),
    )


def _in_layout(transform: nn.Module, x: Tensor, channels_last: bool) -> Tensor:
    """``transform(x)``, computed in the channels-last layout if asked; an NCHW result."""
    if not channels_last:
        return transform(x)
    return transform(x.contiguous(memory_format=torch.channels_last)).contiguous()


class HyperpriorCodec(LearnedCodec):
    """``x -> g_a -> y -> h_a -> z``; ``z_hat -> h_s -> (scales, means) -> p(y_hat | z_hat)``.

    Subclasses define ``h_a``, ``h_s``, what ``h_a`` reads (:meth:`hyper_analysis_input`)
    and how ``h_s``'s output splits into entropy parameters (:meth:`entropy_parameters`).

    ``channels_last_synthesis``: in eval mode ``g_s`` runs in the channels-last layout
    (decode at 0.56x CompressAI's time on CPU: BENCHMARKS.md, "Coding against CompressAI").
    Its 1x1 convolutions (GDN) then sum in another order, so the reconstruction differs from
    CompressAI's (NCHW) by float rounding (about 1e-7); the bytes do not change (``g_s``
    sees only decoded latents) and the eval forward pass and ``decompress`` agree exactly.
    ``False`` reproduces CompressAI's reconstruction bit for bit.

    ``channels_last_analysis`` (off by default): ``g_a`` likewise (encode at 0.65x instead
    of 0.90x CompressAI's time on CPU). Its sums round differently too, and ``y`` decides
    the symbols, so a latent within float rounding of a rounding boundary codes another
    symbol than CompressAI's model writes (1 of the 48 Kodak strings in BENCHMARKS.md).
    Decoding is unaffected: the decoder never runs ``g_a``.
    """

    module_roles = {"synthesis": ("g_s",), "entropy_parameters": ("h_s",)}

    def __init__(
        self,
        N: int,
        M: int,
        quantizer: QuantizationStrategy,
        channels_last_synthesis: bool = True,
        channels_last_analysis: bool = False,
    ) -> None:
        super().__init__()
        check_channels(N=N, M=M)
        self.N, self.M = N, M
        self.channels_last_synthesis = channels_last_synthesis
        self.channels_last_analysis = channels_last_analysis
        self.g_a = gdn_analysis(N, M)
        self.g_s = gdn_synthesis(N, M)
        self.h_a, self.h_s = self.hyper_transforms(N, M)
        self.hyper_latent = HyperLatentCoder(N)
        self.latent = GaussianLatentCoder()
        self.attach_quantizer(quantizer)

    def hyper_transforms(self, N: int, M: int) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def hyper_analysis_input(self, y: Tensor) -> Tensor:
        return y

    def entropy_parameters(self, hyper_output: Tensor) -> EntropyParameters:
        """The scales and means of ``y``; ``means`` is ``None`` for a zero-mean model."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> CodecOutput:
        self.check_input(x)
        y = self.analyze(x)
        z = self.h_a(self.hyper_analysis_input(y))
        z_coded = self.hyper_latent(z, self.quantizer)
        parameters = self.entropy_parameters(self.h_s(z_coded.decoder_input))
        y_coded = self.latent(y, parameters, self.quantizer)
        latents = {
            "y": y,
            "z": z,
            "y_hat": y_coded.decoder_input,
            "y_rate": y_coded.rate_input,
            "scales": parameters.scales,
        }
        if parameters.means is not None:
            latents["means"] = parameters.means
        return CodecOutput(
            x_hat=self.synthesize(y_coded.decoder_input),
            likelihoods={"y": y_coded.likelihoods, "z": z_coded.likelihoods},
            latents=latents,
        )

    def analyze(self, x: Tensor) -> Tensor:
        """``g_a``, in eval mode channels-last if ``channels_last_analysis``."""
        return _in_layout(self.g_a, x, not self.training and self.channels_last_analysis)

    def synthesize(self, y_hat: Tensor) -> Tensor:
        return _in_layout(self.g_s, y_hat, not self.training and self.channels_last_synthesis)

    def latent_likelihood(self, y_rate: Tensor, latents: dict[str, Tensor]) -> Tensor:
        return self.latent.likelihood(y_rate, latents["scales"], latents.get("means"))

    def compress(self, x: Tensor) -> Bitstreams:
        self.check_input(x)
        y = self.analyze(x)
        z = self.h_a(self.hyper_analysis_input(y))
        z_strings, z_coded = self.hyper_latent.compress(z, self.quantizer)
        parameters = self.entropy_parameters(self.h_s(z_coded.decoder_input))
        y_strings, y_coded = self.latent.compress(y, parameters, self.quantizer)
        return Bitstreams(
            {"z": z_strings, "y": y_strings},
            latent_size=tuple(z.shape[-2:]),
            encoder_side=EncoderSide(
                y_coded.decoder_input, estimated_bits(y_coded.likelihoods, z_coded.likelihoods)
            ),
        )

    def decompress(self, bitstreams: Bitstreams) -> Tensor:
        z_hat = self.hyper_latent.decompress(
            bitstreams.strings["z"], bitstreams.latent_size, self.quantizer
        )
        parameters = self.entropy_parameters(self.h_s(z_hat))
        y_hat = self.latent.decompress(bitstreams.strings["y"], parameters, self.quantizer)
        return self.synthesize(y_hat)


class ScaleHyperprior(HyperpriorCodec):
    """Balle et al. (2018), "Variational image compression with a scale hyperprior".

    ``z = h_a(|y|)``; ``h_s`` predicts the scales ``sigma`` of a zero-mean Gaussian.
    """

    def hyper_transforms(self, N: int, M: int) -> tuple[nn.Module, nn.Module]:
        h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3),
            nn.ReLU(inplace=True),
            conv(N, N),
            nn.ReLU(inplace=True),
            conv(N, N),
        )
        h_s = nn.Sequential(
            deconv(N, N),
            nn.ReLU(inplace=True),
            deconv(N, N),
            nn.ReLU(inplace=True),
            conv(N, M, stride=1, kernel_size=3),
            nn.ReLU(inplace=True),
        )
        return h_a, h_s

    def hyper_analysis_input(self, y: Tensor) -> Tensor:
        return y.abs()

    def entropy_parameters(self, hyper_output: Tensor) -> EntropyParameters:
        return EntropyParameters(hyper_output)


class MeanScaleHyperprior(HyperpriorCodec):
    """Minnen et al. (2018) mean-scale hyperprior without the autoregressive context.

    ``z = h_a(y)``; ``h_s`` predicts ``(sigma, mu)`` of ``p(y_hat | z_hat) = N(mu, sigma)``:
    the model Pan et al. use to compare quantisation approximations.
    """

    def hyper_transforms(self, N: int, M: int) -> tuple[nn.Module, nn.Module]:
        h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3),
            nn.LeakyReLU(inplace=True),
            conv(N, N),
            nn.LeakyReLU(inplace=True),
            conv(N, N),
        )
        h_s = nn.Sequential(
            deconv(N, M),
            nn.LeakyReLU(inplace=True),
            deconv(M, M * 3 // 2),
            nn.LeakyReLU(inplace=True),
            conv(M * 3 // 2, M * 2, stride=1, kernel_size=3),
        )
        return h_a, h_s

    def entropy_parameters(self, hyper_output: Tensor) -> EntropyParameters:
        scales, means = hyper_output.chunk(2, dim=1)
        return EntropyParameters(scales, means)
