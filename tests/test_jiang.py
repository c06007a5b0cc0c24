"""Jiang et al.'s codec: FExM's exact split, the modules' structure and sizes against the
paper, training with every strategy, the feature loss and its schedule, real bitstreams."""

from __future__ import annotations

import copy
import csv
import subprocess
import sys

import hydra
import pytest
import torch
from helpers import code_and_decode, compose_train, option_names, run_training

from licexp.backbones import JiangLIC, TinyLIC
from licexp.backbones.concatenated_residual import ConcatenatedResidual, absorb_crm_gain
from licexp.backbones.jiang.enhancement import DenseBlock, FeatureEnhancement
from licexp.backbones.jiang.extraction import (
    FeatureExtraction,
    InverseFeatureExtraction,
    merge_subimages,
    split_into_subimages,
)
from licexp.backbones.jiang.refinement import (
    AttentionRefinementBlock,
    ConcatenatedResidual3d,
    StackToFeature,
)
from licexp.backbones.tiny_lic import padding_multiple
from licexp.complexity import count_macs, parameter_count
from licexp.quant import QuantizationStrategy
from licexp.training import RateDistortionLoss
from licexp.training.schedules import WeightUntil

STRATEGIES = option_names("quant")


def strategy(name: str) -> QuantizationStrategy:
    return hydra.utils.instantiate(compose_train([f"quant={name}"]).quant)


def backbone(name: str, quant: str = "ste", *extra: str) -> JiangLIC:
    cfg = compose_train([f"backbone={name}", f"quant={quant}", *extra])
    return hydra.utils.instantiate(cfg.backbone, quantizer=strategy(quant))


@pytest.mark.parametrize("patch_size", [2, 3, 4, 5])
def test_the_split_is_an_exact_invertible_rearrangement_for_every_patch_size(patch_size) -> None:
    b = patch_size
    x = torch.rand(2, 3, 6 * b, 4 * b)
    subimages = split_into_subimages(x, b)
    assert subimages.shape == (2, b * b, 3, 6, 4)
    # Sub-image t = b i + j holds pixel (i, j) of every patch, by the definition.
    for i in range(b):
        for j in range(b):
            assert torch.equal(subimages[:, b * i + j], x[:, :, i::b, j::b])
    assert torch.equal(merge_subimages(subimages, b), x)
    # Every pixel exactly once: a permutation of the values.
    assert torch.equal(subimages.flatten().sort().values, x.flatten().sort().values)


def test_sizes_off_the_patch_grid_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="does not split into 3x3 patches"):
        split_into_subimages(torch.rand(1, 3, 10, 9), 3)
    with pytest.raises(ValueError, match="patch_size must be an integer >= 2"):
        FeatureExtraction(8, patch_size=1)
    with pytest.raises(ValueError, match="unit must be one of"):
        JiangLIC(unit="icrsb", quantizer=strategy("ste"))


@pytest.mark.parametrize("patch_size", [2, 3])
def test_fexm_features_per_subimage_and_the_image_meet_on_the_time_axis(patch_size) -> None:
    b = patch_size
    torch.manual_seed(0)
    extraction = FeatureExtraction(8, patch_size=b, convolutions=2)
    x = torch.rand(1, 3, 12 * b, 6 * b)
    stacked = extraction(x)
    assert stacked.shape == (1, 8, b * b + 1, 12, 6)
    # Sub-image t's feature depends on sub-image t alone (its own convolutions).
    changed = x.clone()
    changed[:, :, 0::b, 0::b] += 1  # sub-image 0 only
    difference = (extraction(changed) - stacked).abs().amax(dim=(0, 1, 3, 4))
    assert difference[0] > 0 and difference[-1] > 0  # f_{S_1} and f_x see it
    assert torch.all(difference[1:-1] == 0)
    inverse = InverseFeatureExtraction(16, 8, patch_size=b, convolutions=2)
    assert inverse(torch.rand(1, 16, 12, 6)).shape == x.shape


