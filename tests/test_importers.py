"""Pretrained weights from elsewhere: CompressAI zoo state dicts (written by CompressAI's own
model classes) and Tiny-LIC release checkpoints (written in the release's documented key
layout) load into licexp's backbones and code as the originals do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from compressai.models import MeanScaleHyperprior as CompressAIMeanScale
from compressai.models import ScaleHyperprior as CompressAIScaleHyperprior
from helpers import SMALL_MEAN_SCALE, SMALL_TINY_LIC, code_and_decode, run_training

from licexp.backbones import TinyLIC
from licexp.checkpoints import CheckpointError, codec_from_checkpoint, init_weights
from licexp.data import PhotoSamples
from licexp.quant import StraightThroughQuantization

MEAN_SCALE = SMALL_MEAN_SCALE
SCALE_HYPERPRIOR = {**SMALL_MEAN_SCALE, "_target_": "licexp.backbones.ScaleHyperprior"}


def image() -> torch.Tensor:
    return PhotoSamples(["coffee"], crop_size=128)[0]["image"][None]


def old_entropy_bottleneck_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CompressAI's zoo files name the bottleneck's parameters ``_matrix0``, ``_bias0``, ..."""
    names = {"matrices": "_matrix", "biases": "_bias", "factors": "_factor"}
    return {
        re.sub(
            r"^entropy_bottleneck\.(matrices|biases|factors)\.(\d+)$",
            lambda m: f"entropy_bottleneck.{names[m[1]]}{m[2]}",
            key,
        ): value
        for key, value in state.items()
    }


def compressai_model(kind: type, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = kind(N=16, M=24)
    with torch.no_grad():  # latents that span many bins
        model.g_a[-1].weight.mul_(20)
        model.h_a[0].weight.div_(20)
    return model.eval()


@pytest.mark.parametrize(
    ("kind", "backbone"),
    [(CompressAIMeanScale, MEAN_SCALE), (CompressAIScaleHyperprior, SCALE_HYPERPRIOR)],
    ids=["mbt2018-mean", "bmshj2018-hyperprior"],
)
@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "wrapped-old-names"])
def test_compressai_zoo_state_dicts_code_byte_for_byte_as_compressai(
    tmp_path: Path, kind, backbone, wrapped
) -> None:
    original = compressai_model(kind)
    state = original.state_dict()
    if wrapped:  # a DataParallel training checkpoint with the zoo's old names, no GDN pedestals
        old = old_entropy_bottleneck_names(state)
        state = {"state_dict": {f"module.{k}": v for k, v in old.items() if "pedestal" not in k}}
    path = tmp_path / "zoo.pth.tar"
    torch.save(state, path)
    codec, config = codec_from_checkpoint(path, backbone=backbone)
    assert config["run_name"] == "zoo.pth.tar"
    original.update(force=True, update_quantiles=True)  # what prepare_for_coding does
    x = image()
    with torch.no_grad():
        ours = codec.compress(x)
        theirs = original.compress(x)
        assert ours.strings["y"] == theirs["strings"][0]
        assert ours.strings["z"] == theirs["strings"][1]
        assert len(ours.strings["y"][0]) > 200  # latents that say something
        their_image = original.decompress(theirs["strings"], theirs["shape"])["x_hat"]
        decoded = codec.decompress(ours).clamp(0, 1)  # CompressAI clamps
        assert (decoded - their_image).abs().max() < 1e-5  # channels-last g_s: float rounding
        codec.channels_last_synthesis = False
        assert torch.equal(codec.decompress(ours).clamp(0, 1), their_image)


def release_key(key: str) -> str:
    """A licexp Tiny-LIC key in the release's documented layout (lumingzzz/TinyLIC)."""
    key = re.sub(r"^(g_a|g_s|h_a|h_s)\.(\d+)\.blocks\.", r"\1\2.residual_group.blocks.", key)
    key = re.sub(r"^(g_a|g_s|h_a|h_s)\.(\d+)\.", r"\1\2.", key)
    key = key.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.2.", ".mlp.fc2.")
    key = re.sub(
        r"^context_model\.spatial_context\.(\d+)\.", lambda m: f"sc_transform_{int(m[1]) + 1}.", key
    )
    key = re.sub(
        r"^context_model\.entropy_parameters\.(\d+)\.",
        lambda m: f"entropy_parameters_{int(m[1]) + 1}.",
        key,
    )
    key = key.replace("context_model.channel_context.", "cc_transforms.")
    return key.replace("hyper_latent.", "").replace("latent.", "")


RELEASE_MASKS = {1: "A", 2: "B", 3: "C", 4: "B", 5: "B"}
"""The mask type of each ``sc_transform_k`` of the release (``MultistageMaskedConv2d``)."""


