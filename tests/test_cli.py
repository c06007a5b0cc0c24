"""The command lines end to end, as subprocesses: train, resume, evaluate, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT
from PIL import Image

SMOKE = ["debug=smoke", "callbacks.progress_bar=null"]


def run(
    module: str, *overrides: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        pytest.fail(f"{module} {overrides} failed:\n{output}")
    return result


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One training run for several tests, logging to CSV and to an offline W&B run, with
    name lookups of other machines recorded in ``network.log`` beside it and refused."""
    root = tmp_path_factory.mktemp("smoke")
    run_dir = root / "run"
    env = {
        "PYTHONPATH": str(REPO_ROOT / "tests" / "no_network"),
        "LICEXP_NETWORK_LOG": str(root / "network.log"),
        # W&B keeps settings, caches and staged table files under the home directory.
        **{f"WANDB_{name}_DIR": str(root / "wandb_home") for name in ("CONFIG", "CACHE", "DATA")},
    }
    result = run("licexp.train", *SMOKE, "logger=[csv,wandb]", f"hydra.run.dir={run_dir}", env=env)
    return run_dir, result


def test_training_writes_checkpoint_metrics_and_real_bitstream_results(smoke_run) -> None:
    run_dir, result = smoke_run
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert json.loads((run_dir / "run_info.json").read_text())["git"]["commit"]
    with open(run_dir / "csv" / "metrics.csv") as file:
        columns = set(next(csv.reader(file)))
    expected = {"loss", "bpp", "bpp_y", "bpp_z", "mse", "psnr", "ms_ssim", "aux_loss", "lr"}
    assert {f"train/{name}" for name in expected} <= columns
    assert {f"val/{name}" for name in expected - {"aux_loss", "lr"}} <= columns
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["name"] == "mean_scale_small-noise-lmbda0.0067"
    assert results["results"]["bpp"][0] > 0
    assert list((run_dir / "eval").glob("reconstruction_*.png"))
    assert len(list((run_dir / "eval" / "bitstreams").glob("*.lic"))) == 2
    assert "real bitstreams" in result.stdout


def test_resume_continues_the_run_and_leaves_the_original_checkpoint(smoke_run, tmp_path) -> None:
    run_dir, _ = smoke_run
    original = run_dir / "checkpoints" / "last.ckpt"
    before = original.read_bytes()
    resumed_dir = tmp_path / "resumed"
    run(
        "licexp.train",
        *SMOKE,
        "trainer.max_steps=6",
        "evaluate=false",
        f"ckpt_path={original}",
        f"hydra.run.dir={resumed_dir}",
    )
    resumed = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert torch.load(original, weights_only=False)["global_step"] == 4
    assert resumed["global_step"] == 6
    with open(resumed_dir / "csv" / "metrics.csv") as file:
        steps = {int(row["step"]) for row in csv.DictReader(file) if row["train/loss"]}
    # A fresh 6-step run logs six steps from step 0; the resumed one only its last two.
    assert len(steps) == 2 and min(steps) >= 4, steps
    assert original.read_bytes() == before
    assert not (resumed_dir / "wandb").exists(), "W&B extras stay off without logger=wandb"


