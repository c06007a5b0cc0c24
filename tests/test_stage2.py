"""Stage 2 (Borzechowski et al.): a part of a trained codec retrained on truly quantised latents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers import SMALL_MEAN_SCALE, SMALL_TINY_LIC, quiet_trainer
from test_evaluation import train_toy_codec

from licexp.backbones import LearnedCodec
from licexp.checkpoints import ATTACHED_KEY, build_codec, codec_from_checkpoint, init_weights
from licexp.data import DeadLeavesDataset, ImageDataModule
from licexp.gaps import discrete_gap
from licexp.training import CodecModule, RateDistortionLoss
from licexp.training.freezing import freeze_all_but

SOFT_STE = {"_target_": "licexp.quant.soft_ste.SoftSTEQuantization"}
STE = {"_target_": "licexp.quant.StraightThroughQuantization"}
NOISE = {"_target_": "licexp.quant.NoiseQuantization"}
TCQ = {"_target_": "licexp.quant.tcq.TrellisCodedQuantization"}
MEAN_SCALE, TINY_LIC = SMALL_MEAN_SCALE, SMALL_TINY_LIC


def stage1_checkpoint(
    path: Path, backbone: dict, quant: dict, codec: LearnedCodec | None = None
) -> Path:
    """A stage-1 checkpoint as licexp writes it, of ``codec`` or else of a seeded model whose
    encoder output is scaled up so that the latents span several symbols."""
    if codec is None:
        torch.manual_seed(0)
        codec = build_codec(backbone, quant)
        with torch.no_grad():
            for module in codec.g_a.modules():
                if isinstance(module, torch.nn.Conv2d):
                    last = module
            weight = getattr(last, "parametrizations", None)
            (weight.weight.original if weight is not None else last.weight).mul_(8)
    state = {f"codec.{key}": value for key, value in codec.state_dict().items()}
    config = {"backbone": backbone, "quant": quant, "lmbda": 0.01}
    torch.save({"state_dict": state, "licexp_config": config}, path)
    return path


def stage2_module(path: Path, quant: dict, roles: list[str]) -> CodecModule:
    """What ``experiment=stage2 init_from=path quant=...`` builds."""
    config = torch.load(path, weights_only=False)["licexp_config"]
    codec = build_codec(config["backbone"], quant, config["quant"])
    init_weights(codec, path, config["backbone"])
    codec.fit_quantiles()
    module = CodecModule(
        codec, RateDistortionLoss(0.01), torch.optim.Adam, torch.optim.Adam, trainable=roles
    )
    module.run_config = {"backbone": config["backbone"], "quant": quant}
    module.run_config[ATTACHED_KEY] = config["quant"]
    return module


class ModesDuringSteps(L.Callback):
    """Which codec modules were in train mode at every training step."""

    def __init__(self) -> None:
        self.training: list[set[str]] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: CodecModule, *args: Any) -> None:
        self.training.append({n for n, m in module.codec.named_modules() if n and m.training})


def train_steps(module: CodecModule, steps: int, out: Path) -> ModesDuringSteps:
    modes = ModesDuringSteps()
    data = ImageDataModule(
        DeadLeavesDataset(length=8, size=64, seed=1), DeadLeavesDataset(1, 64), batch_size=2
    )
    quiet_trainer(
        max_steps=steps,
        callbacks=[modes],
        enable_checkpointing=False,
        limit_val_batches=0,
        default_root_dir=out,
    ).fit(module, datamodule=data)
    return modes


def prepared_stage1(path: Path) -> LearnedCodec:
    codec, _ = codec_from_checkpoint(path)
    return codec


@pytest.mark.parametrize(
    ("roles", "trained"),
    [(["synthesis"], ("g_s",)), (["synthesis", "entropy_parameters"], ("g_s", "h_s"))],
    ids=["decoder", "decoder+hyper"],
)
def test_frozen_parameters_stay_and_frozen_modules_stay_in_eval_mode(
    tmp_path, roles, trained
) -> None:
    path = stage1_checkpoint(tmp_path / "stage1.ckpt", MEAN_SCALE, SOFT_STE)
    module = stage2_module(path, STE, roles)
    modes = train_steps(module, 3, tmp_path)
    before = dict(prepared_stage1(path).named_parameters())
    moved = {
        name
        for name, value in module.codec.named_parameters()
        if not torch.equal(value, before[name])
    }
    assert all(name.startswith(trained) for name in moved), moved
    for prefix in trained:
        assert any(name.startswith(prefix) for name in moved), f"{prefix} did not train"
    for training in modes.training:  # the encoder's spectral norm never iterates, etc.
        assert training == {
            name for name, _ in module.codec.named_modules() if name.startswith(trained)
        }
    frozen = [name for name, _ in module.codec.named_parameters() if name.startswith("g_a")]
    assert frozen and not any(module.codec.get_parameter(n).requires_grad for n in frozen)
    optimised = {
        id(p) for o in module.trainer.optimizers for g in o.param_groups for p in g["params"]
    }
    assert optimised == {id(p) for p in module.codec.parameters() if p.requires_grad}


@pytest.mark.parametrize("quant", [STE, TCQ], ids=["ste", "tcq"])
def test_a_stage2_step_is_the_real_bitstreams_rd_cost_and_the_discrete_gap_is_zero(
    tmp_path, quant
) -> None:
    """The loss a stage-2 step minimises is what coding the batch for real costs: the same
    reconstruction (so the same distortion) and the real bytes up to the coder's overhead."""
    trained = train_toy_codec(steps=200)  # a calibrated entropy model, unlike a random one
    path = stage1_checkpoint(tmp_path / "stage1.ckpt", MEAN_SCALE, NOISE, trained)
    module = stage2_module(path, quant, ["synthesis", "entropy_parameters"]).train()
    module.codec.update(force=True)
    x = torch.stack([DeadLeavesDataset(2, 256, seed=7)[i]["image"] for i in range(2)])
    output = module.codec(x)
    terms = module.loss(output, x)
    with torch.no_grad():
        inference = module.codec.eval()(x)
        strings = module.codec.compress(x).strings
        decoded = module.codec.decompress(module.codec.compress(x))
    module.train()
    # Exactly the inference pass: the same decoder input and the same likelihoods; the
    # reconstruction to rounding (with two threads g_s may sum in another order under
    # autograd); the decode is the inference pass bit for bit.
    assert torch.equal(inference.latents["y_hat"], output.latents["y_hat"].detach())
    assert torch.allclose(inference.x_hat, output.x_hat.detach(), rtol=0, atol=1e-5)
    assert torch.equal(decoded, inference.x_hat)
    for name, likelihoods in inference.likelihoods.items():
        assert torch.equal(likelihoods, output.likelihoods[name].detach()), name
    # ... and the real bytes, up to the coder's overhead (flushes, 16-bit pmfs) and, for
    # rounding, the coder's scale table: STE's rate takes the predicted scale, rANS the
    # table's (up to 13 % wider); TCQ's rate already takes the table's.
    tolerance = 0.05 if quant is TCQ else 0.10
    real_bpp = (
        sum(len(s) for per_latent in strings.values() for s in per_latent) * 8 / (x.numel() / 3)
    )
    assert terms["bpp"].item() == pytest.approx(real_bpp, rel=tolerance, abs=0.008)
    hard = module.codec.hard_latent(output.latents).decoder_input
    assert discrete_gap(hard, output.latents["y_hat"], 1.0).item() == 0
    terms["loss"].backward()  # the rate's gradient reaches the hyper decoder
    assert module.codec.h_s[0].weight.grad.abs().sum() > 0
    assert module.codec.g_a[0].weight.grad is None


