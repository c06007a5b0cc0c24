"""licexp's coding against CompressAI's on the same weights (issue 15, goal 2).

    .venv/bin/python benchmarks/coding.py [--ckpt FILE] [--limit N] [--repeats 3]
        [--device cpu|cuda] [--quick]

``mean_scale`` + ``ste`` writes the bytes of CompressAI's ``MeanScaleHyperprior`` on the
same weights, so the comparison is exact: both models are built from one state dict, and
every image's strings are checked equal before a time is kept.

1. Per call, in one process: for each image (Kodak from ../shared/data/kodak, else the
   bundled photos), CompressAI's ``compress``, licexp's ``compress``, CompressAI's
   ``decompress`` and licexp's ``decompress`` in turn, ``--repeats`` times; the fastest of
   each is kept, and the sums over the images are compared.
2. Evaluation: CompressAI's ``eval_model`` (its ``python -m compressai.utils.eval_model``
   loop: read, pad, compress, decompress, PSNR, MS-SSIM) against licexp's
   ``evaluate_images`` (read, pad, compress, container, decode with every check, PSNR,
   MS-SSIM, bitstreams written; no classical anchors) over the same files, wall time.

The weights are the checkpoint's (``--ckpt``: a licexp checkpoint of ``mean_scale``), else
CompressAI's initialisation at N = 128, M = 192 (seeded) with GDN's ``gamma`` spread off
the diagonal (an initial ``0.1 I`` sums exactly in any order, which would hide a kernel
that changes the sums) and ``g_a``'s last layer scaled so that the latents carry a trained
model's rate. The result rewrites the ``coding-vs-compressai`` section of BENCHMARKS.md;
``--quick`` codes two images once and writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from compressai.layers import GDN
from compressai.models import MeanScaleHyperprior as CompressAIMeanScale

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import SHARED_DIR  # noqa: E402
from report import machine_description, update_section  # noqa: E402

from licexp.backbones import MeanScaleHyperprior  # noqa: E402
from licexp.checkpoints import codec_from_checkpoint  # noqa: E402
from licexp.data import DEFAULT_PHOTOS, load_photo  # noqa: E402
from licexp.data.images import load_rgb  # noqa: E402
from licexp.evaluation.codec import pad_image  # noqa: E402
from licexp.evaluation.evaluate import evaluate_images, save_png  # noqa: E402
from licexp.quant import StraightThroughQuantization  # noqa: E402

KODAK = SHARED_DIR / "data" / "kodak"
NOTE = """\
Where the time goes: `g_a` is most of `compress` in both, and by default it stays
CompressAI's arithmetic (its rounding decides the symbols, so another kernel changes some
bytes, as the fast-analysis row shows); licexp's encode saves GDN's temporaries and the
scale-table passes. `decompress` runs `g_s`
in channels-last, which moves the reconstruction by float
rounding only. licexp's evaluation also writes each container, checks it (fingerprint,
sizes, symbol checksum, decoded latent) and writes the bitstream files.
"""


def seeded_codec() -> MeanScaleHyperprior:
    """CompressAI's initialisation at N = 128, M = 192, GDN spread, latents scaled."""
    torch.manual_seed(0)
    codec = MeanScaleHyperprior(N=128, M=192, quantizer=StraightThroughQuantization())
    with torch.no_grad():
        for module in codec.modules():
            if isinstance(module, GDN):
                channels = module.gamma.size(0)
                spread = 0.1 * torch.eye(channels) + 0.02 * torch.rand(channels, channels)
                module.gamma.copy_(module.gamma_reparam.init(spread))
        codec.g_a[-1].weight.mul_(8)
    codec.prepare_for_coding()
    return codec


def compressai_twin(codec: MeanScaleHyperprior) -> CompressAIMeanScale:
    """CompressAI's own model holding ``codec``'s weights, its tables built the same way."""
    twin = CompressAIMeanScale(codec.N, codec.M).eval()
    twin.load_state_dict(
        {
            key.replace("hyper_latent.", "").replace("latent.", ""): value
            for key, value in codec.state_dict().items()
        }
    )
    twin.update(force=True)
    return twin


