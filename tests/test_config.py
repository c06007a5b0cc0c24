"""Every config group option composes and instantiates; bad values fail with Hydra's help."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from helpers import compose_train, option_names
from hydra.errors import ConfigCompositionException
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    InterpolationResolutionError,
    InterpolationToMissingValueError,
    MissingMandatoryValue,
)
from PIL import Image

from licexp.backbones import JiangLIC, LearnedCodec, MeanScaleHyperprior, TinyLIC
from licexp.callbacks import GapMetrics, LastCheckpoint, ParameterSummary, StepProgressBar
from licexp.config import instantiate_collection
from licexp.data import (
    DeadLeavesDataset,
    ImageDataModule,
    ImageFolder,
    Kodak,
    PhotoSamples,
    default_kodak_root,
)
from licexp.loggers import TensorBoardMedia, WandbMedia
from licexp.quant import QuantizationStrategy
from licexp.quant.mixed import MixedQuantization
from licexp.training import CodecModule, split_parameters
from licexp.training.checkpoint_io import AtomicCheckpointIO


def test_default_config_is_the_embedded_cpu_run() -> None:
    cfg = compose_train()
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.data.train._target_.endswith("DeadLeavesDataset")
    assert cfg.data.test._target_.endswith("PhotoSamples")
    assert cfg.lmbda == cfg.model.loss.lmbda


PAPER_SIZE_ONLY = {"jiang", "jiang_tiny"}
"""Trained with every strategy at CPU size (jiang_small, jiang_tiny_small: tests/test_jiang.py);
at the paper's size their 3D convolutions on 256x256 crops take a minute per step here."""


@pytest.mark.parametrize("backbone", sorted(set(option_names("backbone")) - PAPER_SIZE_ONLY))
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


def instantiated_data(overrides: list[str], tmp_path: Path) -> ImageDataModule:
    module = hydra.utils.instantiate(
        compose_train([*overrides, f"paths.output_dir={tmp_path}"]).data
    )
    assert isinstance(module, ImageDataModule)
    return module


def kodak_is_present() -> bool:
    try:
        return len(list(default_kodak_root().glob("kodim*.png"))) == 24
    except FileNotFoundError:
        return False


TESTED_OPTIONS = {
    "data": {"default", "folder", "kodak"},
    "trainer": {"cpu", "gpu", "ddp", "ddp_cpu"},
    "logger": {"csv", "none", "tensorboard", "wandb"},
    "callbacks": {"default", "none"},
    "debug": {"fdr", "smoke"},
    "ablation": {"baseline", "fexm_frm", "fenm_without_feature_loss", "fenm", "qecm"},
    "experiment": {
        "jiang",
        "lambda_finetune",
        "pan_mean_scale",
        "stage2",
        "stage2_hyper",
        "three_gaps",
        "tiny_lic",
    },
}
"""The options the tests below check one by one: a new option needs its own test."""


@pytest.mark.parametrize("group", sorted(TESTED_OPTIONS))
def test_every_option_of_the_groups_has_its_own_test(group) -> None:
    assert set(option_names(group)) == TESTED_OPTIONS[group]


def test_data_default_is_dead_leaves_for_training_and_photos_for_evaluation(tmp_path) -> None:
    data = instantiated_data([], tmp_path)
    assert isinstance(data.train_set, DeadLeavesDataset)
    assert (data.train_set.size, data.train_set.length, data.train_set.seed) == (64, 1000000, 42)
    assert isinstance(data.val_set, PhotoSamples) and isinstance(data.test_set, PhotoSamples)
    assert data.val_set.crop_size == 256 and data.test_set.crop_size is None
    photos = ["astronaut", "coffee", "chelsea", "motorcycle_left", "rocket"]
    assert data.val_set.names == data.test_set.names == photos
    assert (data.batch_size, data.val_batch_size, data.num_workers, data.seed) == (16, 1, 1, 42)


