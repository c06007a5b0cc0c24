"""``licexp-codec`` in-process on a small checkpoint written here: paths checked before any
work, one-line errors, and written files with the mode ``open`` would give them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from licexp import codec as cli
from licexp.backbones import MeanScaleHyperprior
from licexp.quant import StraightThroughQuantization

CONFIG = {
    "backbone": {"_target_": "licexp.backbones.MeanScaleHyperprior", "N": 16, "M": 24},
    "quant": {"_target_": "licexp.quant.StraightThroughQuantization"},
    "run_name": "small",
}


@pytest.fixture(scope="module")
def coded(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A licexp checkpoint of a small codec, a photo and the photo's bitstream file."""
    root = tmp_path_factory.mktemp("codec")
    torch.manual_seed(0)
    codec = MeanScaleHyperprior(16, 24, StraightThroughQuantization())
    state = {f"codec.{key}": value for key, value in codec.state_dict().items()}
    ckpt, photo, bitstream = root / "last.ckpt", root / "photo.png", root / "photo.lic"
    torch.save({"state_dict": state, "licexp_config": CONFIG}, ckpt)
    Image.effect_noise((37, 23), 40).convert("RGB").save(photo)
    assert cli.main(["encode", str(photo), "-o", str(bitstream), "--ckpt", str(ckpt)]) == 0
    return ckpt, photo, bitstream


@pytest.fixture
def umask():
    """Sets the process's umask for a test (``umask(value)``) and restores it after."""
    original = os.umask(0o022)
    os.umask(original)
    yield os.umask
    os.umask(original)


def error_line(capsys) -> str:
    """The only line the command wrote to stderr."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("command", ["encode", "decode", "info"])
@pytest.mark.parametrize(
    ("name", "problem"),
    [("folder", "is a directory, not an? \\w+ file"), ("missing.bin", "no such file")],
    ids=["directory", "missing"],
)
def test_a_directory_or_missing_input_is_one_line_with_exit_status_1(
    tmp_path, capsys, command, name, problem
) -> None:
    (tmp_path / "folder").mkdir()
    source = tmp_path / name
    args = [command, str(source)]
    if command != "info":
        args += ["-o", str(tmp_path / "out.bin"), "--ckpt", str(tmp_path / "none.ckpt")]
    assert cli.main(args) == 1
    assert re.fullmatch(f"licexp-codec: error: {source}: {problem}", error_line(capsys))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


@pytest.mark.parametrize("command", ["encode", "decode"])
@pytest.mark.parametrize(
    ("output", "why"),
    [
        ("missing/out.bin", "directory {root}/missing does not exist"),
        ("regular/out.bin", "{root}/regular is not a directory"),
        ("folder", "it is a directory"),
    ],
    ids=["missing-parent", "parent-is-a-file", "output-is-a-directory"],
)
def test_an_unwritable_output_fails_before_the_checkpoint_is_loaded(
    tmp_path, capsys, monkeypatch, coded, command, output, why
) -> None:
    _, photo, bitstream = coded
    (tmp_path / "folder").mkdir()
    (tmp_path / "regular").write_text("a file, not a folder")
    for work in ("load_codec", "load_rgb", "unpack", "code_image", "decode_container"):
        monkeypatch.setattr(cli, work, lambda *args, name=work: pytest.fail(f"{name} called"))
    source = photo if command == "encode" else bitstream
    out = tmp_path / output
    code = cli.main([command, str(source), "-o", str(out), "--ckpt", str(tmp_path / "none.ckpt")])
    assert code == 1
    expected = f"licexp-codec: error: cannot write {out}: {why.format(root=tmp_path)}"
    assert error_line(capsys) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "regular"]
    assert not list((tmp_path / "folder").iterdir())


@pytest.mark.parametrize(
    ("mask", "mode"), [(0o022, 0o644), (0o002, 0o664)], ids=["umask022", "umask002"]
)
def test_written_files_get_the_mode_open_would_give(tmp_path, umask, coded, mask, mode) -> None:
    ckpt, photo, _ = coded
    bitstream, decoded = tmp_path / "photo.lic", tmp_path / "decoded.png"
    umask(mask)
    assert cli.main(["encode", str(photo), "-o", str(bitstream), "--ckpt", str(ckpt)]) == 0
    assert cli.main(["decode", str(bitstream), "-o", str(decoded), "--ckpt", str(ckpt)]) == 0
    assert oct(bitstream.stat().st_mode & 0o777) == oct(mode)
    assert oct(decoded.stat().st_mode & 0o777) == oct(mode)
    with open(tmp_path / "reference", "w"):
        pass  # what the modes are meant to match
    assert oct((tmp_path / "reference").stat().st_mode & 0o777) == oct(mode)


def test_a_replaced_file_keeps_its_mode(tmp_path, umask, coded) -> None:
    ckpt, photo, _ = coded
    bitstream = tmp_path / "photo.lic"
    bitstream.write_bytes(b"old")
    bitstream.chmod(0o640)
    umask(0o022)
    assert cli.main(["encode", str(photo), "-o", str(bitstream), "--ckpt", str(ckpt)]) == 0
    assert bitstream.read_bytes() != b"old"
    assert oct(bitstream.stat().st_mode & 0o777) == oct(0o640)


def test_a_failed_write_leaves_neither_output_nor_temporary_file(tmp_path) -> None:
    target = tmp_path / "kept.png"
    target.write_bytes(b"before")

    def fail_halfway(path: Path) -> None:
        path.write_bytes(b"partial")
        raise ValueError("encoder failed")

    with pytest.raises(ValueError, match="encoder failed"):
        cli.write_atomically(target, fail_halfway)
    with pytest.raises(ValueError, match="encoder failed"):
        cli.write_atomically(tmp_path / "new.png", fail_halfway)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.png"]
    assert target.read_bytes() == b"before"


def test_a_damaged_file_decodes_to_no_output(tmp_path, capsys, coded) -> None:
    ckpt, _, bitstream = coded
    damaged, output = tmp_path / "damaged.lic", tmp_path / "out.png"
    damaged.write_bytes(bitstream.read_bytes()[:-3])
    assert cli.main(["decode", str(damaged), "-o", str(output), "--ckpt", str(ckpt)]) == 1
    assert "truncated" in error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["damaged.lic"]


def test_max_pixels_refuses_a_larger_image_before_the_checkpoint_loads(
    tmp_path, capsys, coded
) -> None:
    """The photo is 37 x 23 = 851 pixels: 850 refuses it, 851 decodes it."""
    ckpt, _, bitstream = coded
    output = tmp_path / "out.png"
    refused = ["decode", str(bitstream), "-o", str(output), "--max-pixels", "850"]
    assert cli.main([*refused, "--ckpt", str(tmp_path / "not-read.ckpt")]) == 1
    assert "a 23x37 image (851 pixels), more than the decoder's limit of 850" in error_line(capsys)
    assert not output.exists()
    accepted = ["decode", str(bitstream), "-o", str(output), "--max-pixels", "851"]
    assert cli.main([*accepted, "--ckpt", str(ckpt)]) == 0
    assert Image.open(output).size == (37, 23)