def test_eval_cli_decodes_a_checkpoint_on_real_bitstreams(smoke_run, tmp_path) -> None:
    run_dir, _ = smoke_run
    out = tmp_path / "eval"
    result = run(
        "licexp.eval",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        "data.test.names=[chelsea]",
        "data.test.crop_size=128",
        "anchors=[]",
        f"hydra.run.dir={out}",
    )
    with open(out / "per_image.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["name"] for row in rows] == ["chelsea"]
    assert float(rows[0]["decode_error"]) == 0
    assert "real bitstreams" in result.stdout


def test_eval_cli_evaluates_a_folder_of_ones_own_images(smoke_run, tmp_path) -> None:
    run_dir, _ = smoke_run
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, size in (("a", (70, 50)), ("b", (64, 64))):
        pixels = (torch.rand(size[1], size[0], 3) * 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"{name}.png")
    result = run(
        "licexp.eval",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"images={folder}",
        "anchors=[]",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    with open(tmp_path / "eval" / "per_image.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(r["name"], r["width"], r["height"]) for r in rows] == [
        ("a", "70", "50"),
        ("b", "64", "64"),
    ]
    assert f"Evaluating 2 images from {folder}" in result.stdout + result.stderr


def test_stage2_trains_the_decoder_alone_resumes_and_codes_with_its_quantiser(
    smoke_run, tmp_path
) -> None:
    """experiment=stage2 from the noise-trained smoke model, with TCQ: the encoder stays the
    stage-1 encoder through a run and its resume; lambda and what was frozen are recorded;
    the evaluation codes with TCQ."""
    run_dir, _ = smoke_run
    stage1 = run_dir / "checkpoints" / "last.ckpt"
    stage2 = [*SMOKE, "experiment=stage2", f"init_from={stage1}", "quant=tcq", "evaluate=false"]
    first, resumed = tmp_path / "stage2", tmp_path / "resumed"
    run("licexp.train", *stage2, "trainer.max_steps=2", f"hydra.run.dir={first}")
    checkpoint = first / "checkpoints" / "last.ckpt"
    run(
        "licexp.train",
        *stage2,
        "trainer.max_steps=3",
        f"ckpt_path={checkpoint}",
        f"hydra.run.dir={resumed}",
    )
    before = torch.load(stage1, weights_only=False)
    after = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert after["global_step"] == 3
    assert after["licexp_config"]["lmbda"] == before["licexp_config"]["lmbda"]
    assert after["licexp_config"]["quant"]["_target_"].endswith("TrellisCodedQuantization")
    assert "g_a" in after["licexp_frozen_modules"] and "g_s" not in after["licexp_frozen_modules"]
    for name, value in before["state_dict"].items():
        if name.startswith("codec.g_a."):
            assert torch.equal(after["state_dict"][name], value), name
    moved = [
        name
        for name, value in before["state_dict"].items()
        if name.startswith("codec.g_s.") and not torch.equal(after["state_dict"][name], value)
    ]
    assert moved, "the decoder trained"
    out = tmp_path / "eval"
    run(
        "licexp.eval",
        f"ckpt_path={resumed / 'checkpoints' / 'last.ckpt'}",
        "data.test.names=[chelsea]",
        "data.test.crop_size=128",
        "anchors=[]",
        f"hydra.run.dir={out}",
    )
    results = json.loads((out / "results.json").read_text())
    assert "stage2-tcq" in results["name"]
    with open(out / "per_image.csv") as file:
        assert float(next(csv.DictReader(file))["decode_error"]) == 0


def test_eval_cli_codes_a_checkpoint_with_another_strategy(smoke_run, tmp_path) -> None:
    """The noise-trained smoke model, coded with TCQ at inference: its own bitstreams."""
    run_dir, _ = smoke_run
    outputs = {}
    for quant in ("tcq", "tcqq"):
        outputs[quant] = run(
            "licexp.eval",
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            f"quant={quant}",
            "quant.states=4",
            "data.test.names=[chelsea]",
            "data.test.crop_size=128",
            "anchors=[]",
            f"hydra.run.dir={tmp_path / quant}",
            check=quant == "tcq",
        )
    with open(tmp_path / "tcq" / "per_image.csv") as file:
        (row,) = list(csv.DictReader(file))
    assert float(row["decode_error"]) == 0
    results = json.loads((tmp_path / "tcq" / "results.json").read_text())
    assert results["name"] == "mean_scale_small-noise-lmbda0.0067+tcq"
    assert "TrellisSymbols(states=4" in outputs["tcq"].stdout + outputs["tcq"].stderr
    assert outputs["tcqq"].returncode != 0
    assert "Available options" in outputs["tcqq"].stderr + outputs["tcqq"].stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lmbda=-1"], "lmbda must be positive"),
        (["quant=rounding"], "Available options"),
        (["experiment=three-gaps"], "Available options in 'experiment'"),
        (["lmbda=abc"], "lmbda must be positive, got 'abc'"),
        (["seed=abc"], "seed must be an integer, got 'abc'"),
        (["backbone.N=0"], "backbone.N must be a positive integer, got 0"),
        (["data.train.size=100"], "divisible by 64"),
    ],
)
def test_bad_configuration_fails_with_a_message_naming_the_problem(overrides, message) -> None:
    result = run("licexp.train", *SMOKE, "hydra.run.dir=/tmp/licexp-bad", *overrides, check=False)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout


