"""Real coding of one image: pad, entropy code with rANS, decode, and check the decode."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from licexp.backbones import LearnedCodec
from licexp.evaluation.bitstream import CodedImage, pack, unpack
from licexp.training.loss import bits_per_pixel


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


@dataclass
class RealCoding:
    """The outcome of coding one image for real."""

    container: bytes
    """The whole bitstream, header included; ``8 * len / (H * W)`` is the reported bpp."""
    x_hat: Tensor
    """The decoded reconstruction, cropped to the image and clamped to ``[0, 1]``."""
    estimated_bpp: float
    """Rate the entropy model estimates for the hard-quantised latents (same pixel count)."""
    decode_error: float
    """Largest difference between the decoded and the hard forward reconstruction."""
    encoding_time: float
    decoding_time: float

    @property
    def bpp(self) -> float:
        height, width = self.x_hat.shape[-2:]
        return 8 * len(self.container) / (height * width)


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
def code_image(codec: LearnedCodec, image: Tensor) -> RealCoding:
    """Codes one image (``[3, H, W]`` or ``[1, 3, H, W]`` in ``[0, 1]``) with the real coder.

    The codec must be in eval mode with updated CDFs (``codec.update(force=True)``). The
    decoded reconstruction is compared with the hard-quantised forward pass; callers
    report a non-zero ``decode_error`` loudly.
    """
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"expected one RGB image [3, H, W], got shape {tuple(image.shape)}")
    height, width = x.shape[-2:]
    check_codable(codec, height, width)
    padded = pad_to_multiple(x, codec.downsampling_factor)

    start = time.perf_counter()
    container = pack(CodedImage(codec.compress(padded), height, width))
    encoded = time.perf_counter()
    coded = unpack(container)
    decoded = codec.decompress(coded.bitstreams)[..., : coded.height, : coded.width]
    decoding_time = time.perf_counter() - encoded

    reference = codec(padded)
    estimated_bits = sum(
        bits_per_pixel(likelihoods, 1) for likelihoods in reference.likelihoods.values()
    )
    decode_error = (decoded - reference.x_hat[..., :height, :width]).abs().max().item()
    return RealCoding(
        container=container,
        x_hat=decoded.clamp(0, 1)[0],
        estimated_bpp=float(estimated_bits) / (height * width),
        decode_error=decode_error,
        encoding_time=encoded - start,
        decoding_time=decoding_time,
    )


@torch.inference_mode()
@deterministic_kernels()
def decode_container(codec: LearnedCodec, container: bytes) -> Tensor:
    """Decodes a container written by :func:`code_image` to ``[3, H, W]`` in ``[0, 1]``."""
    coded = unpack(container)
    decoded = codec.decompress(coded.bitstreams)[..., : coded.height, : coded.width]
    return decoded.clamp(0, 1)[0]
