"""Parameters, multiply-accumulates and coding time of a backbone, as Jiang et al.'s Tables III-IV.

    python -m licexp.complexity backbone=jiang [height=512 width=768] [timing=true]

prints one table row: parameters, GMACs of one forward pass (the encoder, the hyper
transforms, the context model and the decoder) of a ``height x width`` image (Kodak's
768x512 by default), and, with ``timing``, the encode and decode time of one such image on
real bitstreams, on the CPU and on CUDA when present.

MACs are counted by PyTorch's ``torch.utils.flop_counter.FlopCounterMode`` (convolutions
and matrix products; one MAC is two of its FLOPs). Neighbourhood attention runs as dense
attention over tiles with a mask (``tiled_neighborhood_attention``), which does more
products than the attention needs, so its batched products are replaced by
the attention's own count, ``2 H W k^2 C`` MACs per layer (queries times keys, weights
times values), as a NATTEN kernel does them. Element-wise work (activations, softmax,
normalisation, GDN's square roots, the QECM's sines) is not counted, as is usual.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from licexp.backbones import LearnedCodec
from licexp.backbones.neighborhood_attention import NeighborhoodAttention2d
from licexp.cli import hydra_command


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(codec: LearnedCodec, image: Tensor) -> int:
    """Multiply-accumulates of ``codec(image)`` in eval mode, attention counted as NATTEN does."""
    counter = FlopCounterMode(display=False)
    starts: list[int] = []
    tiled = attention = 0

    def tiled_products() -> int:
        return int(counter.flop_counts["Global"].get(torch.ops.aten.bmm, 0))

    def before(module: NeighborhoodAttention2d, args: tuple[Tensor, ...]) -> None:
        nonlocal attention
        batch, height, width, channels = args[0].shape
        attention += 2 * batch * height * width * module.kernel_size**2 * channels
        starts.append(tiled_products())

    def after(module: NeighborhoodAttention2d, args: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal tiled
        tiled += tiled_products() - starts.pop()

    attention_layers = [m for m in codec.modules() if isinstance(m, NeighborhoodAttention2d)]
    handles = [m.register_forward_pre_hook(before) for m in attention_layers]
    handles += [m.register_forward_hook(after) for m in attention_layers]
    was_training = codec.training
    try:
        codec.eval()
        with torch.no_grad(), counter:
            codec(image)
    finally:
        codec.train(was_training)
        for handle in handles:
            handle.remove()
    return (counter.get_total_flops() - tiled) // 2 + attention


@dataclass
class CodingTime:
    encode: float
    decode: float


def coding_time(codec: LearnedCodec, image: Tensor, repeats: int = 1) -> CodingTime:
    """Best-of-``repeats`` wall time of ``compress`` and ``decompress`` (after one warm-up)."""
    codec.prepare_for_coding()

    def synchronize() -> None:
        if image.is_cuda:
            torch.cuda.synchronize(image.device)

    encode, decode = [], []
    with torch.no_grad():
        bitstreams = codec.compress(image)
        codec.decompress(bitstreams)
        for _ in range(repeats):
            synchronize()
            start = time.perf_counter()
            bitstreams = codec.compress(image)
            synchronize()
            middle = time.perf_counter()
            codec.decompress(bitstreams)
            synchronize()
            encode.append(middle - start)
            decode.append(time.perf_counter() - middle)
    return CodingTime(min(encode), min(decode))


def complexity_row(cfg: DictConfig) -> dict[str, float | str]:
    """The table row of ``cfg.backbone`` (and ``cfg.quant``) at ``cfg.height x cfg.width``."""
    torch.manual_seed(cfg.seed)
    quantizer = hydra.utils.instantiate(cfg.quant)
    codec: LearnedCodec = hydra.utils.instantiate(cfg.backbone, quantizer=quantizer)
    image = torch.rand(1, 3, cfg.height, cfg.width)
    row: dict[str, float | str] = {
        "parameters (M)": parameter_count(codec) / 1e6,
        "GMACs": count_macs(codec, image) / 1e9,
    }
    if cfg.timing:
        devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
        for device in devices:
            timing = coding_time(codec.to(device), image.to(device), cfg.repeats)
            row[f"{device} encode (s)"] = timing.encode
            row[f"{device} decode (s)"] = timing.decode
    return row


@hydra_command("complexity", "licexp-complexity")
def main(cfg: DictConfig) -> None:
    name = HydraConfig.get().runtime.choices.get("backbone", "backbone")
    row = complexity_row(cfg)
    print("| backbone | " + " | ".join(row) + " |")
    print("|---" * (len(row) + 1) + "|")
    print(f"| {name} | " + " | ".join(f"{value:.3f}" for value in row.values()) + " |")


if __name__ == "__main__":
    main()
