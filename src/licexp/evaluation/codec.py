"""Real coding of one image: pad, entropy code with rANS, decode, and check the decode."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from licexp.backbones import LearnedCodec
from licexp.backbones.rans_bounds import StreamError
from licexp.backbones.staged_rans import symbol_checksum
from licexp.evaluation.bitstream import (
    MAX_PIXELS,
    PADDINGS,
    BitstreamError,
    CodedImage,
    ModelIdentity,
    identity_of,
    pack,
    unpack,
)
from licexp.evaluation.metrics import bpp_from_bytes


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pads ``x`` (B, C, H, W) at the bottom and right to sides divisible by ``multiple``.

    Replicate padding: it codes in fewer bits than zeros; the padded pixels are cropped
    after decoding and never enter the metrics.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def padding_offsets(padding: str, height: int, width: int, multiple: int) -> tuple[int, int]:
    """Where the image sits in its padded frame: ``(top, left)``."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if padding == "replicate":
        return 0, 0
    return (-height % multiple) // 2, (-width % multiple) // 2


def pad_image(x: Tensor, multiple: int, padding: str = "replicate") -> Tensor:
    """Pads ``x`` to sides divisible by ``multiple``: :func:`pad_to_multiple`, or, for
    ``centred_zeros``, zeros around the centred image as the Tiny-LIC release evaluates."""
    height, width = x.shape[-2:]
    top, left = padding_offsets(padding, height, width, multiple)
    if padding == "replicate":
        return pad_to_multiple(x, multiple)
    bottom, right = -height % multiple - top, -width % multiple - left
    return F.pad(x, (left, right, top, bottom), mode="constant", value=0.0)


def crop(x: Tensor, coded: CodedImage, multiple: int) -> Tensor:
    """The image's own pixels of a decoded padded frame."""
    top, left = padding_offsets(coded.padding, coded.height, coded.width, multiple)
    return x[..., top : top + coded.height, left : left + coded.width]


@dataclass
class RealCoding:
    """The outcome of coding one image for real."""

    container: bytes
    """The whole file: the header and the latents' strings (:attr:`bpp_file`)."""
    string_bytes: int
    """The bytes of the latents' strings alone, the rate CompressAI's ``eval_model`` and
    every published anchor count (:attr:`bpp`)."""
    x_hat: Tensor
    """The decoded reconstruction, cropped to the image and clamped to ``[0, 1]``."""
    estimated_bpp: float
    """Rate the entropy model estimates for the hard-quantised latents (same pixel count)."""
    decode_error: float
    """Largest difference between the decoded latent ``y_hat`` and the encoder's own; the
    reconstruction is ``g_s(y_hat)`` on both sides, so 0 means the encoder's image."""
    encoding_time: float
    decoding_time: float

    @property
    def bpp(self) -> float:
        """Bits per pixel of the strings alone, as the field reports rates."""
        return bpp_from_bytes(self.string_bytes, *self.x_hat.shape[-2:])

    @property
    def bpp_file(self) -> float:
        """Bits per pixel of the whole file, the container's header included."""
        return bpp_from_bytes(len(self.container), *self.x_hat.shape[-2:])


def check_codable(codec: LearnedCodec, height: int, width: int) -> None:
    """Raises a clear error for an image the codec cannot code."""
    if height < 1 or width < 1:
        raise ValueError(f"cannot code an empty image of size {height}x{width}")
    if max(height, width) > 65535:
        raise ValueError(f"image of {height}x{width} exceeds the container's 65535-pixel sides")


@contextmanager
def deterministic_kernels() -> Iterator[None]:
    """Runs the enclosed code with cuDNN's deterministic algorithms.

    The decoder recomputes the entropy parameters and the synthesis the encoder computed;
    cuDNN's default algorithms may differ from run to run (transposed convolutions use
    atomics), which moves the reconstruction by ~1e-8 on a GPU and, where a mean lands on a
    rounding boundary, desynchronises the symbols. CPU kernels are deterministic already.
    """
    cudnn = torch.backends.cudnn
    previous = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = previous


@torch.inference_mode()
@deterministic_kernels()
def code_image(
    codec: LearnedCodec,
    image: Tensor,
    identity: ModelIdentity | None = None,
    padding: str = "replicate",
) -> RealCoding:
    """Codes one image (``[3, H, W]`` or ``[1, 3, H, W]`` in ``[0, 1]``) with the real coder.

    The codec must be in eval mode with updated CDFs (``codec.update(force=True)``);
    ``identity`` is what the container records (computed from ``codec`` when not given:
    pass it when coding many images with one model); ``padding`` is one of
    :data:`~licexp.evaluation.bitstream.PADDINGS`. The container is decoded with every
    check of :func:`decode_container`, and the decoded latent is compared with the one the
    encoder computed (:class:`~licexp.backbones.base.EncoderSide`, the eval-mode forward
    pass's hard path), whose likelihoods give the estimated rate: the codec runs once each
    way, as CompressAI's ``eval_model`` runs it. Callers report a non-zero
    ``decode_error`` loudly.
    """
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"expected one RGB image [3, H, W], got shape {tuple(image.shape)}")
    height, width = x.shape[-2:]
    check_codable(codec, height, width)
    padded = pad_image(x, codec.downsampling_factor, padding)
    identity = identity or identity_of(codec)

    start = time.perf_counter()
    with symbol_checksum() as checksum:
        bitstreams = codec.compress(padded)
    coded = CodedImage(bitstreams, height, width, identity, checksum.value, padding)
    container = pack(coded)
    encoded = time.perf_counter()
    decoded, y_hat = _decode(codec, unpack(container), identity)
    decoding_time = time.perf_counter() - encoded

    encoder_side = bitstreams.encoder_side
    return RealCoding(
        container=container,
        string_bytes=sum(len(strings[0]) for strings in bitstreams.strings.values()),
        x_hat=decoded.clamp(0, 1)[0],
        estimated_bpp=float(encoder_side.bits.sum()) / (height * width),
        decode_error=(y_hat - encoder_side.y_hat).abs().max().item(),
        encoding_time=encoded - start,
        decoding_time=decoding_time,
    )


