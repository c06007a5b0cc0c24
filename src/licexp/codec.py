"""Encode an image to a file and decode it back: ``licexp-codec`` (``python -m licexp.codec``).

    licexp-codec encode photo.png -o photo.lic --ckpt <run>/checkpoints/last.ckpt [quant=tcq]
    licexp-codec decode photo.lic -o photo_decoded.png --ckpt <run>/checkpoints/last.ckpt
    licexp-codec info photo.lic

``encode`` accepts any image the evaluation accepts (the same conversions and errors),
writes the container of :mod:`licexp.evaluation.bitstream` and prints its size, bpp and
time; it decodes the file once before keeping it, so a written file is known to decode.
``decode`` writes an 8-bit RGB PNG of the original size and prints the time. ``quant=...``
(and ``quant.<key>=...``) code a checkpoint with another strategy, as ``licexp.eval`` does;
a file coded so decodes with the same overrides. ``info`` prints what a file says about
itself: size and the model it needs. A damaged file, or one written by another model,
fails with a message naming the problem, exit status 1, and leaves no output file.

Paths are checked before the checkpoint is loaded: a missing input or a directory given as
one, and an ``-o`` that cannot be written (its folder missing or not a folder, a directory
in its place), fail at once in one line naming the path, exit status 1. A file is written
under a temporary name and renamed into place, with the mode ``open(path, "w")`` gives it
(``0o666`` less the umask for a new file, the old mode for a replaced one).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
from hydra import compose, initialize_config_module

from licexp.backbones import LearnedCodec
from licexp.checkpoints import CheckpointError, codec_from_checkpoint
from licexp.data.images import ImageReadError, load_rgb
from licexp.evaluation.bitstream import MAX_PIXELS, BitstreamError, identity_of, unpack
from licexp.evaluation.codec import code_image, decode_container
from licexp.evaluation.evaluate import save_png

INPUT_KINDS = {"encode": "an image", "decode": "a bitstream", "info": "a bitstream"}


class PathError(ValueError):
    """An input or output path that cannot be used; the message names the path."""


def check_input(path: Path, kind: str) -> None:
    """Raises :class:`PathError` unless ``path`` names an existing file (``kind`` of file)."""
    if path.is_dir():
        raise PathError(f"{path}: is a directory, not {kind} file")
    if not path.exists():
        raise PathError(f"{path}: no such file")


def check_output(path: Path) -> None:
    """Raises :class:`PathError`, naming ``path`` and why, where it cannot be written."""
    parent = path.parent
    if path.is_dir():
        problem = "it is a directory"
    elif path.exists() and not path.is_file():
        problem = "it exists and is not a regular file"
    elif not parent.exists():
        problem = f"directory {parent} does not exist"
    elif not parent.is_dir():
        problem = f"{parent} is not a directory"
    elif not os.access(parent, os.W_OK | os.X_OK):
        problem = f"no permission to create files in {parent}"
    else:
        return
    raise PathError(f"cannot write {path}: {problem}")


def check_paths(args: argparse.Namespace) -> None:
    """The input and output paths of a command, checked before any work."""
    check_input(getattr(args, "image", None) or args.file, INPUT_KINDS[args.command])
    if getattr(args, "output", None) is not None:
        check_output(args.output)


TRUST_FLAG = "--trust-checkpoint"


def load_codec(
    ckpt: Path, overrides: Sequence[str], trust: bool = False
) -> tuple[LearnedCodec, str]:
    """The checkpoint's codec (with a strategy from ``quant=...`` overrides) and run name;
    ``trust`` (``--trust-checkpoint``) loads a checkpoint that needs full pickle."""
    quantizer = None
    if overrides:
        unknown = [item for item in overrides if not item.startswith("quant")]
        if unknown:
            raise ValueError(f"only quant=... overrides are understood, got {unknown}")
        with initialize_config_module("licexp.conf", version_base="1.3"):
            quantizer = hydra.utils.instantiate(compose("eval", list(overrides)).quant)
    codec, config = codec_from_checkpoint(ckpt, quantizer, trust=trust, opt_in=TRUST_FLAG)
    return codec, str(config.get("run_name", ckpt.stem))


def umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def mode_for(path: Path) -> int:
    """The mode ``open(path, "w")`` leaves: the old file's, else ``0o666`` less the umask."""
    if path.is_file():
        return stat.S_IMODE(path.stat().st_mode)
    return 0o666 & ~umask()


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` to a temporary file beside ``path``, renamed over it only on success.

    The file gets the mode of :func:`mode_for` (``mkstemp`` alone would leave ``0o600``).
    """
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix
        )
        os.close(handle)
        write(Path(temporary))
        os.chmod(temporary, mode_for(path))
        os.replace(temporary, path)
    except OSError as error:
        raise PathError(f"cannot write {path}: {error.strerror or error}") from error
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)


def encode(args: argparse.Namespace) -> None:
    image = load_rgb(args.image)
    codec, run = load_codec(args.ckpt, args.overrides, args.trust_checkpoint)
    coding = code_image(codec, image, identity_of(codec, run))
    if coding.decode_error != 0:
        raise BitstreamError(
            f"the file would not decode to the encoder's latent (differs by "
            f"{coding.decode_error:.3g}); nothing written"
        )
    write_atomically(args.output, lambda path: path.write_bytes(coding.container))
    height, width = image.shape[-2:]
    print(
        f"{args.output}: {len(coding.container)} bytes ({coding.string_bytes} in the latents' "
        f"strings), {coding.bpp_file:.4f} bpp in all ({coding.bpp:.4f} for the strings) for "
        f"{width}x{height}, encoded in {coding.encoding_time:.3f} s"
    )


def decode(args: argparse.Namespace) -> None:
    container = args.file.read_bytes()
    coded = unpack(container, args.max_pixels)
    if args.ckpt is None:
        raise BitstreamError(
            f"decoding needs the model that wrote the file: {coded.identity.describe()}; "
            "pass --ckpt <that run's checkpoint>"
        )
    codec, run = load_codec(args.ckpt, args.overrides, args.trust_checkpoint)
    start = time.perf_counter()
    image = decode_container(codec, container, identity_of(codec, run), args.max_pixels)
    elapsed = time.perf_counter() - start
    write_atomically(args.output, lambda path: save_png(image, path))
    print(f"{args.output}: {coded.width}x{coded.height}, decoded in {elapsed:.3f} s")


def info(args: argparse.Namespace) -> None:
    coded = unpack(args.file.read_bytes())
    sizes = {name: len(strings[0]) for name, strings in coded.bitstreams.strings.items()}
    print(f"{args.file}: {coded.width}x{coded.height}, latents {sizes} bytes")
    print(f"model: {coded.identity.describe()}")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="licexp-codec", description=__doc__.split("\n")[0])
    commands = main.add_subparsers(dest="command", required=True)
    encoder = commands.add_parser("encode", help="image -> bitstream file")
    encoder.add_argument("image", type=Path)
    encoder.add_argument("-o", "--output", type=Path, required=True)
    encoder.add_argument("--ckpt", type=Path, required=True, help="a licexp checkpoint")
    encoder.set_defaults(run=encode)
    decoder = commands.add_parser("decode", help="bitstream file -> PNG")
    decoder.add_argument("file", type=Path)
    decoder.add_argument("-o", "--output", type=Path, required=True)
    decoder.add_argument("--ckpt", type=Path, help="the checkpoint that wrote the file")
    decoder.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"refuse a file declaring a larger image (default {MAX_PIXELS})",
    )
    decoder.set_defaults(run=decode)
    about = commands.add_parser("info", help="what a bitstream file says about itself")
    about.add_argument("file", type=Path)
    about.set_defaults(run=info)
    for command in (encoder, decoder):
        command.add_argument(
            TRUST_FLAG,
            action="store_true",
            help="load a checkpoint that needs full pickle (it can run code: trusted files only)",
        )
        command.set_defaults(overrides=[])
        command.epilog = "Trailing quant=<strategy> and quant.<key>=<value> choose the strategy."
    return main


def main(argv: Sequence[str] | None = None) -> int:
    command_line = parser()
    args, extra = command_line.parse_known_args(argv)
    if extra and (args.command == "info" or not all("=" in item for item in extra)):
        command_line.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        check_paths(args)
        args.run(args)
    except PathError as error:
        print(f"licexp-codec: error: {error}", file=sys.stderr)
        return 1
    except (
        BitstreamError,
        CheckpointError,
        ImageReadError,
        FileNotFoundError,
        ValueError,
    ) as error:
        source = getattr(args, "file", None) or getattr(args, "image", None)
        print(f"licexp-codec: error: {source}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
