"""``logger=tensorboard``: a smoke run's event files, read back with TensorBoard's own reader,
hold what W&B gets; ``logger=[csv,tensorboard,wandb]`` composes; the dashboard shows the run."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import compose_train, quiet_trainer, run_training
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from licexp.config import instantiate_collection
from licexp.loggers import TensorBoardMedia, WandbMedia

SMOKE = ["debug=smoke", "callbacks.progress_bar=null"]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory) -> Path:
    """A smoke run logging to CSV and TensorBoard, evaluated at the end (its run folder)."""
    run_dir = tmp_path_factory.mktemp("tensorboard") / "run"
    result = run_training(*SMOKE, "logger=[csv,tensorboard]", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def events(run_dir: Path) -> EventAccumulator:
    """Every event of the run's TensorBoard folder, none sampled away."""
    keep_all = {"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance=keep_all)
    accumulator.Reload()
    return accumulator


def csv_values(run_dir: Path, tag: str) -> dict[int, float]:
    """The values of ``tag`` by step in the run's ``csv/metrics.csv``."""
    with open(run_dir / "csv" / "metrics.csv") as file:
        return {int(row["step"]): float(row[tag]) for row in csv.DictReader(file) if row[tag]}


def decoded(image_event) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(image_event.encoded_image_string)).convert("RGB"))


def test_tensorboard_scalars_are_the_csv_loggers_values_gap_metrics_included(
    tensorboard_run,
) -> None:
    accumulator = events(tensorboard_run)
    tags = (
        "train/loss",
        "train/bpp",
        "train/psnr",
        "val/psnr",
        "train/gaps/discrete",
        "val/gaps/lss",
    )
    for tag in tags:
        logged = {event.step: event.value for event in accumulator.Scalars(tag)}
        expected = csv_values(tensorboard_run, tag)
        assert logged.keys() == expected.keys() and logged, tag
        for step, value in expected.items():
            assert logged[step] == pytest.approx(value, rel=1e-6), (tag, step)
    assert len(accumulator.Scalars("val/gaps/lss")) == 2  # trainer.val_check_interval=2 of 4
    assert all(math.isfinite(e.value) for e in accumulator.Scalars("val/gaps/entropy_w1"))
    assert not (tensorboard_run / "wandb").exists(), "W&B extras stay off without logger=wandb"


def test_tensorboard_histograms_are_the_gap_callbacks_histograms(tensorboard_run) -> None:
    accumulator = events(tensorboard_run)
    for stem in ("latent_histogram", "quantisation_error_histogram"):
        histograms = {
            event.step: event.histogram_value for event in accumulator.Histograms(f"val/{stem}")
        }
        assert set(histograms) == {2, 4}
        for step, histogram in histograms.items():
            saved = json.loads(
                (tensorboard_run / "gaps" / f"{stem}_step{step:07d}.json").read_text()
            )
            assert list(histogram.bucket) == pytest.approx(saved["counts"])
            assert list(histogram.bucket_limit) == pytest.approx(saved["edges"][1:])
            assert histogram.min == pytest.approx(saved["edges"][0])
    assert len(accumulator.Histograms("val/latent_histogram")[0].histogram_value.bucket) == 140


def test_tensorboard_images_show_reconstructions_beside_originals(tensorboard_run) -> None:
    accumulator = events(tensorboard_run)
    images = accumulator.Tags()["images"]
    assert {"val/latent_histogram_figure", "val/quantisation_error_histogram_figure"} <= set(images)
    for name in ("astronaut", "coffee"):  # the smoke run's two validation photos
        shown = accumulator.Images(f"val/reconstructions/{name}")
        assert [event.step for event in shown] == [2, 4]
        assert all(event.width == 2 * event.height == 128 for event in shown)
    # the evaluation keeps one reconstruction (evaluation.reconstructions=1): its right half
    # is the decoded PNG the evaluation wrote, pixel for pixel
    (pair,) = accumulator.Images("eval/reconstructions/astronaut")
    pixels = decoded(pair)
    width = pixels.shape[1] // 2
    written = np.array(Image.open(tensorboard_run / "eval" / "reconstruction_astronaut.png"))
    assert np.array_equal(pixels[:, width:], written)
    assert not np.array_equal(pixels[:, :width], written)  # the original, left
    (rd,) = accumulator.Images("eval/rd")
    figure = np.array(Image.open(tensorboard_run / "eval" / "rd.png").convert("RGB"))
    assert np.array_equal(decoded(rd), figure)