def test_corrupt_checkpoint_is_refused_before_training(tmp_path) -> None:
    corrupt = tmp_path / "last.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    result = run(
        "licexp.train",
        *SMOKE,
        f"ckpt_path={corrupt}",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert result.returncode != 0
    assert "not readable" in result.stderr + result.stdout
    assert corrupt.read_bytes() == b"PK\x03\x04 this is not a checkpoint"


def wandb_records(offline_run: Path) -> list[dict]:
    """The records of an offline W&B run, read by W&B's own reader (one JSON each)."""
    inspect = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline_run)]
    output = subprocess.run(inspect, capture_output=True, text=True, check=True, timeout=120)
    return [json.loads(line) for line in output.stdout.splitlines() if line.startswith("{")]


def merged(records: list[dict], kind: str, field: str) -> dict:
    """The updates of every record of one kind, later ones winning (what W&B shows)."""
    result: dict = {}
    for record in records:
        if record["type"] == kind:
            result.update(record[kind][field])
    return result


def test_wandb_offline_run_holds_config_metrics_media_and_evaluation(smoke_run) -> None:
    run_dir, _ = smoke_run
    network_log = run_dir.parent / "network.log"
    assert not network_log.exists(), f"tried to reach {network_log.read_text().split()}"
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    records = wandb_records(offline_run)
    (started,) = [record["run"] for record in records if record["type"] == "run"]
    assert started["display_name"] == "mean_scale_small-noise-lmbda0.0067"
    assert started["project"] == "licexp"
    assert {"mean_scale_small", "noise", "lmbda=0.0067"} <= set(started["tags"])

    config = merged(records, "config", "update")
    assert config["lmbda"] == 0.0067
    assert config["model"]["loss"]["lmbda"] == 0.0067  # the resolved config, not the YAML
    commit = json.loads((run_dir / "run_info.json").read_text())["git"]["commit"]
    assert config["git"]["commit"] == commit

    summary = merged(records, "summary", "update")
    results = json.loads((run_dir / "eval" / "results.json").read_text())["results"]
    assert summary["eval/bpp"] == pytest.approx(results["bpp"][0])
    assert summary["eval/psnr"] == pytest.approx(results["psnr-rgb"][0])
    assert summary["eval/ms_ssim"] == pytest.approx(results["ms-ssim-rgb"][0])

    logged = merged(records, "history", "item")
    for stage in ("train", "val"):
        assert {f"{stage}/gaps/{gap}" for gap in ("discrete", "entropy_w1", "lss")} <= set(logged)
    assert logged["val/latent_histogram._type"] == "histogram"
    assert len(logged["val/latent_histogram.values"]) == 140  # bin width 0.05 over [-4, 3]
    assert logged["val/latent_histogram_figure._type"] == "image-file"
    assert logged["val/reconstructions._type"] == "images/separated"
    assert logged["val/reconstructions.count"] == 2
    assert logged["val/reconstructions.width"] == 2 * logged["val/reconstructions.height"]
    assert logged["eval/per_image._type"] == "table-file"
    table = json.loads((offline_run / "files" / logged["eval/per_image.path"]).read_text())
    assert [row[0] for row in table["data"]] == ["astronaut", "coffee"]
    assert {"bpp", "psnr", "ms_ssim", "original | reconstruction"} <= set(table["columns"])
    assert [record["exit"]["exit_code"] for record in records if record["type"] == "exit"] == [0]


