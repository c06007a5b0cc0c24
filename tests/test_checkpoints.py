"""Checkpoint reading: the newest run is found; foreign or damaged files fail clearly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from licexp.backbones import MeanScaleHyperprior
from licexp.checkpoints import (
    CheckpointError,
    check_resumable,
    codec_from_checkpoint,
    find_last_checkpoint,
    read_checkpoint,
)
from licexp.quant import StraightThroughQuantization
from licexp.quant.tcq import TrellisCodedQuantization

CONFIG = {
    "backbone": {"_target_": "licexp.backbones.MeanScaleHyperprior", "N": 16, "M": 24},
    "quant": {"_target_": "licexp.quant.StraightThroughQuantization"},
}


def write_checkpoint(path: Path, codec: torch.nn.Module, config: dict = CONFIG) -> None:
    state = {f"codec.{key}": value for key, value in codec.state_dict().items()}
    torch.save({"state_dict": state, "licexp_config": config}, path)


def test_codec_is_rebuilt_from_an_updated_checkpoint_and_decodes_the_same(tmp_path) -> None:
    codec = MeanScaleHyperprior(16, 24, StraightThroughQuantization()).eval()
    codec.prepare_for_coding()  # CDF buffers now have sizes a fresh model lacks
    write_checkpoint(tmp_path / "last.ckpt", codec)
    rebuilt, config = codec_from_checkpoint(tmp_path / "last.ckpt")
    rebuilt.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt.decompress(codec.compress(x)), codec(x).x_hat)
    assert config == CONFIG


def test_a_checkpoint_codes_with_another_strategy_on_its_own_weights(tmp_path) -> None:
    torch.manual_seed(0)
    codec = MeanScaleHyperprior(16, 24, StraightThroughQuantization()).eval()
    with torch.no_grad():
        codec.g_a[-1].weight.mul_(20)
    codec.update(force=True)
    write_checkpoint(tmp_path / "last.ckpt", codec)
    swapped, _ = codec_from_checkpoint(tmp_path / "last.ckpt", TrellisCodedQuantization())
    assert isinstance(swapped.quantizer, TrellisCodedQuantization)
    assert torch.equal(swapped.g_a[-1].weight, codec.g_a[-1].weight)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        reference, bitstreams = swapped.eval()(x), swapped.compress(x)
        assert torch.equal(swapped.decompress(bitstreams), reference.x_hat)
        assert bitstreams.strings["y"] != codec.compress(x).strings["y"]
    levels = (reference.latents["y_hat"] - reference.latents["means"]) / 0.5
    assert torch.allclose(levels, torch.round(levels), atol=1e-4)


def test_resuming_from_a_checkpoint_of_another_backbone_names_both(tmp_path) -> None:
    write_checkpoint(
        tmp_path / "last.ckpt", MeanScaleHyperprior(16, 24, StraightThroughQuantization())
    )
    check_resumable(tmp_path / "last.ckpt", CONFIG["backbone"])
    other = {**CONFIG["backbone"], "M": 32}
    with pytest.raises(CheckpointError, match=r"different backbone.*'M': 24.*'M': 32"):
        check_resumable(tmp_path / "last.ckpt", other)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path) -> None:
    write_checkpoint(
        tmp_path / "x.ckpt", MeanScaleHyperprior(16, 32, StraightThroughQuantization())
    )
    with pytest.raises(CheckpointError, match="does not match its backbone config"):
        codec_from_checkpoint(tmp_path / "x.ckpt")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"garbage", "not readable"), (None, "not a Lightning checkpoint"), ({}, "not written by")],
)
def test_damaged_or_foreign_files_are_refused(tmp_path, content, message) -> None:
    path = tmp_path / "bad.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save([1, 2] if content is None else {"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)


def test_missing_checkpoint_and_missing_runs_name_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        read_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="train a model first"):
        find_last_checkpoint(tmp_path)


def test_the_newest_last_checkpoint_is_found_in_runs_and_multiruns(tmp_path) -> None:
    paths = [
        tmp_path / "train/runs/a/checkpoints/last.ckpt",
        tmp_path / "train/multiruns/b/3/checkpoints/last.ckpt",
        tmp_path / "train/runs/c/checkpoints/last.ckpt",
    ]
    now = time.time()
    for age, path in zip((30, 10, 20), paths, strict=True):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        os.utime(path, (now - age, now - age))
    assert find_last_checkpoint(tmp_path) == paths[1]
