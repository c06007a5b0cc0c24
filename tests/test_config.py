"""Every config group option composes and instantiates; bad values fail with Hydra's help."""

from __future__ import annotations

import hydra
import lightning as L
import pytest
import torch
from helpers import compose_train, option_names
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from licexp.backbones import LearnedCodec
from licexp.config import instantiate_collection
from licexp.quant import QuantizationStrategy
from licexp.training import CodecModule, split_parameters


def test_default_config_is_the_embedded_cpu_run() -> None:
    cfg = compose_train()
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.data.train._target_.endswith("DeadLeavesDataset")
    assert cfg.data.test._target_.endswith("PhotoSamples")
    assert cfg.lmbda == cfg.model.loss.lmbda


@pytest.mark.parametrize("backbone", option_names("backbone"))
@pytest.mark.parametrize("quant", option_names("quant"))
def test_every_backbone_and_quantiser_builds_a_trainable_module(backbone, quant) -> None:
    cfg = compose_train([f"backbone={backbone}", f"quant={quant}", "debug=smoke"])
    quantizer = hydra.utils.instantiate(cfg.quant)
    assert isinstance(quantizer, QuantizationStrategy)
    codec = hydra.utils.instantiate(cfg.backbone, quantizer=quantizer)
    assert isinstance(codec, LearnedCodec)
    if codec.downsampling_factor > cfg.data.train.size:  # Tiny-LIC pads to 256: one such crop
        cfg.data.train.size, cfg.data.batch_size = codec.downsampling_factor, 1
    module = hydra.utils.instantiate(cfg.model, codec=codec)
    assert isinstance(module, CodecModule)
    optimizers, schedulers = module.configure_optimizers()
    assert len(optimizers) == 2 and len(schedulers) == 1
    assert_losses_reach_only_their_own_parameters(module)

    before = {name: p.detach().clone() for name, p in codec.named_parameters()}
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=hydra.utils.instantiate(cfg.data))
    assert trainer.global_step == 1, "the aux optimiser must not count as a training step"
    changed = {name for name, p in codec.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("g_a.0.") for name in changed), "the encoder trained"
    assert any(name.startswith("g_s.6.") for name in changed), "the decoder trained"
    assert any(name.endswith(".quantiles") for name in changed), "the aux step ran"


def assert_losses_reach_only_their_own_parameters(module: CodecModule) -> None:
    """The training step backpropagates RD + aux loss in one pass (one DDP reduction per
    step); that gives each optimiser the gradient of its own loss only if the RD loss
    leaves the quantiles alone and the aux loss every other parameter. DDP without a
    search for unused parameters needs every main parameter in the RD loss's graph
    (``autograd.grad`` without ``allow_unused`` raises otherwise)."""
    main, aux = split_parameters(module.codec.train())
    assert aux, "the codec has quantiles"
    side = max(64, module.codec.downsampling_factor)  # Tiny-LIC codes multiples of 256
    x = torch.rand(2 if side == 64 else 1, 3, side, side)
    rd_loss = module.loss(module.codec(x), x)["loss"]
    rd_on_aux = torch.autograd.grad(rd_loss, aux, allow_unused=True, retain_graph=True)
    assert all(grad is None or not grad.any() for grad in rd_on_aux)
    assert any(grad is not None and grad.any() for grad in torch.autograd.grad(rd_loss, main))
    aux_on_main = torch.autograd.grad(module.codec.aux_loss(), main, allow_unused=True)
    assert all(grad is None or not grad.any() for grad in aux_on_main)


NEEDS_FILES_OR_DEVICES = {
    ("data", "folder"),
    ("data", "kodak"),
    ("trainer", "gpu"),
    ("trainer", "ddp"),
}
"""Options that compose everywhere but instantiate only with image folders or a GPU."""


@pytest.mark.parametrize("group", ["data", "trainer", "logger", "callbacks"])
def test_every_option_of_the_other_groups_composes_and_instantiates(group, tmp_path) -> None:
    for option in option_names(group):
        cfg = compose_train([f"{group}={option}", f"paths.output_dir={tmp_path}"])
        if (group, option) in NEEDS_FILES_OR_DEVICES:
            continue
        if group in ("logger", "callbacks"):
            instantiate_collection(cfg[group])
        else:
            assert hydra.utils.instantiate(cfg[group]) is not None


@pytest.mark.parametrize("option", option_names("debug") + option_names("experiment"))
def test_debug_and_experiment_configs_compose(option) -> None:
    group = "debug" if option in option_names("debug") else "experiment"
    cfg = compose_train([f"{group}={option}"])
    assert OmegaConf.select(cfg, "trainer._target_") == "lightning.Trainer"


def test_a_wrong_group_value_lists_the_valid_options() -> None:
    with pytest.raises(ConfigCompositionException) as error:
        compose_train(["quant=rounding"])
    message = str(error.value) + str(error.value.__cause__)
    assert "noise" in message and "ste" in message


def test_lmbda_is_top_level_and_sweepable() -> None:
    cfg = compose_train(["lmbda=0.0018"])
    assert cfg.model.loss.lmbda == 0.0018
    assert cfg.run_name.endswith("lmbda0.0018")


def test_wandb_mode_sets_lightnings_offline_flag_and_a_wrong_mode_names_the_choices() -> None:
    offline = hydra.utils.instantiate(compose_train(["logger=wandb"]).logger.wandb)
    online = hydra.utils.instantiate(
        compose_train(["logger=wandb", "logger.wandb.mode=online"]).logger.wandb
    )
    assert (offline._offline, offline._wandb_init["mode"]) == (True, "offline")
    assert (online._offline, online._wandb_init["mode"]) == (False, "online")
    typo = compose_train(["logger=wandb", "logger.wandb.mode=onlin"]).logger.wandb
    with pytest.raises(InterpolationResolutionError, match=r"wandb.mode must be one of.*'onlin'"):
        hydra.utils.instantiate(typo)


def test_wandb_group_is_the_sweep_directory_in_a_multirun_and_none_in_a_single_run() -> None:
    sweep = ["logger=wandb", "hydra.mode=MULTIRUN", "hydra.sweep.dir=/sweeps/lambda_ladder"]
    assert compose_train(sweep).logger.wandb.group == "lambda_ladder"
    assert compose_train(["logger=wandb"]).logger.wandb.group is None


@pytest.mark.parametrize(
    ("overrides", "size"),
    [
        (["backbone=tiny_lic"], 256),  # its attention needs maps >= 7x7 at 1/16: crops of 256
        (["backbone=tiny_lic_small"], 64),
        (["backbone=mean_scale"], 64),
        (["backbone=tiny_lic", "data=kodak"], 256),
        (["backbone=tiny_lic", "train_crop_size=512"], 512),
    ],
)
def test_the_backbone_sets_the_embedded_training_crop(overrides, size) -> None:
    """``python -m licexp.train backbone=tiny_lic`` must train on the embedded data as is."""
    cfg = compose_train(overrides)
    assert cfg.data.train.size == size
    codec = hydra.utils.instantiate(cfg.backbone, quantizer=hydra.utils.instantiate(cfg.quant))
    assert size % codec.downsampling_factor == 0