def test_data_folder_trains_and_validates_on_the_given_folder(tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for index in range(2):
        Image.new("RGB", (300, 260), (index * 100, 50, 200)).save(images / f"{index}.png")
    data = instantiated_data(["data=folder", f"data.train.root={images}"], tmp_path)
    assert isinstance(data.train_set, ImageFolder) and isinstance(data.val_set, ImageFolder)
    assert data.train_set.root == data.val_set.root == images
    assert (data.train_set.crop_size, data.train_set.train) == (256, True)
    assert data.train_set.crops_per_image == 1
    assert data.train_set.decoded.budget_bytes == 512 * 2**20  # per worker
    assert (data.val_set.crop_size, data.val_set.train) == (256, False)
    assert len(data.train_set) == len(data.val_set) == 2
    assert isinstance(data.test_set, PhotoSamples) and data.test_set.crop_size is None
    assert (data.batch_size, data.num_workers) == (8, 2)
    with pytest.raises(MissingMandatoryValue, match="data.train.root"):
        instantiated_data(["data=folder"], tmp_path)


def test_data_kodak_trains_on_dead_leaves_and_evaluates_on_kodak() -> None:
    """What can be checked without the images: the resolved config."""
    cfg = compose_train(["data=kodak"]).data
    assert hydra.utils.get_class(cfg.train._target_) is DeadLeavesDataset
    assert cfg.train.size == 128
    assert hydra.utils.get_class(cfg.val._target_) is Kodak
    assert hydra.utils.get_class(cfg.test._target_) is Kodak
    assert cfg.val.root is None and cfg.test.root is None  # the default folder, for both
    assert compose_train(["data=kodak", "data.val.root=/k"]).data.test.root == "/k"
    assert (cfg.batch_size, cfg.val_batch_size) == (8, 1)


@pytest.mark.skipif(
    not kodak_is_present(), reason="needs the 24 Kodak images (../shared/data/kodak)"
)
def test_data_kodak_builds_the_24_kodak_images(tmp_path) -> None:
    data = instantiated_data(["data=kodak"], tmp_path)
    assert isinstance(data.val_set, Kodak) and len(data.val_set) == 24
    assert isinstance(data.test_set, Kodak) and len(data.test_set) == 24


def instantiated_trainer(overrides: list[str], tmp_path: Path) -> L.Trainer:
    cfg = compose_train([*overrides, f"paths.output_dir={tmp_path}"])
    trainer = hydra.utils.instantiate(cfg.trainer)
    assert isinstance(trainer, L.Trainer)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert trainer.default_root_dir == str(tmp_path)
    return trainer


def test_trainer_cpu_is_one_cpu_process_with_atomic_checkpoints(tmp_path) -> None:
    trainer = instantiated_trainer(["trainer=cpu"], tmp_path)
    assert isinstance(trainer.accelerator, CPUAccelerator)
    assert isinstance(trainer.strategy, SingleDeviceStrategy) and trainer.num_devices == 1
    assert (trainer.max_steps, trainer.val_check_interval) == (2000, 1000)
    assert trainer.log_every_n_steps == 10


def test_trainer_ddp_cpu_is_two_gloo_processes(tmp_path) -> None:
    trainer = instantiated_trainer(["trainer=ddp_cpu"], tmp_path)
    assert isinstance(trainer.accelerator, CPUAccelerator)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2
    assert trainer.strategy.process_group_backend == "gloo"
    assert trainer.max_steps == 2000  # the rest is trainer=cpu's


def test_trainer_gpu_and_ddp_resolve_to_long_gpu_runs() -> None:
    """What can be checked without a GPU: the resolved config, and the DDP strategy."""
    gpu = compose_train(["trainer=gpu"]).trainer
    assert (gpu.accelerator, gpu.devices, gpu.max_steps) == ("gpu", 1, 2000000)
    assert (gpu.val_check_interval, gpu.log_every_n_steps) == (5000, 100)
    assert [p._target_ for p in gpu.plugins] == ["licexp.training.checkpoint_io.AtomicCheckpointIO"]
    ddp = compose_train(["trainer=ddp"]).trainer
    assert (ddp.accelerator, ddp.devices, ddp.num_nodes, ddp.max_steps) == ("gpu", -1, 1, 2000000)
    assert ddp.strategy.find_unused_parameters is False
    strategy = hydra.utils.instantiate(ddp.strategy)
    assert isinstance(strategy, DDPStrategy) and strategy.process_group_backend == "nccl"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("option", ["gpu", "ddp"])
def test_trainer_gpu_and_ddp_build_on_a_gpu(option, tmp_path) -> None:
    trainer = instantiated_trainer([f"trainer={option}"], tmp_path)
    assert isinstance(trainer.accelerator, CUDAAccelerator)
    strategy = DDPStrategy if option == "ddp" else SingleDeviceStrategy
    assert isinstance(trainer.strategy, strategy)
    assert trainer.num_devices == (torch.cuda.device_count() if option == "ddp" else 1)


def test_logger_csv_writes_into_the_run_directory(tmp_path) -> None:
    (csv,) = instantiate_collection(compose_train([f"paths.output_dir={tmp_path}"]).logger)
    assert isinstance(csv, CSVLogger)
    assert (csv.save_dir, csv.name, csv.version) == (str(tmp_path), "csv", "")


def test_logger_wandb_is_offline_in_the_run_directory(tmp_path) -> None:
    cfg = compose_train(["logger=wandb", f"paths.output_dir={tmp_path}"])
    (wandb,) = instantiate_collection(cfg.logger)
    assert isinstance(wandb, WandbLogger)
    init = wandb._wandb_init
    assert (init["project"], init["name"], init["dir"]) == ("licexp", cfg.run_name, str(tmp_path))
    assert init["tags"] == ["mean_scale_small", "noise", "lmbda=0.0067"]
    assert wandb._offline and wandb._log_model is False


@pytest.mark.parametrize("group", ["logger", "callbacks"])
def test_logger_and_callbacks_none_build_nothing(group) -> None:
    assert instantiate_collection(compose_train([f"{group}=none"]).get(group)) == []


def test_callbacks_default_builds_checkpoints_progress_gaps_and_media(tmp_path) -> None:
    built = instantiate_collection(compose_train([f"paths.output_dir={tmp_path}"]).callbacks)
    assert [type(c) for c in built] == [
        ModelCheckpoint,
        LastCheckpoint,
        StepProgressBar,
        ParameterSummary,
        GapMetrics,
        WandbMedia,
        TensorBoardMedia,
    ]
    best, last, _, _, gaps, media, tb_media = built
    assert (best.monitor, best.mode) == ("val/loss", "min")
    assert (best.save_top_k, best.save_last) == (1, False)
    assert best.dirpath == str(tmp_path / "checkpoints")
    assert (last.dirpath, last.every_n_steps) == (tmp_path / "checkpoints", 250)
    assert (gaps.every_n_steps, gaps.p, gaps.lss_samples, gaps.lss_scale) == (50, 1.0, 4, 0.5)
    assert media.reconstructions == tb_media.reconstructions == 2


def choice(cfg: DictConfig, group: str) -> str:
    return cfg.hydra.runtime.choices[group]


def check_fdr(cfg: DictConfig) -> None:
    assert cfg.trainer.fast_dev_run is True
    assert cfg.evaluate is False


def check_smoke(cfg: DictConfig) -> None:
    assert (cfg.backbone.N, cfg.backbone.M) == (16, 24)
    assert (cfg.data.batch_size, cfg.data.num_workers, cfg.data.train.size) == (2, 0, 64)
    assert cfg.data.val.crop_size == 64 and cfg.data.test.crop_size == 128
    assert list(cfg.data.val.names) == list(cfg.data.test.names) == ["astronaut", "coffee"]
    trainer = cfg.trainer
    assert (trainer.max_steps, trainer.val_check_interval, trainer.log_every_n_steps) == (4, 2, 1)
    assert trainer.num_sanity_val_steps == 0
    assert list(cfg.evaluation.anchors) == ["jpeg"]
    assert cfg.callbacks.progress_bar is not None  # a smoke run shows its steps
    assert cfg.callbacks.gap_metrics is not None


PAN_CHOICES = ["mean_scale", "folder", "gpu"]


def check_pan_mean_scale(cfg: DictConfig) -> None:
    assert [choice(cfg, g) for g in ("backbone", "data", "trainer")] == PAN_CHOICES
    assert hydra.utils.get_class(cfg.backbone._target_) is MeanScaleHyperprior
    assert (cfg.backbone.N, cfg.backbone.M) == (128, 192)
    assert cfg.lmbda == cfg.model.loss.lmbda == 0.01
    assert (cfg.data.batch_size, cfg.data.num_workers, cfg.data.train.crop_size) == (2, 8, 256)
    assert cfg.model.optimizer.lr == 1e-4
    scheduler = cfg.model.scheduler
    assert (scheduler.milestone_fraction, scheduler.gamma, scheduler.total_steps) == (
        0.75,
        0.1,
        2000000,
    )
    assert (cfg.trainer.accelerator, cfg.trainer.max_steps) == ("gpu", 2000000)
    assert cfg.init_from is None


def check_lambda_finetune(cfg: DictConfig) -> None:
    assert OmegaConf.is_missing(cfg, "base_checkpoint")
    with pytest.raises(InterpolationToMissingValueError):
        _ = cfg.init_from
    cfg = compose_train(["experiment=lambda_finetune", "base_checkpoint=/runs/base/last.ckpt"])
    assert cfg.init_from == "/runs/base/last.ckpt"
    assert cfg.model.optimizer.lr == 1e-4 and cfg.model.scheduler is None
    assert cfg.trainer.max_steps == 100000
    # The rest is pan_mean_scale's.
    assert (cfg.backbone.N, cfg.backbone.M, cfg.lmbda) == (128, 192, 0.01)
    assert [choice(cfg, g) for g in ("backbone", "data", "trainer")] == PAN_CHOICES


def check_three_gaps(cfg: DictConfig) -> None:
    assert cfg.lmbda == cfg.model.loss.lmbda == 0.01
    assert cfg.callbacks.gap_metrics.every_n_steps == 25
    assert cfg.callbacks.gap_metrics.lss_samples == 4  # the rest of the callback is unchanged
    strategies = cfg.hydra.sweeper.params.quant.split(",")
    assert strategies == ["noise", "noise_plus", "ste", "ste_sn", "soft_ste"]
    assert set(strategies) <= set(option_names("quant"))
    assert [choice(cfg, g) for g in ("backbone", "data", "trainer")] == [
        "mean_scale_small",
        "default",
        "cpu",
    ]


def check_tiny_lic(cfg: DictConfig) -> None:
    assert [choice(cfg, g) for g in ("backbone", "quant", "data", "trainer")] == [
        "tiny_lic",
        "mixed",
        "folder",
        "gpu",
    ]
    assert hydra.utils.get_class(cfg.backbone._target_) is TinyLIC
    assert hydra.utils.get_class(cfg.quant._target_) is MixedQuantization
    assert cfg.train_crop_size == 256
    assert (cfg.data.batch_size, cfg.data.num_workers, cfg.data.train.crop_size) == (8, 8, 256)
    assert cfg.model.optimizer.lr == 1e-4 and cfg.model.clip_grad_norm == 1.0
    assert cfg.trainer.accelerator == "gpu"


def check_jiang(cfg: DictConfig) -> None:
    assert [choice(cfg, g) for g in ("backbone", "quant", "data", "trainer")] == [
        "jiang",
        "fourier_qecm",
        "folder",
        "gpu",
    ]
    assert hydra.utils.get_class(cfg.backbone._target_) is JiangLIC
    assert cfg.quant.harmonics == 5
    assert (cfg.data.batch_size, cfg.data.train.crop_size) == (8, 256)
    assert cfg.model.optimizer.lr == 1e-4
    # 1e-4 -> 1e-5 -> 1e-6 after 400 and 550 of 600 epochs; lambda_e = 1 for 200 of 600.
    assert list(cfg.model.scheduler.milestone_fraction) == pytest.approx([400 / 600, 550 / 600])
    assert cfg.model.scheduler.gamma == 0.1
    assert cfg.model.loss.feature_weight.value == 1.0
    assert cfg.model.loss.feature_weight.until_fraction == pytest.approx(200 / 600)


def check_stage2(cfg: DictConfig, trainable: list[str] | None = None) -> None:
    assert choice(cfg, "quant") == "ste"
    assert list(cfg.model.trainable) == (trainable or ["synthesis"])
    assert cfg.model.optimizer.lr == 1e-4
    assert cfg.init_from is None  # the stage-1 checkpoint is required, and its lambda used:
    with pytest.raises(InterpolationResolutionError, match="pass init_from="):
        _ = cfg.lmbda


def check_stage2_hyper(cfg: DictConfig) -> None:
    check_stage2(cfg, trainable=["synthesis", "entropy_parameters"])


DEBUG_AND_EXPERIMENT_CHECKS = {
    ("debug", "fdr"): check_fdr,
    ("debug", "smoke"): check_smoke,
    ("experiment", "jiang"): check_jiang,
    ("experiment", "lambda_finetune"): check_lambda_finetune,
    ("experiment", "pan_mean_scale"): check_pan_mean_scale,
    ("experiment", "stage2"): check_stage2,
    ("experiment", "stage2_hyper"): check_stage2_hyper,
    ("experiment", "three_gaps"): check_three_gaps,
    ("experiment", "tiny_lic"): check_tiny_lic,
}


@pytest.mark.parametrize(
    ("group", "option"), sorted(DEBUG_AND_EXPERIMENT_CHECKS), ids=lambda value: value
)
def test_debug_and_experiment_configs_set_their_own_values(group, option) -> None:
    default = compose_train()
    cfg = compose_train([f"{group}={option}"])
    assert choice(cfg, group) == option
    assert cfg != default
    DEBUG_AND_EXPERIMENT_CHECKS[group, option](cfg)


ABLATION_ROWS = {  # Table V: row -> backbone, quantiser, FEnM, lambda_e in the first third
    "baseline": ("tiny_lic", "noise", None, None),
    "fexm_frm": ("jiang", "noise", False, 1.0),
    "fenm_without_feature_loss": ("jiang", "noise", True, 0.0),
    "fenm": ("jiang", "noise", True, 1.0),
    "qecm": ("jiang", "fourier_qecm", True, 1.0),
}


@pytest.mark.parametrize("row", sorted(ABLATION_ROWS))
def test_each_ablation_row_sets_the_modules_of_its_row_of_table_v(row) -> None:
    cfg = compose_train(["experiment=jiang", f"ablation={row}"])
    backbone, quant, enhancement, weight = ABLATION_ROWS[row]
    assert (choice(cfg, "backbone"), choice(cfg, "quant")) == (backbone, quant)
    assert cfg.backbone.get("enhancement") == enhancement
    schedule = cfg.model.loss.get("feature_weight")
    assert (schedule.value if schedule else None) == weight
    assert cfg.run_name.endswith(f"-{row}")
    assert cfg.model.optimizer.lr == 1e-4  # the recipe of experiment=jiang stays


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
        (["backbone=jiang"], 256),
        (["backbone=jiang_small"], 64),
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


@pytest.mark.parametrize("data", sorted(TESTED_OPTIONS["data"]))
def test_debug_smoke_builds_every_data_option_with_its_small_crops(data, tmp_path) -> None:
    """``debug=smoke`` sets the shared ``train_crop_size`` and ``photo_names`` that every
    data option reads, never a key of one dataset (``data.train.size`` is dead leaves')."""
    overrides = ["debug=smoke", f"data={data}"]
    if data == "folder":
        images = tmp_path / "images"
        images.mkdir()
        for index in range(3):
            Image.new("RGB", (96, 80), (index * 80, 50, 200)).save(images / f"{index}.png")
        overrides.append(f"data.train.root={images}")
    if data == "kodak" and not kodak_is_present():
        pytest.skip("needs the 24 Kodak images (../shared/data/kodak)")
    module = instantiated_data(overrides, tmp_path)
    assert module.train_set[0]["image"].shape == (3, 64, 64)
    assert module.val_set[0]["image"].shape == (3, 64, 64)
    assert module.eval_dataset[0]["image"].shape == (3, 128, 128)
    assert len(module.eval_dataset) == (24 if data == "kodak" else 2)  # the two smoke photos
    assert (module.batch_size, module.num_workers) == (2, 0)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["jiang", "pan_mean_scale", "lambda_finetune"])
@pytest.mark.parametrize("scheduler", ["step", "cosine", "plateau", "none"])
def test_every_scheduler_replaces_a_recipes_schedule_whole(recipe, scheduler) -> None:
    """A recipe's schedule is an option of the scheduler group, so ``scheduler=...`` on the
    command line swaps it without leaving the recipe's keys behind (they made cosine fail)."""
    overrides = [f"experiment={recipe}", f"scheduler={scheduler}"]
    if recipe == "lambda_finetune":
        overrides.append("base_checkpoint=x.ckpt")
    config = compose_train(overrides).model.scheduler
    if scheduler == "none":
        assert config is None
        return
    option = OmegaConf.load(Path(__file__).parents[1] / "conf" / "scheduler" / f"{scheduler}.yaml")
    assert set(config) == set(option)
    schedule = hydra.utils.instantiate(config)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-4)
    assert schedule(optimizer=optimizer) is not None