def check_sizes(codec: LearnedCodec, coded: CodedImage) -> None:
    """The hyper latent size must be the one the image size implies for this backbone."""
    factor, stride = codec.downsampling_factor, codec.hyper_latent_stride
    expected = tuple(-(-side // factor) * factor // stride for side in (coded.height, coded.width))
    if tuple(coded.bitstreams.latent_size) != expected:
        raise BitstreamError(
            f"the header's hyper latent size {tuple(coded.bitstreams.latent_size)} does not fit "
            f"a {coded.height}x{coded.width} image, which {type(codec).__name__} codes as "
            f"{expected}"
        )


def check_latents(codec: LearnedCodec, coded: CodedImage) -> None:
    """The container must hold a string for exactly the latents the codec decodes."""
    found, expected = set(coded.bitstreams.strings), set(codec.latent_names)
    if found != expected:
        problems = [
            f"{what} {', '.join(repr(name) for name in sorted(names))}"
            for what, names in (("lacks", expected - found), ("has unknown", found - expected))
            if names
        ]
        raise BitstreamError(
            f"the container {' and '.join(problems)} latents: {type(codec).__name__} decodes "
            f"exactly {', '.join(repr(name) for name in codec.latent_names)}"
        )


def check_identity(found: ModelIdentity, expected: ModelIdentity) -> None:
    if found.fingerprint != expected.fingerprint:
        raise BitstreamError(
            f"the bitstream was written by another model: it needs {found.describe()}, "
            f"this is {expected.describe()}; decode it with that checkpoint and strategy"
        )


def check_symbols(decoded: int, written: int) -> None:
    """The checksum of the symbols decoded must be the one the encoder wrote."""
    if decoded != written:
        raise BitstreamError(
            f"the decoded symbols differ from the encoder's (symbol checksum {decoded:08x}, "
            f"the file says {written:08x}): a corrupt file (damaged or forged with consistent "
            "CRCs) or a different decoder (entropy parameters that differ from the encoder's: "
            "another device or thread count can do this); either way the image would be wrong"
        )


def _decode(
    codec: LearnedCodec, coded: CodedImage, identity: ModelIdentity
) -> tuple[Tensor, Tensor]:
    """Decodes a checked container: the unclamped ``[1, 3, H, W]`` reconstruction and the
    decoded latent ``y_hat`` it was synthesised from (``g_s``'s input).

    The symbols are checked when ``g_s`` is about to run, after the last one is read: a
    damaged or forged file stops before the synthesis, the decoder's largest allocation.
    """
    check_identity(coded.identity, identity)
    check_latents(codec, coded)
    check_sizes(codec, coded)
    non_finite: list[str] = []
    inputs: dict[str, Tensor] = {}

    def watch(latent: str) -> Callable[[torch.nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
            inputs[latent] = args[0]
            if not non_finite and not torch.isfinite(args[0]).all():
                non_finite.append(latent)
            if latent == "y":
                check_symbols(checksum.value, coded.symbol_checksum)

        return hook

    handles = [
        getattr(codec, module).register_forward_pre_hook(watch(latent))
        for module, latent in (("h_s", "z"), ("g_s", "y"))
    ]
    try:
        with symbol_checksum() as checksum:
            decoded = crop(codec.decompress(coded.bitstreams), coded, codec.downsampling_factor)
    except StreamError as error:
        raise BitstreamError(str(error)) from error
    finally:
        for handle in handles:
            handle.remove()
    if non_finite or not torch.isfinite(decoded).all():
        where = f"the decoded latent {non_finite[0]!r}" if non_finite else "the reconstruction"
        raise BitstreamError(f"{where} holds non-finite values (NaN or infinity)")
    return decoded, inputs["y"]


@torch.inference_mode()
@deterministic_kernels()
def decode_container(
    codec: LearnedCodec,
    container: bytes,
    identity: ModelIdentity | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Tensor:
    """Decodes a container written by :func:`code_image` to ``[3, H, W]`` in ``[0, 1]``.

    Raises :class:`~licexp.evaluation.bitstream.BitstreamError` for a damaged container, an
    image above ``max_pixels``, one written by another model (fingerprint), latents or
    sizes that do not fit the backbone, strings too short for their symbols, symbols that
    decode differently from the encoder's, or a non-finite decode.
    """
    coded = unpack(container, max_pixels)
    decoded, _ = _decode(codec, coded, identity or identity_of(codec))
    return decoded.clamp(0, 1)[0]