def release_mask(weight: torch.Tensor, kind: str) -> torch.Tensor:
    mask = torch.zeros_like(weight)
    if kind == "A":
        mask[:, :, 0::2, 0::2] = 1
    elif kind == "B":
        mask[:, :, 0::2, 1::2] = 1
        mask[:, :, 1::2, 0::2] = 1
    else:
        mask[:] = 1
        mask[:, :, 1:2, 1:2] = 0
    return mask


def test_a_tiny_lic_release_checkpoint_loads_and_codes_as_the_model_it_came_from(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    original = TinyLIC(
        **{k: v for k, v in SMALL_TINY_LIC.items() if k != "_target_"},
        quantizer=StraightThroughQuantization(),
    )
    release: dict[str, torch.Tensor] = {}
    for key, value in original.state_dict().items():
        release[release_key(key)] = value.clone()
    for index, kind in RELEASE_MASKS.items():
        weight = release[f"sc_transform_{index}.weight"]
        mask = release_mask(weight, kind)
        with torch.no_grad():  # the release saves weights its forward has masked in place
            original.context_model.spatial_context[index - 1].weight.mul_(mask)
        release[f"sc_transform_{index}.weight"] = weight * mask
        release[f"sc_transform_{index}.mask"] = mask
    # One unmasked weight: the importer masks it as the release's forward pass would.
    mask = release["sc_transform_2.mask"].bool()
    release["sc_transform_2.weight"] = torch.where(mask, release["sc_transform_2.weight"], 1.0)
    assert any(key.startswith("g_a1.residual_group.blocks.0.attn.rpb") for key in release)
    path = tmp_path / "tinylic_release.pth.tar"
    torch.save({"epoch": 10, "state_dict": {f"module.{k}": v for k, v in release.items()}}, path)

    codec, _ = codec_from_checkpoint(path, backbone=SMALL_TINY_LIC)
    original.prepare_for_coding()
    for key, value in original.state_dict().items():
        assert torch.equal(codec.state_dict()[key], value), key
    x = image()
    reference, bitstreams, decoded = code_and_decode(codec, x)
    theirs, their_bitstreams, _ = code_and_decode(original, x)
    assert bitstreams.strings == their_bitstreams.strings
    assert torch.equal(decoded, reference.x_hat)


def test_foreign_files_need_the_right_backbone_and_say_so(tmp_path: Path) -> None:
    path = tmp_path / "zoo.pth.tar"
    torch.save(compressai_model(CompressAIMeanScale).state_dict(), path)
    with pytest.raises(CheckpointError, match="needs the backbone it fits"):
        codec_from_checkpoint(path)
    with pytest.raises(CheckpointError, match="CompressAI's zoo: it needs backbone=mean_scale"):
        codec_from_checkpoint(path, backbone=SMALL_TINY_LIC)
    with pytest.raises(CheckpointError, match="other sizes than this backbone's config"):
        codec_from_checkpoint(path, backbone={**MEAN_SCALE, "N": 32})
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="neither a licexp checkpoint nor a state dict"):
        codec_from_checkpoint(other, backbone=MEAN_SCALE)


def test_init_from_a_zoo_state_dict_starts_training_from_its_weights(tmp_path: Path) -> None:
    original = compressai_model(CompressAIMeanScale)
    path = tmp_path / "mbt2018-mean.pth.tar"
    torch.save(original.state_dict(), path)
    from licexp.checkpoints import build_codec

    codec = build_codec(MEAN_SCALE, {"_target_": "licexp.quant.NoiseQuantization"})
    init_weights(codec, path, MEAN_SCALE)
    assert torch.equal(codec.g_a[0].weight, original.g_a[0].weight)
    run_dir = tmp_path / "run"
    result = run_training(
        "debug=smoke",
        "backbone=mean_scale",
        f"init_from={path}",
        "trainer.max_steps=2",
        "evaluate=false",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_eval_cli_evaluates_a_zoo_state_dict_with_the_backbone_override(tmp_path: Path) -> None:
    import csv
    import subprocess
    import sys

    from helpers import REPO_ROOT

    path = tmp_path / "mbt2018-mean.pth.tar"
    torch.save(compressai_model(CompressAIMeanScale).state_dict(), path)
    out = tmp_path / "eval"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "licexp.eval",
            f"ckpt_path={path}",
            "backbone=mean_scale",
            "backbone.N=16",
            "backbone.M=24",
            "data.test.names=[chelsea]",
            "data.test.crop_size=128",
            "anchors=[]",
            "padding=centred_zeros",
            f"hydra.run.dir={out}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "per_image.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["name"] for row in rows] == ["chelsea"]
    assert float(rows[0]["decode_error"]) == 0 and float(rows[0]["bpp"]) > 0