def test_3d_res_variants_and_the_attention_refinement_block() -> None:
    channels = 4
    for levels, convolutions in ((1, 2), (2, 4), (3, 6)):
        block = ConcatenatedResidual3d(channels, levels)
        convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv3d)]
        assert len(convs) == convolutions
    # Res-b's outer shortcut: with every convolution zero, Res-b(x) = x + RB(RB(x)) = 2x.
    res_b = ConcatenatedResidual3d(channels, 2)
    for conv in res_b.modules():
        if isinstance(conv, torch.nn.Conv3d):
            torch.nn.init.zeros_(conv.weight)
            torch.nn.init.zeros_(conv.bias)
    x = torch.rand(1, channels, 5, 6, 6)
    assert torch.allclose(res_b(x), 2 * x)
    arb = AttentionRefinementBlock(channels, front_convolutions=1, front_kernel=5)
    assert arb.front[0].kernel_size == (5, 5, 5)
    assert arb(x).shape == x.shape
    # Folding time into channels: the 1x1 projection sees frame t's channel c at c * T + t.
    fold = StackToFeature(channels, 5, 3)
    assert fold.project.in_channels == 20 and fold(x).shape == (1, 3, 6, 6)


def test_dense_block_reads_every_earlier_output_and_fenm_keeps_the_width() -> None:
    block = DenseBlock(8, layers=3, growth=4)
    assert [layer[0].in_channels for layer in block.layers] == [8, 12, 16]
    assert block.fuse.in_channels == 20 and block.fuse.out_channels == 8
    enhancement = FeatureEnhancement(8, blocks=2, layers=3, growth=4)
    x = torch.rand(1, 8, 5, 5)
    # The global shortcut: FEnM starts as the identity (its last conv at zero), then learns.
    assert torch.equal(enhancement(x), x)
    torch.nn.init.normal_(enhancement.out.weight)
    assert not torch.allclose(enhancement(x), x)


