"""Checkpoints that would run code when unpickled: refused by every entry point that opens
one, naming the type they ask for, and loaded only with the explicit opt-in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import run_main
from PIL import Image

from licexp import codec as codec_cli
from licexp import eval as licexp_eval
from licexp import train as licexp_train
from licexp.backbones import MeanScaleHyperprior
from licexp.checkpoints import (
    UntrustedCheckpointError,
    codec_from_checkpoint,
    init_weights,
    load_file,
)
from licexp.quant import StraightThroughQuantization

BACKBONE = {"_target_": "licexp.backbones.MeanScaleHyperprior", "N": 16, "M": 24}
CONFIG = {
    "backbone": BACKBONE,
    "quant": {"_target_": "licexp.quant.StraightThroughQuantization"},
    "lmbda": 0.0067,
    "run_name": "small",
}


class Payload:
    """Unpickling this object writes ``marker``: the side effect a hostile file would have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return MeanScaleHyperprior(16, 24, StraightThroughQuantization()).state_dict()


@pytest.fixture
def hostile(tmp_path) -> tuple[Path, Path, Path]:
    """A licexp checkpoint and a foreign (CompressAI zoo style) state dict, each with a
    payload beside valid weights, and the marker file the payload would write."""
    marker = tmp_path / "payload_ran"
    state = small_state()
    licexp_file, foreign_file = tmp_path / "last.ckpt", tmp_path / "zoo.pth.tar"
    torch.save(
        {
            "state_dict": {f"codec.{key}": value for key, value in state.items()},
            "licexp_config": CONFIG,
            "extra": Payload(marker),
        },
        licexp_file,
    )
    zoo_state = {
        key.replace("hyper_latent.", "").replace("latent.", ""): v for key, v in state.items()
    }
    torch.save({"state_dict": zoo_state, "extra": Payload(marker)}, foreign_file)
    return licexp_file, foreign_file, marker


def assert_refused(err: str, program: str, option: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith(f"{program}: error:")]
    assert len(errors) == 1, err
    assert "load exec," in errors[0] and option in errors[0], errors[0]
    assert "Traceback" not in err


def test_a_payload_is_refused_naming_its_type_and_the_opt_in_loads_it(hostile) -> None:
    licexp_file, _, marker = hostile
    with pytest.raises(UntrustedCheckpointError, match=r"load exec, .*trust_checkpoint=true"):
        load_file(licexp_file)
    assert not marker.exists()
    loaded = load_file(licexp_file, trust=True)
    assert marker.read_text() == "ran" and loaded["licexp_config"] == CONFIG


def test_licexps_own_and_plain_files_load_without_the_opt_in(tmp_path) -> None:
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": small_state(), "epoch": 3, "milestones": [1, 2]}, path)
    assert set(load_file(path)) == {"state_dict", "epoch", "milestones"}


@pytest.mark.parametrize("which", ["licexp", "foreign"])
def test_codec_from_checkpoint_and_init_weights_refuse_a_payload(hostile, which) -> None:
    licexp_file, foreign_file, marker = hostile
    path = licexp_file if which == "licexp" else foreign_file
    with pytest.raises(UntrustedCheckpointError, match="load exec,"):
        codec_from_checkpoint(path, backbone=BACKBONE)
    codec = MeanScaleHyperprior(16, 24, StraightThroughQuantization())
    with pytest.raises(UntrustedCheckpointError, match="load exec,"):
        init_weights(codec, path, BACKBONE)
    assert not marker.exists()
    codec_from_checkpoint(path, backbone=BACKBONE, trust=True)  # the importer path with it
    assert marker.exists()


@pytest.mark.parametrize(
    "overrides",
    [
        ["ckpt_path={licexp}"],
        ["init_from={licexp}"],
        ["init_from={foreign}", "backbone=mean_scale"],
        ["experiment=stage2", "init_from={licexp}"],
    ],
    ids=["resume", "init_from", "init_from-foreign", "stage2"],
)
def test_training_refuses_a_payload_before_opening_it(
    hostile, overrides, monkeypatch, capfd, tmp_path
) -> None:
    licexp_file, foreign_file, marker = hostile
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    given = [item.format(licexp=licexp_file, foreign=foreign_file) for item in overrides]
    argv = ["licexp-train", "debug=smoke", "evaluate=false", *given]
    assert run_main(licexp_train.main, argv, monkeypatch, tmp_path) == 1
    assert_refused(capfd.readouterr().err, "licexp-train", "trust_checkpoint=true")
    assert not marker.exists()


@pytest.mark.parametrize("which", ["licexp", "foreign"])
def test_evaluation_refuses_a_payload(hostile, which, monkeypatch, capfd, tmp_path) -> None:
    licexp_file, foreign_file, marker = hostile
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    path = licexp_file if which == "licexp" else foreign_file
    argv = ["licexp-eval", f"ckpt_path={path}", "backbone=mean_scale"]
    assert run_main(licexp_eval.main, argv, monkeypatch, tmp_path) == 1
    assert_refused(capfd.readouterr().err, "licexp-eval", "trust_checkpoint=true")
    assert not marker.exists()


def test_the_codec_cli_refuses_a_payload_and_loads_it_with_its_flag(hostile, capsys) -> None:
    licexp_file, _, marker = hostile
    photo, bitstream = licexp_file.with_name("photo.png"), licexp_file.with_name("photo.lic")
    Image.effect_noise((37, 23), 40).convert("RGB").save(photo)
    encode = ["encode", str(photo), "-o", str(bitstream), "--ckpt", str(licexp_file)]
    assert codec_cli.main(encode) == 1
    assert_refused(capsys.readouterr().err, "licexp-codec", "--trust-checkpoint")
    assert not marker.exists() and not bitstream.exists()
    assert codec_cli.main([*encode, "--trust-checkpoint"]) == 0
    assert marker.exists() and bitstream.stat().st_size > 0
