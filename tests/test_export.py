"""``licexp-export``: a licexp checkpoint as a CompressAI state dict, which CompressAI's own
classes and ``eval_model``'s loader load strictly and code to licexp's bytes; backbones and
strategies whose bytes no CompressAI model writes are refused, naming why."""

from __future__ import annotations

import re
from pathlib import Path

import hydra
import pytest
import torch
from helpers import (
    SMALL_MEAN_SCALE,
    SMALL_TINY_LIC,
    compose_train,
    compressai_eval_model,
    run_main,
)
from omegaconf import OmegaConf
from torch.nn.utils import parametrize

from licexp.checkpoints import codec_from_checkpoint
from licexp.compat import as_compressai
from licexp.data import PhotoSamples
from licexp.export import ExportError, compressai_model, main
from licexp.quant import NoiseQuantization, StraightThroughQuantization
from licexp.quant.fourier_qecm import FourierQECMQuantization
from licexp.quant.tcq import TrellisCodedQuantization

EVAL_MODEL = compressai_eval_model()


def write_checkpoint(path: Path, backbone: dict, quant: dict, scale: float = 1.0) -> None:
    """An untrained codec saved as training saves it (``codec.`` keys, the run config); a
    hyperprior's latent scaled up by ``scale`` (``z`` kept in range) makes ``y`` say something."""
    torch.manual_seed(0)
    codec = hydra.utils.instantiate(backbone, quantizer=hydra.utils.instantiate(quant))
    if scale != 1.0:
        last = codec.g_a[-1]
        with torch.no_grad():
            if parametrize.is_parametrized(last):  # W / sigma(W), sigma = u^T W v at inference
                last.parametrizations.weight[0]._u.div_(scale)
            else:
                last.weight.mul_(scale)
            codec.h_a[0].weight.div_(scale)
    state = {f"codec.{key}": value for key, value in codec.state_dict().items()}
    config = {"backbone": backbone, "quant": quant, "run_name": "export-test"}
    torch.save({"state_dict": state, "licexp_config": config}, path)


def run_config(*overrides: str) -> tuple[dict, dict]:
    cfg = compose_train(list(overrides))
    return OmegaConf.to_container(cfg.backbone), OmegaConf.to_container(cfg.quant)


def image() -> torch.Tensor:
    return PhotoSamples(["coffee"], crop_size=128)[0]["image"][None]


CASES = {
    "mean_scale_small+ste": (("backbone=mean_scale_small", "quant=ste"), (), "mbt2018-mean"),
    "bmshj2018+mixed": (
        ("backbone=bmshj2018", "backbone.N=32", "backbone.M=48", "quant=mixed"),
        (),
        "bmshj2018-hyperprior",
    ),
    "mean_scale_small+soft_ste (g_a folded)": (
        ("backbone=mean_scale_small", "quant=soft_ste"),
        (),
        "mbt2018-mean",
    ),
    "mean_scale_small+noise, exported with quant=noise_plus": (
        ("backbone=mean_scale_small", "quant=noise"),
        ("quant=noise_plus",),
        "mbt2018-mean",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize(("trained", "options", "architecture"), CASES.values(), ids=CASES)
def test_compressai_loads_the_export_strictly_and_writes_licexps_bytes(
    tmp_path, monkeypatch, capsys, trained, options, architecture
) -> None:
    ckpt, out = tmp_path / "last.ckpt", tmp_path / "exported" / "model.pth.tar"
    write_checkpoint(ckpt, *run_config(*trained), scale=5.0)
    argv = ["licexp-export", f"ckpt_path={ckpt}", f"out={out}", *options]
    assert run_main(main, argv, monkeypatch, tmp_path) == 0
    assert f"-a {architecture} -p {out}" in capsys.readouterr().out

    state = torch.load(out, weights_only=True)
    assert type(state) is dict and all(isinstance(v, torch.Tensor) for v in state.values())
    kind = EVAL_MODEL.architectures[architecture]
    model = kind(state["g_a.0.weight"].size(0), state["g_a.6.weight"].size(0))
    model.load_state_dict(state)  # strict
    model.update(force=True)
    loaded = EVAL_MODEL.load_checkpoint(architecture, False, str(out))  # eval_model's loader

    quant = [o.removeprefix("quant=") for o in options if o.startswith("quant=")]
    swap = hydra.utils.instantiate(compose_train([f"quant={quant[0]}"]).quant) if quant else None
    codec, _ = codec_from_checkpoint(ckpt, swap)
    x = image()
    with torch.no_grad():
        ours = as_compressai(codec).compress(x)
        theirs = model.compress(x)
        assert loaded.compress(x)["strings"] == theirs["strings"]
    assert theirs["strings"] == ours["strings"]
    assert tuple(theirs["shape"]) == tuple(ours["shape"])
    assert len(ours["strings"][0][0]) > 300  # y says something


REFUSALS = {
    "tiny_lic": (SMALL_TINY_LIC, StraightThroughQuantization, "TinyLIC has no CompressAI"),
    "tcq": (SMALL_MEAN_SCALE, TrellisCodedQuantization, "TrellisCodedQuantization writes Trellis"),
    "noise": (SMALL_MEAN_SCALE, NoiseQuantization, "codes round(y) - round(mu); CompressAI's Mean"),
    "fourier_qecm": (SMALL_MEAN_SCALE, FourierQECMQuantization, "codes a transformed latent"),
}


@pytest.mark.parametrize(("backbone", "strategy", "reason"), REFUSALS.values(), ids=REFUSALS)
def test_what_compressai_cannot_code_is_refused_naming_why(backbone, strategy, reason) -> None:
    codec = hydra.utils.instantiate(backbone, quantizer=strategy())
    with pytest.raises(ExportError, match=re.escape(reason)):
        compressai_model(codec)


@pytest.mark.slow
def test_a_zero_mean_model_exports_with_noise_whose_symbols_are_compressais() -> None:
    """Without a mean, ``noise``'s ``round(y)`` is CompressAI's ``round(y - 0)``."""
    scale_hyperprior = {**SMALL_MEAN_SCALE, "_target_": "licexp.backbones.ScaleHyperprior"}
    torch.manual_seed(0)
    codec = hydra.utils.instantiate(scale_hyperprior, quantizer=NoiseQuantization()).eval()
    with torch.no_grad():
        codec.g_a[-1].weight.mul_(20)
        codec.h_a[0].weight.div_(20)
    codec.update(force=True)
    model = compressai_model(codec)
    x = image()
    with torch.no_grad():
        ours = as_compressai(codec).compress(x)["strings"]
        assert model.compress(x)["strings"] == ours
    assert len(ours[0][0]) > 300


@pytest.mark.slow
def test_the_command_refuses_in_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys) -> None:
    ckpt, out = tmp_path / "last.ckpt", tmp_path / "model.pth.tar"
    write_checkpoint(ckpt, SMALL_MEAN_SCALE, run_config("quant=tcq")[1])
    argv = ["licexp-export", f"ckpt_path={ckpt}", f"out={out}"]
    assert run_main(main, argv, monkeypatch, tmp_path) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("licexp-export: error: TrellisCodedQuantization writes") and "\n" not in err
    )
    assert not out.exists()


def test_a_missing_checkpoint_option_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    assert run_main(main, ["licexp-export", "out=x.pth"], monkeypatch, tmp_path) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("licexp-export: error: Missing mandatory value: ckpt_path")
    assert "\n" not in err