def test_an_icrsa_unit_starts_with_the_gain_of_its_icsa_unit() -> None:
    """A CRM starts at about 2x; the convolution beside it, halved, brings the unit's output
    back to the scale of the convolution alone (the ICSA unit): before it in an analysis
    unit, after it (past an FEnM, the identity at its start) in a synthesis unit."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    assert 1.9 < ConcatenatedResidual(16)(x).std() / x.std() < 2.3
    conv = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
    deconv = torch.nn.ConvTranspose2d(16, 3, 3, stride=2, padding=1, output_padding=1)
    image = torch.rand(2, 3, 16, 16)
    analysis = torch.nn.Sequential(copy.deepcopy(conv), ConcatenatedResidual(16))
    synthesis = torch.nn.Sequential(
        ConcatenatedResidual(16), FeatureEnhancement(16, 1, 2, 4), copy.deepcopy(deconv)
    )

    def gains() -> tuple[float, float]:
        """Output scale of each unit over that of its convolution alone."""
        return (
            (analysis(image).std() / conv(image).std()).item(),
            (synthesis(x).std() / deconv(x).std()).item(),
        )

    assert all(1.8 < gain < 2.5 for gain in gains())
    absorb_crm_gain(analysis, analysis=True)
    absorb_crm_gain(synthesis, analysis=False, transparent=(FeatureEnhancement,))
    assert all(0.85 < gain < 1.25 for gain in gains())
    assert torch.equal(analysis[0].weight, conv.weight / 2)
    assert torch.equal(analysis[0].bias, conv.bias / 2)
    assert torch.equal(synthesis[2].weight, deconv.weight / 2)
    assert torch.equal(synthesis[2].bias, deconv.bias)  # conv'(2 h) = W / 2 * 2 h + b
    with pytest.raises(ValueError, match="no convolution beside the CRM at index 0"):
        absorb_crm_gain(torch.nn.Sequential(ConcatenatedResidual(8)), analysis=False)


def count_modules(codec: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in codec.modules())


def test_paper_settings_against_table_iii_and_the_published_structure() -> None:
    """Table III: Tiny-LIC 28.3M, Proposed-Tiny 33.5M, Proposed 49.5M; within 10 %."""
    jiang, tiny = backbone("jiang"), backbone("jiang_tiny")
    tiny_lic = hydra.utils.instantiate(
        compose_train(["backbone=tiny_lic"]).backbone, quantizer=strategy("ste")
    )
    assert parameter_count(tiny_lic) == pytest.approx(28.3e6, rel=0.01)
    assert parameter_count(jiang) == pytest.approx(49.5e6, rel=0.10)
    assert parameter_count(tiny) == pytest.approx(33.5e6, rel=0.10)
    assert count_modules(jiang, ConcatenatedResidual) == 12  # every unit of the four transforms
    assert count_modules(tiny, ConcatenatedResidual) == 0
    assert isinstance(jiang.g_a[0][0], FeatureExtraction)
    assert isinstance(jiang.g_a[0][1], AttentionRefinementBlock)
    assert isinstance(jiang.g_s[-2], FeatureEnhancement)
    assert isinstance(jiang.g_s[-1], InverseFeatureExtraction)
    assert len(tiny.g_s[-2].blocks) == 1 and len(jiang.g_s[-2].blocks) == 2
    assert jiang.downsampling_factor == 256 and jiang.minimum_side == 192
    # b = 3: y at 1/24, z at 1/96; sides of multiples of 96 * 4 = 384 hold the 7x7 and 3x3.
    assert padding_multiple(7, 3, first_stride=3) == 384


@pytest.mark.slow
def test_every_ablation_row_keeps_icsa_units_and_the_recipe_runs_600_epochs() -> None:
    """Tables IV and V add their modules to Tiny-LIC's ICSA units (conf/ablation/baseline.yaml;
    the baseline is Tiny-LIC itself); experiment=jiang's steps are 600 epochs of the paper's
    1M patches at its batch size."""
    for row in ("fexm_frm", "fenm_without_feature_loss", "fenm", "qecm"):
        cfg = compose_train(["experiment=jiang", f"ablation={row}"])
        assert (cfg.backbone._target_, cfg.backbone.unit) == ("licexp.backbones.JiangLIC", "icsa")
        assert cfg.trainer.max_steps == 600 * 1_000_000 // cfg.data.batch_size


def test_the_icsa_unit_leaves_tiny_lic_as_it_is() -> None:
    torch.manual_seed(3)
    settings = dict(
        N=16, M=24, depths=(1, 1, 1, 1), hyper_depths=(1, 1), kernel_size=3, hyper_kernel_size=1
    )
    reference = TinyLIC(**settings, quantizer=strategy("ste"))
    same = TinyLIC(**settings, unit="icsa", quantizer=strategy("ste"))
    assert list(reference.state_dict()) == list(same.state_dict())
    with_crm = TinyLIC(**settings, unit="icrsa", quantizer=strategy("ste"))
    assert count_modules(with_crm, ConcatenatedResidual) == 12


def test_mac_count_of_neighbourhood_attention_is_its_own_not_the_tiles() -> None:
    """A codec's MACs minus those of the same codec with attention-free blocks equal the
    attention's ``2 H W k^2 C`` per layer plus its linear layers."""
    torch.manual_seed(0)
    settings = dict(N=16, M=16, depths=(1, 1, 1, 1), hyper_depths=(1, 1), hyper_kernel_size=1)
    image = torch.rand(1, 3, 64, 128)
    macs = {
        k: count_macs(TinyLIC(**settings, kernel_size=k, quantizer=strategy("ste")), image)
        for k in (1, 3)
    }
    # g_a and g_s: one block per stage at 16, 24, 32, 16 channels at 1/2 ... 1/16.
    positions = [32 * 64, 16 * 32, 8 * 16, 4 * 8]
    widths = [16, 24, 32, 16]
    per_k2 = 2 * 2 * sum(p * c for p, c in zip(positions, widths, strict=True))  # two sides
    assert macs[3] - macs[1] == per_k2 * (9 - 1)


def test_jiang_gmacs_rise_module_by_module() -> None:
    image = torch.rand(1, 3, 64, 64)
    rows = [
        ["backbone.unit=icsa", "backbone.refinement=false", "backbone.enhancement=false"],
        ["backbone.unit=icsa", "backbone.enhancement=false"],
        ["backbone.unit=icsa"],
        [],
    ]
    macs = [count_macs(backbone("jiang_small", "ste", *row), image) for row in rows]
    assert macs == sorted(macs) and len(set(macs)) == len(macs)


@pytest.mark.parametrize("name", ["jiang_small", "jiang_tiny_small"])
@pytest.mark.parametrize("quant", STRATEGIES)
def test_one_training_step_with_every_strategy(name, quant) -> None:
    torch.manual_seed(0)
    codec = backbone(name, quant).train()
    x = torch.rand(2, 3, 64, 128)
    output = codec(x)
    assert output.x_hat.shape == x.shape
    assert output.likelihoods["y"].shape == (2, 64, 4, 8)
    assert set(output.features) == {"refined", "enhanced"}
    assert output.features["refined"].shape == output.features["enhanced"].shape == (2, 32, 32, 64)
    loss = RateDistortionLoss(0.01, feature_weight=WeightUntil(1.0, 0.5, 10))
    terms = loss(output, x, step=0)
    terms["loss"].backward()
    stem, head = codec.g_a[0], codec.g_s[-2]
    for part in (stem, head, codec.g_a, codec.g_s, codec.h_a, codec.context_model):
        assert sum(p.grad.abs().sum() for p in part.parameters() if p.grad is not None) > 0