def image_files(root: Path, limit: int | None) -> tuple[str, list[Path]]:
    """The Kodak files, or the bundled photos written to ``root`` when ../shared is absent."""
    if KODAK.is_dir():
        files = sorted(KODAK.glob("*.png"))[:limit]
        return f"{len(files)} Kodak images (768x512)", files
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for name in DEFAULT_PHOTOS[:limit]:
        files.append(root / f"{name}.png")
        save_png(load_photo(name), files[-1])
    return f"the {len(files)} bundled photos (no ../shared)", files


def interleaved_fastest(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` rounds, each round running every call once in turn (CUDA
    synchronised before and after each)."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, call in calls.items():
            synchronize()
            start = time.perf_counter()
            call()
            synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def per_call(
    codec: MeanScaleHyperprior, twin: CompressAIMeanScale, files: list[Path], repeats: int
) -> dict[str, float]:
    """Summed fastest times of each call over the images; raises if any bytes differ."""
    totals: dict[str, float] = {}
    decode_difference, other_bytes = 0.0, 0
    fast = fast_analysis_twin(codec)
    for path in files:
        x = load_rgb(path)[None].to(codec.g_a[0].weight.device)
        x = pad_image(x, codec.downsampling_factor, "centred_zeros")
        theirs = twin.compress(x)
        ours = codec.compress(x)
        if ours.strings["y"] != theirs["strings"][0] or ours.strings["z"] != theirs["strings"][1]:
            raise AssertionError(f"{path.name}: licexp's bytes differ from CompressAI's")
        decoded = codec.decompress(ours).clamp(0, 1)
        their_image = twin.decompress(theirs["strings"], theirs["shape"])["x_hat"]
        decode_difference = max(decode_difference, (decoded - their_image).abs().max().item())
        fast_strings = fast.compress(x).strings
        other_bytes += fast_strings["y"] != theirs["strings"][0]
        other_bytes += fast_strings["z"] != theirs["strings"][1]
        calls = {
            "compressai_encode": partial(twin.compress, x),
            "licexp_encode": partial(codec.compress, x),
            "licexp_encode_fast": partial(fast.compress, x),
            "compressai_decode": partial(twin.decompress, theirs["strings"], theirs["shape"]),
            "licexp_decode": partial(codec.decompress, ours),
        }
        for name, time_taken in interleaved_fastest(calls, repeats).items():
            totals[name] = totals.get(name, 0.0) + time_taken
    totals["decode_difference"] = decode_difference
    totals["fast_other_strings"] = other_bytes
    return totals


def fast_analysis_twin(codec: MeanScaleHyperprior) -> MeanScaleHyperprior:
    """``codec`` sharing its modules, with ``channels_last_analysis`` on."""
    fast = copy.copy(codec)
    fast.channels_last_analysis = True
    return fast


def evaluation_times(
    codec: MeanScaleHyperprior,
    twin: CompressAIMeanScale,
    files: list[Path],
    out_dir: Path,
    repeats: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """The fastest wall times of CompressAI's ``eval_model`` and licexp's evaluation (in
    alternation), and each one's mean bpp and PSNR."""
    threads = torch.get_num_threads()
    from compressai.utils.eval_model.__main__ import eval_model

    torch.set_num_threads(threads)  # the module sets one thread on import
    x_device = codec.g_a[0].weight.device
    metrics: dict[str, dict[str, float]] = {}

    def compressai_evaluation() -> None:
        means = eval_model(
            twin,
            out_dir,
            files[0].parent,
            files,
            architecture="mbt2018-mean",
            half=False,
            per_image=False,
        )
        metrics["compressai"] = {"bpp": means["bpp"], "psnr": means["psnr-rgb"]}

    def licexp_evaluation() -> None:
        images = [(path.stem, load_rgb(path).to(x_device)) for path in files]
        rows = evaluate_images(codec, images, out_dir, reconstructions=0, padding="centred_zeros")
        metrics["licexp"] = {
            key: statistics.fmean(row[key] for row in rows) for key in metrics["compressai"]
        }

    times = interleaved_fastest(
        {"compressai": compressai_evaluation, "licexp": licexp_evaluation}, repeats
    )
    return times, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, help="a licexp checkpoint of mean_scale")
    parser.add_argument("--limit", type=int, help="code only the first N images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.limit, args.repeats, args.eval_repeats = 2, 1, 1

    if args.ckpt:
        codec, config = codec_from_checkpoint(args.ckpt, quantizer=StraightThroughQuantization())
        weights = (
            f"a trained checkpoint (N = {codec.N}, M = {codec.M}, lmbda = {config.get('lmbda')}, "
            f"{config.get('trainer', {}).get('max_steps')} steps)"
        )
    else:
        codec = seeded_codec()
        weights = "seeded CompressAI initialisation, N = 128, M = 192 (see the docstring)"
    codec, twin = codec.to(args.device), compressai_twin(codec).to(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        described, files = image_files(Path(scratch) / "images", args.limit)
        calls = per_call(codec, twin, files, args.repeats)
        evaluations, metrics = evaluation_times(
            codec, twin, files, Path(scratch) / "eval", args.eval_repeats
        )

    def row(name: str, theirs: float, ours: float) -> str:
        return f"| {name} | {theirs:.3f} | {ours:.3f} | {ours / theirs:.2f} |"

    command = " ".join(
        [
            ".venv/bin/python benchmarks/coding.py",
            *([f"--ckpt {args.ckpt}"] if args.ckpt else []),
            *([f"--limit {args.limit}"] if args.limit and not args.quick else []),
            f"--repeats {args.repeats} --eval-repeats {args.eval_repeats}",
            *([f"--device {args.device}"] if args.device != "cpu" else []),
        ]
    )
    theirs, ours = metrics["compressai"], metrics["licexp"]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    other_strings = int(calls["fast_other_strings"])
    body = f"""## Coding against CompressAI on the same weights: mean_scale + ste, {device_name}

Weights: {weights}; {described}; bytes checked equal to CompressAI's for every image;
licexp's decode differs from CompressAI's by at most {calls["decode_difference"]:.2g}.

| per image, summed over the images | CompressAI (s) | licexp (s) | licexp / CompressAI |
|---|---|---|---|
{row("`compress`", calls["compressai_encode"], calls["licexp_encode"])}
{row("`compress`, fast analysis", calls["compressai_encode"], calls["licexp_encode_fast"])}
{row("`decompress`", calls["compressai_decode"], calls["licexp_decode"])}
{row("evaluation (wall)", evaluations["compressai"], evaluations["licexp"])}

Fast analysis: `backbone.channels_last_analysis=true` (off by default); {other_strings} of
the {2 * len(files)} strings differ from CompressAI's (a latent within float rounding of a
rounding boundary codes another symbol); the default's are all CompressAI's.

Per call: the fastest of {args.repeats} interleaved runs of each. Evaluation (the fastest of
{args.eval_repeats}, in alternation): CompressAI's `eval_model` ({theirs["bpp"]:.4f} bpp,
{theirs["psnr"]:.3f} dB) against licexp's `evaluate_images` ({ours["bpp"]:.4f} bpp with the
container's header, {ours["psnr"]:.3f} dB), both with zero padding around the centred image.

{NOTE}
Machine: {machine_description()}. Command: `{command}`
"""
    print(body)
    if not args.quick:
        section = "coding-vs-compressai" + ("-checkpoint" if args.ckpt else "")
        update_section(section + ("-cuda" if args.device == "cuda" else ""), body)


if __name__ == "__main__":
    main()