def test_codec_cli_encodes_a_photo_to_a_file_and_decodes_it_bit_exactly(
    smoke_run, tmp_path
) -> None:
    from licexp.checkpoints import codec_from_checkpoint
    from licexp.evaluation.codec import decode_container
    from licexp.evaluation.evaluate import save_png

    run_dir, _ = smoke_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    photo = tmp_path / "gray.png"  # an odd size and mode: converted as the evaluation does
    Image.effect_noise((37, 23), 40).save(photo)
    coded, decoded = tmp_path / "gray.lic", tmp_path / "gray_decoded.png"
    encoded = run("licexp.codec", "encode", str(photo), "-o", str(coded), "--ckpt", str(ckpt))
    size = coded.stat().st_size
    assert f"{size} bytes" in encoded.stdout and "for 37x23" in encoded.stdout
    assert f"{8 * size / (37 * 23):.4f} bpp in all" in encoded.stdout
    result = run("licexp.codec", "decode", str(coded), "-o", str(decoded), "--ckpt", str(ckpt))
    assert "decoded in" in result.stdout
    with Image.open(decoded) as image:
        assert (image.size, image.mode) == ((37, 23), "RGB")
        cli_pixels = image.tobytes()
    codec, _ = codec_from_checkpoint(ckpt)
    reference = tmp_path / "reference.png"
    save_png(decode_container(codec, coded.read_bytes(), None), reference)
    with Image.open(reference) as image:
        assert image.tobytes() == cli_pixels
    described = run("licexp.codec", "info", str(coded)).stdout
    assert "37x23" in described and "MeanScaleHyperprior" in described


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-3], "truncated"),
        (lambda data: data + b"\x00\x01", "trailing bytes"),
        (lambda data: data[:-5] + bytes([data[-5] ^ 1]) + data[-4:], "CRC-32"),
        (lambda data: b"not a bitstream at all", "not a licexp bitstream"),
    ],
)
def test_codec_cli_refuses_damaged_files_and_leaves_no_output(
    smoke_run, tmp_path, damage, message
) -> None:
    run_dir, _ = smoke_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    photo, coded = tmp_path / "photo.png", tmp_path / "photo.lic"
    Image.effect_noise((64, 48), 30).convert("RGB").save(photo)
    run("licexp.codec", "encode", str(photo), "-o", str(coded), "--ckpt", str(ckpt))
    coded.write_bytes(damage(coded.read_bytes()))
    output = tmp_path / "out.png"
    result = run(
        "licexp.codec", "decode", str(coded), "-o", str(output), "--ckpt", str(ckpt), check=False
    )
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.lic", "photo.png"]


def test_codec_cli_names_the_model_a_file_needs(smoke_run, tmp_path) -> None:
    run_dir, _ = smoke_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    photo, coded, output = tmp_path / "photo.png", tmp_path / "photo.lic", tmp_path / "out.png"
    Image.effect_noise((64, 64), 30).convert("RGB").save(photo)
    run("licexp.codec", "encode", str(photo), "-o", str(coded), "--ckpt", str(ckpt))
    config = torch.load(ckpt, weights_only=False)["licexp_config"]
    without = run("licexp.codec", "decode", str(coded), "-o", str(output), check=False)
    assert without.returncode == 1 and "pass --ckpt" in without.stderr
    assert config["run_name"] in without.stderr and "fingerprint" in without.stderr
    # The same weights coding with another strategy are another model for the file.
    other = run(
        "licexp.codec",
        *("decode", str(coded), "-o", str(output), "--ckpt", str(ckpt), "quant=ste"),
        check=False,
    )
    assert other.returncode == 1 and "written by another model" in other.stderr
    assert not output.exists()


def home_folder_env(root: Path) -> dict[str, str]:
    """A user's environment with ``root/home`` as home folder and no W&B or XDG folder set,
    every Python-level network lookup logged to ``root/network.log`` and refused."""
    moved = ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DIR", "WANDB_MODE")
    env = {k: v for k, v in os.environ.items() if k not in moved and not k.startswith("XDG_")}
    return {
        **env,
        "HOME": str(root / "home"),
        "PYTHONPATH": str(REPO_ROOT / "tests" / "no_network"),
        "LICEXP_NETWORK_LOG": str(root / "network.log"),
        "HYDRA_FULL_ERROR": "0",
        "PYTHONWARNINGS": "ignore",
    }