@pytest.mark.parametrize(
    ("backbone", "stage1"), [(MEAN_SCALE, SOFT_STE), (TINY_LIC, STE)], ids=["soft_ste", "tiny_lic"]
)
@pytest.mark.parametrize("quant", [STE, TCQ], ids=["ste", "tcq"])
def test_stage2_runs_from_any_stage1_checkpoint_and_decodes_bit_exactly(
    tmp_path, backbone, stage1, quant
) -> None:
    path = stage1_checkpoint(tmp_path / "stage1.ckpt", backbone, stage1)
    module = stage2_module(path, quant, ["synthesis", "entropy_parameters"])
    train_steps(module, 2, tmp_path)
    stage2 = tmp_path / "stage2.ckpt"
    state = {f"codec.{key}": value for key, value in module.codec.state_dict().items()}
    torch.save({"state_dict": state, "licexp_config": module.run_config}, stage2)
    codec, _ = codec_from_checkpoint(stage2)
    assert type(codec.quantizer).__name__ == quant["_target_"].rsplit(".", 1)[1]
    x = DeadLeavesDataset(1, 128, seed=9)[0]["image"][None]
    with torch.no_grad():
        assert torch.equal(codec.decompress(codec.compress(x)), codec(x).x_hat)


def test_unknown_roles_and_nothing_to_train_are_refused(tmp_path) -> None:
    path = stage1_checkpoint(tmp_path / "stage1.ckpt", MEAN_SCALE, STE)
    with pytest.raises(ValueError, match=r"unknown role\(s\) \['decoder'\].*synthesis"):
        stage2_module(path, STE, ["decoder"])
    codec = build_codec(MEAN_SCALE, STE)
    frozen = ["quantizer", "g_a", "g_s", "h_a", "h_s", "hyper_latent", "latent"]
    assert sorted(freeze_all_but(codec, ["g_s"])) == sorted(set(frozen) - {"g_s"})
    assert all(p.requires_grad == n.startswith("g_s.") for n, p in codec.named_parameters())
