"""Tiny-LIC (Lu and Ma, 2022): neighbourhood-attention transforms, multistage context model.

Lu and Ma, "High-Efficiency Lossy Image Coding Through Adaptive Neighborhood Information
Aggregation" (arXiv 2204.11448), the backbone of Jiang et al. With ``C = (N, 3N/2, 2N, M)``
(``N = 128``, ``M = 320``):

- ``g_a``: conv 5x5/2 (3 -> C0), RNAB; conv 3x3/2 (C0 -> C1), RNAB; conv 3x3/2 (C1 -> C2),
  RNAB; conv 3x3/2 (C2 -> M), RNAB, with depths (2, 2, 6, 2) and 7x7 neighbourhoods;
- ``g_s``: its mirror with stride-2 transposed convolutions;
- ``h_a`` (on ``y``): conv 3x3/2 (M -> 3N/2), RNAB, conv 3x3/2, RNAB, depths (2, 2) and
  3x3 neighbourhoods; ``h_s`` its mirror, ending in ``2M`` channels ``psi``;
- the multistage context model (:mod:`licexp.backbones.multistage_context`) turns ``psi``
  and the decoded slices into ``(sigma, mu)`` of ``p(y_hat | z_hat)`` in nine steps.

Every RNAB uses heads of 16 channels (8, 12, 16, 20 heads for 128, 192, 256, 320
channels; 12 in the hyper transforms), MLP ratio 2 and stochastic depth rising linearly
to 0.1 over the blocks of the encoder side (``g_a`` then ``h_a``) and likewise over the
decoder side (``h_s`` then ``g_s``). About 28.3M parameters.

The family's constructor also builds Jiang et al.'s variants (:mod:`licexp.backbones.jiang`):
``unit`` puts a concatenated residual module into every conv + RNAB unit
(:mod:`licexp.backbones.concatenated_residual`), and ``stem`` / ``head`` replace the first
convolution of ``g_a`` and the last transposed convolution of ``g_s``. With the defaults
the modules, their names and their arithmetic are Tiny-LIC's.
"""

from __future__ import annotations

from collections.abc import Sequence

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
from licexp.backbones.concatenated_residual import absorb_crm_gain, unit_middle
from licexp.backbones.latent_coders import CodedLatent, GaussianLatentCoder, HyperLatentCoder
from licexp.backbones.multistage_context import MultistageContextModel, Stage
from licexp.backbones.neighborhood_attention import RNAB
from licexp.backbones.staged_rans import StagedRansDecoder, StagedRansEncoder
from licexp.quant import EntropyParameters, QuantizationStrategy

STRIDE_2_STAGES = 6
"""Strided layers between the image and the hyper latent ``z`` (four in g_a, two in h_a);
all have stride 2 except, in Jiang et al.'s variants, the first (the patch size ``b``)."""


def minimum_side(kernel_size: int, hyper_kernel_size: int, first_stride: int = 2) -> int:
    """The smallest image side whose every attention map holds a whole neighbourhood.

    The smallest maps are ``y`` at ``1 / (8 s)`` (``kernel_size``) and ``z`` at
    ``1 / (32 s)`` (``hyper_kernel_size``) for a first stride ``s``: with ``s = 2``,
    ``max(16 k, 64 k_h)``, 192 for Tiny-LIC's 7 and 3.
    """
    return max(8 * first_stride * kernel_size, 32 * first_stride * hyper_kernel_size)


def padding_multiple(kernel_size: int, hyper_kernel_size: int, first_stride: int = 2) -> int:
    """The side multiple images are padded to: the smallest ``32 s * 2^j`` (the product of
    the six strides times a power of two) that is at least :func:`minimum_side`.

    Every multiple of it is then codable. For Tiny-LIC (``s = 2``, 192) this is 256, the
    padding of the authors' release; 256-pixel training crops and Kodak's 768x512 need none.
    """
    multiple = first_stride * 2 ** (STRIDE_2_STAGES - 1)
    while multiple < minimum_side(kernel_size, hyper_kernel_size, first_stride):
        multiple *= 2
    return multiple


