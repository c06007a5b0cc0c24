"""Helpers shared by the tests: config composition, paths to optional data, training runs."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from compressai.models.base import get_scale_table
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from licexp.backbones import Bitstreams, CodecOutput, LearnedCodec, MeanScaleHyperprior
from licexp.backbones.latent_coders import SymbolTableConditional
from licexp.config import register_resolvers
from licexp.quant import StraightThroughQuantization

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
SHARED_DIR = REPO_ROOT.parent / "shared"


def quiet_trainer(**settings: object) -> L.Trainer:
    """A CPU Lightning trainer without logger, progress bar or model summary."""
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    return L.Trainer(accelerator="cpu", **{**quiet, **settings})


def compose_train(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Composes a config like ``python -m licexp.train`` would, with Hydra's runtime set."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides or [], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_main(main, argv: list[str], monkeypatch, cwd: Path) -> int:
    """A console script's ``main`` run in-process as typed in ``cwd``: its exit status."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", argv)
    try:
        main()
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


def informative_codec(seed: int = 0, quantizer=None) -> MeanScaleHyperprior:
    """A small codec whose latents span many bins (g_a scaled up), ready to code; the same
    weights in every process for the same ``seed``."""
    torch.manual_seed(seed)
    codec = MeanScaleHyperprior(N=16, M=24, quantizer=quantizer or StraightThroughQuantization())
    with torch.no_grad():
        codec.g_a[-1].weight.mul_(30)
        codec.h_a[0].weight.div_(30)
    codec.prepare_for_coding()
    return codec


def code_and_decode(
    codec: LearnedCodec, x: torch.Tensor
) -> tuple[CodecOutput, Bitstreams, torch.Tensor]:
    """The hard forward pass of ``x``, its real bitstreams and their decode (no gradients).

    ``codec`` must be in eval mode with its CDFs updated.
    """
    with torch.no_grad():
        reference = codec(x)
        bitstreams = codec.compress(x)
        decoded = codec.decompress(bitstreams)
    return reference, bitstreams, decoded


def gaussian_table_model() -> SymbolTableConditional:
    """A Gaussian entropy model with CompressAI's 64-scale table, its CDF tables built."""
    model = SymbolTableConditional()
    model.update_scale_table(get_scale_table(), force=True)
    return model


def option_names(group: str) -> list[str]:
    """The options of a config group, from the files in ``conf/<group>/``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def run_training(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m licexp.train`` with ``tests/`` importable by every rank (the probes)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "HYDRA_FULL_ERROR": "0",
        "PYTHONWARNINGS": "ignore",
    }
    return subprocess.run(
        [sys.executable, "-m", "licexp.train", *overrides],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def payload_bpp(container: bytes, pixels: int) -> float:
    """Bits per pixel of a container's strings alone (what the entropy model estimates)."""
    from licexp.evaluation.bitstream import unpack

    strings = unpack(container).bitstreams.strings
    return 8 * sum(len(string[0]) for string in strings.values()) / pixels


SMALL_MEAN_SCALE = {"_target_": "licexp.backbones.MeanScaleHyperprior", "N": 16, "M": 24}
"""Backbone configs of a few thousand parameters, as a run config records them."""
SMALL_TINY_LIC = {
    "_target_": "licexp.backbones.TinyLIC",
    "N": 16,
    "M": 24,
    "depths": [1, 1, 1, 1],
    "hyper_depths": [1, 1],
    "kernel_size": 3,
    "hyper_kernel_size": 1,
}


def compressai_eval_model():
    """CompressAI's ``eval_model`` module. Importing it switches torch to one thread and
    cuDNN to deterministic algorithms for the whole process; both are restored here."""
    threads, deterministic = torch.get_num_threads(), torch.backends.cudnn.deterministic
    module = importlib.import_module("compressai.utils.eval_model.__main__")
    torch.set_num_threads(threads)
    torch.backends.cudnn.deterministic = deterministic
    return module


def check_straight_through_training(strategy) -> None:
    """An inference-time search strategy (TCQ, RDOQ) in training: the decoder sees the
    encoder's hard reconstruction, the rate is its indices' code length, the gradient reaches
    ``y`` as the identity and the entropy parameters through the cells' likelihoods."""
    from licexp.quant import EntropyParameters

    torch.manual_seed(2)
    y = (torch.randn(2, 3, 4, 6) * 2).requires_grad_(True)
    means = torch.randn(2, 3, 4, 6).requires_grad_(True)
    scales = (torch.rand(2, 3, 4, 6) + 0.5).requires_grad_(True)
    parameters = EntropyParameters(scales, means)
    trained = strategy.quantize_train(y, parameters, None)
    hard = strategy.symbol_coding.encode(
        y.detach(), parameters.map(torch.Tensor.detach), gaussian_table_model()
    )
    assert torch.allclose(trained.decoder_input.detach(), hard.reconstruction, atol=1e-6)
    assert torch.allclose(trained.likelihoods.detach(), hard.likelihoods)
    (trained.decoder_input.sum() - torch.log2(trained.likelihoods).sum()).backward()
    assert torch.equal(y.grad, torch.ones_like(y)), "identity gradient through the search"
    assert means.grad.abs().sum() > 0 and scales.grad.abs().sum() > 0
