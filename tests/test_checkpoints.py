"""Checkpoint reading: the newest run is found; foreign or damaged files fail clearly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from licexp.backbones import MeanScaleHyperprior
from licexp.checkpoints import (
    CheckpointError,
    check_resumable,
    codec_from_checkpoint,
    find_last_checkpoint,
    init_weights,
    read_checkpoint,
)
from licexp.quant import StraightThroughQuantization
from licexp.quant.tcq import TrellisCodedQuantization
from licexp.training import CodecModule, RateDistortionLoss

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


@pytest.mark.parametrize(
    ("key", "given", "stored_text", "given_text"),
    [
        ("backbone", {**CONFIG["backbone"], "M": 32}, "'M': 24", "'M': 32"),
        ("quant", {"_target_": "licexp.quant.NoiseQuantization"}, "StraightThrough", "Noise"),
        ("lmbda", 0.013, "0.0067", "0.013"),
    ],
)
def test_resuming_with_another_backbone_quantiser_or_lambda_names_both_values(
    tmp_path, key, given, stored_text, given_text
) -> None:
    stored = {**CONFIG, "lmbda": 0.0067}
    write_checkpoint(
        tmp_path / "last.ckpt", MeanScaleHyperprior(16, 24, StraightThroughQuantization()), stored
    )
    assert check_resumable(tmp_path / "last.ckpt", stored) == stored
    changed = {**stored, key: given}
    with pytest.raises(CheckpointError, match=rf"{key}=.*{stored_text}.*{key}=.*{given_text}"):
        check_resumable(tmp_path / "last.ckpt", changed)
    assert check_resumable(tmp_path / "last.ckpt", changed, allow_changes=True) == stored


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


ENTROPY_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def entropy_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: buffer
        for name, buffer in module.named_buffers()
        if name.rsplit(".", 1)[-1] in ENTROPY_BUFFERS
    }


def tiny_codec_module(seed: int) -> CodecModule:
    torch.manual_seed(seed)
    codec = MeanScaleHyperprior(16, 24, StraightThroughQuantization())
    return CodecModule(codec, RateDistortionLoss(0.01), torch.optim.Adam, torch.optim.Adam)


@pytest.fixture(scope="module")
def updated_lightning_checkpoint(tmp_path_factory) -> tuple[Path, CodecModule]:
    """A checkpoint written by Lightning after a training step, with the CDF tables built."""
    module = tiny_codec_module(seed=0)
    module.run_config = CONFIG
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    images = [{"image": torch.rand(3, 64, 64)} for _ in range(2)]
    trainer.fit(module, torch.utils.data.DataLoader(images, batch_size=2))
    module.codec.prepare_for_coding()
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path, module


def assert_decodes_the_trained_models_bitstreams(loaded: CodecModule, trained: CodecModule):
    """The loaded tables are the trained model's, as are those the loaded weights build (a
    loaded model codes after ``update``: which strategy built the tables is not saved), and
    the loaded model decodes the trained model's bitstreams to its reconstruction."""
    expected = entropy_buffers(trained)
    assert all(buffer.numel() > 0 for buffer in expected.values())
    buffers = entropy_buffers(loaded)
    assert set(buffers) == set(expected)
    assert all(torch.equal(buffers[name], expected[name]) for name in expected)
    loaded.codec.update(force=True)
    rebuilt = entropy_buffers(loaded)
    assert all(torch.equal(rebuilt[name], expected[name]) for name in expected)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        bitstreams = trained.codec.eval().compress(x)
        assert torch.equal(loaded.codec.eval().decompress(bitstreams), trained.codec(x).x_hat)


def test_init_from_loads_updated_cdf_tables_into_a_fresh_module(
    updated_lightning_checkpoint,
) -> None:
    path, trained = updated_lightning_checkpoint
    fresh = tiny_codec_module(seed=1)
    assert all(buffer.numel() == 0 for buffer in entropy_buffers(fresh).values())
    init_weights(fresh.codec, path, CONFIG["backbone"])
    assert_decodes_the_trained_models_bitstreams(fresh, trained)


def test_lightning_loads_updated_cdf_tables_into_a_fresh_module(
    updated_lightning_checkpoint,
) -> None:
    """``CodecModule.on_load_checkpoint`` resizes the tables before Lightning loads them."""
    path, trained = updated_lightning_checkpoint
    torch.manual_seed(1)
    loaded = CodecModule.load_from_checkpoint(
        path,
        map_location="cpu",
        weights_only=False,
        codec=MeanScaleHyperprior(16, 24, StraightThroughQuantization()),
        loss=RateDistortionLoss(0.01),
        optimizer=torch.optim.Adam,
        aux_optimizer=torch.optim.Adam,
    )
    assert_decodes_the_trained_models_bitstreams(loaded, trained)