def run_at_home(root: Path, module: str, *arguments: str) -> None:
    """``python -m module arguments`` in :func:`home_folder_env`; fails the test on an error."""
    result = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=REPO_ROOT,
        env=home_folder_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{module}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def offline_run_kept_in(folder: Path, root: Path) -> Path:
    """The offline W&B run under ``folder/wandb``, checked to keep what it logged inside
    ``folder``: its tables' artifact files are staged there and its record names no folder
    of the home folder, which holds only wandb-core's service logs and matplotlib's font
    cache; no network lookup was tried."""
    assert not (root / "network.log").exists(), (root / "network.log").read_text()
    (offline_run,) = (folder / "wandb").glob("offline-run-*")
    assert list((offline_run / "artifacts" / "staging").iterdir())
    assert str(root / "home").encode() not in next(offline_run.glob("*.wandb")).read_bytes()
    home = root / "home"
    outside = [
        path.relative_to(home)
        for path in home.rglob("*")
        if path.is_file()
        and path.relative_to(home).parts[:3] != (".cache", "wandb", "logs")
        and "matplotlib" not in path.parts
    ]
    assert not outside, outside
    return offline_run


def test_eval_logs_the_results_to_an_offline_wandb_run_in_the_eval_folder(
    smoke_run, tmp_path
) -> None:
    run_dir, _ = smoke_run
    checkpoint, out = run_dir / "checkpoints" / "last.ckpt", tmp_path / "eval"
    arguments = [f"ckpt_path={checkpoint}", "anchors=[jpeg]", "logger=wandb"]
    arguments += ["data.test.names=[astronaut,coffee]", "data.test.crop_size=128"]
    run_at_home(tmp_path, "licexp.eval", *arguments, f"hydra.run.dir={out}")
    records = wandb_records(offline_run_kept_in(out, tmp_path))
    (started,) = [record["run"] for record in records if record["type"] == "run"]
    assert started["display_name"] == "mean_scale_small-noise-lmbda0.0067"  # the trained run's
    assert (started["job_type"], started["tags"]) == ("eval", ["lmbda=0.0067"])
    config = merged(records, "config", "update")
    assert config["ckpt_path"] == str(checkpoint)
    assert config["trained"]["lmbda"] == 0.0067

    summary = merged(records, "summary", "update")
    results = json.loads((out / "results.json").read_text())["results"]
    assert summary["eval/bpp"] == pytest.approx(results["bpp"][0])
    assert summary["eval/psnr"] == pytest.approx(results["psnr-rgb"][0])
    logged = merged(records, "history", "item")
    assert logged["eval/rd._type"] == "images/separated"
    (offline_run,) = (out / "wandb").glob("offline-run-*")
    table = json.loads((offline_run / "files" / logged["eval/per_image.path"]).read_text())
    with open(out / "per_image.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row[0] for row in table["data"]] == [row["name"] for row in rows]
    bpp = table["columns"].index("bpp")
    assert [row[bpp] for row in table["data"]] == [pytest.approx(float(r["bpp"])) for r in rows]
    assert [record["exit"]["exit_code"] for record in records if record["type"] == "exit"] == [0]


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_rd_logs_the_sweeps_figure_and_bd_table_to_the_sweeps_wandb_group(
    smoke_run, tmp_path
) -> None:
    run_dir, _ = smoke_run
    sweep, out = run_dir.parent, tmp_path / "rd"  # a folder of one run, as a sweep's
    anchor = run_dir / "eval" / "anchor_jpeg.json"
    options = [f"--anchor={anchor}", "--no-default-anchors", f"--out={out}", "--wandb"]
    run_at_home(tmp_path, "licexp.rd", str(sweep), *options)
    records = wandb_records(offline_run_kept_in(out, tmp_path))
    (started,) = [record["run"] for record in records if record["type"] == "run"]
    assert (started["run_group"], started["job_type"]) == (sweep.name, "rd")  # the jobs' group
    logged = merged(records, "history", "item")
    assert logged["rd/figure._type"] == "images/separated"
    (offline_run,) = (out / "wandb").glob("offline-run-*")
    table = json.loads((offline_run / "files" / logged["rd/bd.path"]).read_text())
    with open(out / "bd.csv") as file:
        (row,) = csv.DictReader(file)  # the anchor against the run's curve
    assert table["columns"] == list(row) and row["reference"] == "mean_scale_small-noise"
    (logged_row,) = table["data"]
    for column, value in zip(table["columns"], logged_row, strict=True):
        # an empty cell (a BD number undefined for a curve of one point) is None in W&B
        cell = row[column]
        assert value == (pytest.approx(float(cell)) if is_number(cell) else cell or None)