def test_feature_loss_is_its_definition_and_switches_off_at_the_configured_step() -> None:
    torch.manual_seed(0)
    codec = backbone("jiang_small", "noise").train()
    x = torch.rand(1, 3, 64, 64)
    output = codec(x)
    schedule = WeightUntil(1.0, 1 / 3, 30)
    assert schedule.switch_step == 10
    loss = RateDistortionLoss(0.01, feature_weight=schedule)
    plain = RateDistortionLoss(0.01)(output, x)
    before, after = loss(output, x, step=9), loss(output, x, step=10)
    expected = ((output.features["enhanced"] - output.features["refined"]) ** 2).mean()
    assert torch.allclose(before["feature_mse"], expected)
    assert before["lambda_e"] == 1 and after["lambda_e"] == 0
    assert torch.allclose(before["loss"], plain["loss"] + expected)
    assert torch.allclose(after["loss"], plain["loss"])
    # The feature term pulls the refined feature too (no detach), as Eq. 17 reads.
    codec.zero_grad()
    before["feature_mse"].backward()
    assert sum(p.grad.abs().sum() for p in codec.g_a[0].parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("name", ["jiang_small", "jiang_tiny_small"])
@pytest.mark.parametrize("quant", ["ste", "noise", "fourier_qecm", "tcq"])
def test_real_bitstreams_decode_bit_exactly_to_the_hard_forward_pass(name, quant) -> None:
    torch.manual_seed(1)
    codec = backbone(name, quant).eval()
    codec.update(force=True)
    x = torch.rand(2, 3, 64, 128)
    reference, bitstreams, decoded = code_and_decode(codec, x)
    assert set(bitstreams.strings) == {"y", "z"}
    assert torch.equal(decoded, reference.x_hat)


def test_patch_size_three_trains_and_codes() -> None:
    codec = backbone("jiang_small", "ste", "backbone.patch_size=3").eval()
    assert codec.downsampling_factor == 96
    codec.update(force=True)
    x = torch.rand(1, 3, 96, 192)
    reference, _, decoded = code_and_decode(codec, x)
    assert reference.latents["y"].shape[-2:] == (4, 8)  # 1/24
    assert torch.equal(decoded, reference.x_hat)


def test_train_cli_runs_jiang_with_the_qecm_logs_the_feature_term_and_decodes(tmp_path) -> None:
    run_dir = tmp_path / "run"
    result = run_training(
        "backbone=jiang_small",
        "quant=fourier_qecm",
        "debug=smoke",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(run_dir / "csv" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/loss")]
    # lambda_e = 1 for the first third of the three steps, then 0; the term is always logged.
    assert [float(row["train/lambda_e"]) for row in rows] == [1.0, 0.0, 0.0]
    assert all(float(row["train/feature_mse"]) > 0 for row in rows)
    with open(run_dir / "eval" / "per_image.csv") as file:
        coded = list(csv.DictReader(file))
    assert len(coded) == 2 and all(float(row["decode_error"]) == 0 for row in coded)


def test_complexity_cli_prints_parameters_macs_and_coding_times(tmp_path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "licexp.complexity",
            "backbone=jiang_small",
            "height=64",
            "width=128",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    header, _, row = result.stdout.strip().splitlines()[-3:]
    assert "GMACs" in header and "cpu encode (s)" in header
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    torch.manual_seed(0)
    codec = backbone("jiang_small")
    assert cells[0] == "jiang_small"
    assert float(cells[1]) == pytest.approx(parameter_count(codec) / 1e6, abs=1e-3)
    assert float(cells[2]) == pytest.approx(
        count_macs(codec, torch.rand(1, 3, 64, 128)) / 1e9, abs=1e-3
    )
    assert all(float(cell) > 0 for cell in cells[3:5])
    assert list(tmp_path.iterdir()) == []  # no log file left behind