def heads_for(channels: int, head_dim: int) -> int:
    """``channels / head_dim`` heads (at least one), lowered until they divide ``channels``."""
    heads = max(1, channels // head_dim)
    while channels % heads:
        heads -= 1
    return heads


def _drop_path_rates(depths: Sequence[int], maximum: float) -> list[list[float]]:
    """Stochastic-depth rates rising linearly from 0 to ``maximum`` over all blocks in order."""
    total = sum(depths)
    rates = [maximum * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[start : start + depth] for start, depth in zip(starts, depths, strict=True)]


class TinyLIC(LearnedCodec):
    """Tiny-LIC with the quantisation strategy applied at every stage of its context model.

    Args:
        N, M: channels of the first transform stage and of ``y`` (128 and 320 in the paper).
        depths: RNAB depths of ``g_a`` (and, mirrored, of ``g_s``).
        hyper_depths: RNAB depths of ``h_a`` (and, mirrored, of ``h_s``).
        head_dim: channels per attention head.
        kernel_size, hyper_kernel_size: neighbourhood sizes of the main and hyper transforms.
        mlp_ratio: hidden width of the RNAB MLPs over their input width.
        drop_path_rate: the largest stochastic-depth probability.
        slices: the four channel slices of the context model (cosine schedule by default).
        unit: ``icsa`` (conv -> RNAB, Tiny-LIC), ``icrsa`` (conv -> CRM -> RNAB) or
            ``icrsa_conv`` (the CRM replaced by a 3x3 conv), in all twelve units.
        attention: how the neighbourhood attention computes, one of
            :data:`~licexp.backbones.neighborhood_attention.BACKENDS` (the same function).
        quantizer: the quantisation strategy.
        stem: replaces ``g_a``'s first convolution (image -> ``N`` channels); its stride is
            ``stem_stride``.
        head: replaces ``g_s``'s last transposed convolution (``N`` channels -> image).

    Per stage of the context model the strategy quantises the stage's positions
    (:class:`~licexp.backbones.latent_coders.GaussianLatentCoder`), and the contexts of all
    later stages read the strategy's *decoder-side* value of them, as ``g_s`` does: its
    hard path (``round(y - mu) + mu`` for the scalar strategies, the trellis reconstruction
    for ``tcq``) in eval mode and on real bitstreams, and in training

    - noise: ``y + u``, ``u ~ U(-1/2, 1/2)`` (rate, decoder and contexts alike);
    - ste, soft_ste, ste_sn: ``STE(y - mu) + mu`` (soft_ste perturbs only the rate);
    - mixed: ``STE(y - mu) + mu`` while the rate sees ``y + u``: the authors' recipe;
    - fourier_qecm: ``v + s(v)`` with ``v = y_qc + u`` (the coded variable is ``y_qc``).

    ``forward`` returns the latents ``y, z, y_hat, y_rate, scales, means`` assembled over
    the nine stages. Images must have sides that are multiples of ``downsampling_factor``
    (:func:`padding_multiple`, 256 for the paper's kernels); evaluation pads to it.
    """

    module_roles = {"synthesis": ("g_s",), "entropy_parameters": ("h_s", "context_model")}
    enhances_features = False
    """Whether ``forward`` returns the features of Jiang et al.'s feature loss: ``refined``,
    the output of ``g_a[0]``, and ``enhanced``, the input of ``g_s[-1]``."""
    searches_whole_latent = False  # the nine stages search slices of parity planes
    crm_transparent: tuple[type[nn.Module], ...] = ()
    """Synthesis modules that start as identities, passed over when the convolution after a
    CRM is halved (:func:`~licexp.backbones.concatenated_residual.absorb_crm_gain`)."""

    def __init__(
        self,
        N: int = 128,
        M: int = 320,
        depths: Sequence[int] = (2, 2, 6, 2),
        hyper_depths: Sequence[int] = (2, 2),
        head_dim: int = 16,
        kernel_size: int = 7,
        hyper_kernel_size: int = 3,
        mlp_ratio: float = 2.0,
        drop_path_rate: float = 0.1,
        slices: Sequence[int] | None = None,
        unit: str = "icsa",
        attention: str = "auto",
        *,
        quantizer: QuantizationStrategy,
        stem: nn.Module | None = None,
        stem_stride: int = 2,
        head: Sequence[nn.Module] = (),
    ) -> None:
        super().__init__()
        check_channels(N=N, M=M)
        depths, hyper_depths = list(depths), list(hyper_depths)
        if len(depths) != 4 or len(hyper_depths) != 2:
            raise ValueError(f"need 4 depths and 2 hyper depths, got {depths}, {hyper_depths}")
        self.N, self.M = N, M
        self.kernel_size, self.hyper_kernel_size = kernel_size, hyper_kernel_size
        self.stem_stride = stem_stride
        self.hyper_latent_stride = stem_stride * 2 ** (STRIDE_2_STAGES - 1)
        self.minimum_side = minimum_side(kernel_size, hyper_kernel_size, stem_stride)
        self.downsampling_factor = padding_multiple(kernel_size, hyper_kernel_size, stem_stride)
        channels = [N, N * 3 // 2, N * 2, M]
        hyper_channels = N * 3 // 2

        def block(dim: int, depth: int, kernel: int, rates: list[float]) -> RNAB:
            return RNAB(dim, depth, heads_for(dim, head_dim), kernel, mlp_ratio, rates, attention)

        encoder_rates = _drop_path_rates([*depths, *hyper_depths], drop_path_rate)
        decoder_rates = _drop_path_rates([*hyper_depths[::-1], *depths[::-1]], drop_path_rate)

        analysis: list[nn.Module] = []
        for index, (width, depth) in enumerate(zip(channels, depths, strict=True)):
            previous = channels[index - 1] if index else 3
            if index == 0 and stem is not None:
                analysis.append(stem)
            else:
                kernel = 5 if index == 0 else 3
                analysis.append(conv(previous, width, kernel_size=kernel, stride=2))
            analysis += unit_middle(unit, width)
            analysis.append(block(width, depth, kernel_size, encoder_rates[index]))
        self.g_a = nn.Sequential(*analysis)

        synthesis: list[nn.Module] = []
        for index in reversed(range(4)):
            synthesis.append(
                block(channels[index], depths[index], kernel_size, decoder_rates[5 - index])
            )
            synthesis += unit_middle(unit, channels[index])
            if index == 0 and head:
                synthesis += list(head)
                continue
            following = channels[index - 1] if index else 3
            synthesis.append(
                deconv(channels[index], following, kernel_size=5 if index == 0 else 3, stride=2)
            )
        self.g_s = nn.Sequential(*synthesis)

        self.h_a = nn.Sequential(
            conv(M, hyper_channels, kernel_size=3, stride=2),
            *unit_middle(unit, hyper_channels),
            block(hyper_channels, hyper_depths[0], hyper_kernel_size, encoder_rates[4]),
            conv(hyper_channels, hyper_channels, kernel_size=3, stride=2),
            *unit_middle(unit, hyper_channels),
            block(hyper_channels, hyper_depths[1], hyper_kernel_size, encoder_rates[5]),
        )
        self.h_s = nn.Sequential(
            block(hyper_channels, hyper_depths[1], hyper_kernel_size, decoder_rates[0]),
            *unit_middle(unit, hyper_channels),
            deconv(hyper_channels, hyper_channels, kernel_size=3, stride=2),
            block(hyper_channels, hyper_depths[0], hyper_kernel_size, decoder_rates[1]),
            *unit_middle(unit, hyper_channels),
            deconv(hyper_channels, 2 * M, kernel_size=3, stride=2),
        )
        for transform in (self.g_a, self.h_a):  # ICRSA units start with their ICSA's gain
            absorb_crm_gain(transform, analysis=True)
        for transform in (self.g_s, self.h_s):
            absorb_crm_gain(transform, analysis=False, transparent=self.crm_transparent)
        self.context_model = MultistageContextModel(M, 2 * M, slices)
        self.hyper_latent = HyperLatentCoder(hyper_channels)
        self.latent = GaussianLatentCoder()
        self.attach_quantizer(quantizer)

    def check_input(self, x: Tensor) -> None:
        if x.dim() == 4 and x.size(1) == 3 and min(x.shape[-2:]) < self.minimum_side:
            raise ValueError(
                f"{type(self).__name__} cannot code a {x.size(-2)}x{x.size(-1)} image: its "
                f"{self.kernel_size}x{self.kernel_size} attention at 1/{8 * self.stem_stride} and "
                f"{self.hyper_kernel_size}x{self.hyper_kernel_size} at 1/{32 * self.stem_stride} "
                "scale need sides "
                f"of at least {self.minimum_side}, in multiples of {self.downsampling_factor} "
                "(pad with licexp.evaluation.codec.pad_to_multiple; train on crops of "
                f"data.train.size={self.downsampling_factor})"
            )
        super().check_input(x)

    def forward(self, x: Tensor) -> CodecOutput:
        self.check_input(x)
        refined = self.g_a[0](x)
        y = self.g_a[1:](refined)
        z = self.h_a(y)
        z_coded = self.hyper_latent(z, self.quantizer)
        stages: list[tuple[CodedLatent, EntropyParameters]] = []

        def code_stage(stage: Stage, parameters: EntropyParameters) -> Tensor:
            latent = self.context_model.select(stage, y)
            coded = self.latent(latent, parameters, self.quantizer)
            stages.append((coded, parameters))
            return coded.decoder_input

        y_hat = self.context_model.decode(self.h_s(z_coded.decoder_input), code_stage)
        assemble = self.context_model.assemble
        latents = {
            "y": y,
            "z": z,
            "y_hat": y_hat,
            "y_rate": assemble([coded.rate_input for coded, _ in stages]),
            "scales": assemble([parameters.scales for _, parameters in stages]),
            "means": assemble([parameters.means for _, parameters in stages]),
        }
        enhanced = self.g_s[:-1](y_hat)
        return CodecOutput(
            x_hat=self.g_s[-1](enhanced),
            likelihoods={
                "y": assemble([coded.likelihoods for coded, _ in stages]),
                "z": z_coded.likelihoods,
            },
            latents=latents,
            features={"refined": refined, "enhanced": enhanced} if self.enhances_features else {},
        )

    def synthesize(self, y_hat: Tensor) -> Tensor:
        return self.g_s(y_hat)

    def latent_likelihood(self, y_rate: Tensor, latents: dict[str, Tensor]) -> Tensor:
        return self.latent.likelihood(y_rate, latents["scales"], latents["means"])

    def compress(self, x: Tensor) -> Bitstreams:
        """Codes ``z``, then the nine stages of ``y`` into one rANS string per image."""
        self.check_input(x)
        y = self.g_a(x)
        z = self.h_a(y)
        z_strings, z_coded = self.hyper_latent.compress(z, self.quantizer)
        encoder = StagedRansEncoder(self.latent.tables_for(self.quantizer), batch_size=x.size(0))
        likelihoods = [z_coded.likelihoods]

        def code_stage(stage: Stage, parameters: EntropyParameters) -> Tensor:
            latent = self.context_model.select(stage, y)
            hard = self.latent.quantize_hard(latent, parameters, self.quantizer)
            encoder.write(hard.encoding)
            likelihoods.append(hard.encoding.likelihoods)
            return hard.decoder_input

        y_hat = self.context_model.decode(self.h_s(z_coded.decoder_input), code_stage)
        return Bitstreams(
            {"z": z_strings, "y": encoder.flush()},
            latent_size=tuple(z.shape[-2:]),
            encoder_side=EncoderSide(y_hat, estimated_bits(*likelihoods)),
        )

    def decompress(self, bitstreams: Bitstreams) -> Tensor:
        z_hat = self.hyper_latent.decompress(
            bitstreams.strings["z"], bitstreams.latent_size, self.quantizer
        )
        hyper = self.h_s(z_hat)
        decoder = StagedRansDecoder(
            self.latent.tables_for(self.quantizer),
            bitstreams.strings["y"],
            symbols=self.M * hyper.shape[-2] * hyper.shape[-1],
        )

        def code_stage(stage: Stage, parameters: EntropyParameters) -> Tensor:
            return self.latent.decode(decoder.read, parameters, self.quantizer)

        return self.g_s(self.context_model.decode(hyper, code_stage))