def test_tensorboard_holds_the_evaluation_scalars_and_per_image_table(tensorboard_run) -> None:
    accumulator = events(tensorboard_run)
    results = json.loads((tensorboard_run / "eval" / "results.json").read_text())["results"]
    for tag, key in (
        ("eval/bpp", "bpp"),
        ("eval/psnr", "psnr-rgb"),
        ("eval/ms_ssim", "ms-ssim-rgb"),
    ):
        (event,) = accumulator.Scalars(tag)
        assert event.step == 4 and event.value == pytest.approx(results[key][0], rel=1e-6)
    (text,) = accumulator.Tensors("eval/per_image/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    with open(tensorboard_run / "eval" / "per_image.csv") as file:
        rows = list(csv.DictReader(file))
    header, _, *lines = [
        [c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
    ]
    assert header == list(rows[0])
    for row, cells in zip(rows, lines, strict=True):  # the CSV's rows, floats to 6 digits
        shown = dict(zip(header, cells, strict=True))
        assert shown["name"] == row["name"]
        assert float(shown["bpp"]) == pytest.approx(float(row["bpp"]), rel=1e-5)
        assert float(shown["psnr"]) == pytest.approx(float(row["psnr"]), rel=1e-5)


def test_logger_list_composes_csv_tensorboard_and_wandb(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)  # Lightning's offline flag sets it
    cfg = compose_train(["logger=[csv,tensorboard,wandb]", f"paths.output_dir={tmp_path}"])
    loggers = instantiate_collection(cfg.logger)
    assert [type(logger) for logger in loggers] == [CSVLogger, TensorBoardLogger, WandbLogger]
    tensorboard = loggers[1]
    assert Path(tensorboard.log_dir) == tmp_path / "tensorboard"
    assert Path(loggers[0].log_dir) == tmp_path / "csv"
    assert loggers[2]._wandb_init["dir"] == str(tmp_path)


def test_each_trackers_media_callback_acts_only_with_its_own_logger(tmp_path) -> None:
    tensorboard = TensorBoardLogger(tmp_path, name="tb", version="")
    trainer = quiet_trainer(logger=[CSVLogger(tmp_path), tensorboard])
    assert TensorBoardMedia().tracker(trainer) is tensorboard
    assert WandbMedia().tracker(trainer) is None
    assert TensorBoardMedia().tracker(quiet_trainer(logger=CSVLogger(tmp_path))) is None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def wait_until_served(url: str, server: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Waits until the TensorBoard at ``url`` lists a run (it has read the event files)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"tensorboard exited: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"{url}/data/runs", timeout=2) as response:
                if json.loads(response.read()):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"tensorboard did not serve {url} within {timeout} s: {log.read_text()[-2000:]}")


def headless_browser(profile: Path) -> list[str]:
    """Chromium, headless, with nothing of its own reaching the network."""
    return [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        "--virtual-time-budget=15000",
    ]


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs a headless browser at {CHROMIUM}")
def test_tensorboard_dashboard_shows_the_runs_scalars_in_a_browser(
    tensorboard_run, tmp_path
) -> None:
    url = f"http://localhost:{free_port()}"
    log = tmp_path / "tensorboard.log"
    tensorboard = Path(sys.executable).parent / "tensorboard"
    # --logdir the run folder's parent: the run is listed as run/tensorboard
    command = [tensorboard, "--logdir", tensorboard_run.parent, "--host", "localhost"]
    with log.open("w") as output:
        server = subprocess.Popen(
            [*command, "--port", url.rsplit(":", 1)[1]],
            stdout=output,
            stderr=output,
            env={**os.environ, "HOME": str(tmp_path)},
        )
    browser = headless_browser(tmp_path / "profile")
    # train/loss and val/loss pinned on top (the page renders the cards in view only)
    pins = [{"plugin": "scalars", "tag": tag} for tag in ("train/loss", "val/loss")]
    page = f"{url}/?pinnedCards={urllib.parse.quote(json.dumps(pins))}#timeseries"
    screenshot = tmp_path / "scalars.png"
    try:
        wait_until_served(url, server, log)
        shot = [*browser, f"--screenshot={screenshot}", page]
        subprocess.run(shot, check=True, timeout=120, capture_output=True)
        dump = [*browser, "--dump-dom", page]
        dom = subprocess.run(dump, check=True, timeout=120, capture_output=True, text=True).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    pixels = np.array(Image.open(screenshot).convert("L"))
    assert pixels.shape == (1000, 1400)
    assert pixels.std() > 10, "the screenshot is blank"
    assert "run/tensorboard" in dom  # the runs list
    assert "train/loss" in dom and "val/loss" in dom  # the pinned cards
    _, last_loss = max(csv_values(tensorboard_run, "train/loss").items())
    assert f"{last_loss:.4f}" in dom  # in the card's table, at the last step
