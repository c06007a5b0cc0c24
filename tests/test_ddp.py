"""Distributed data parallel on 2 CPU processes (``trainer=ddp_cpu``), from the command line.

Each test starts ``python -m licexp.train``, whose rank 0 starts rank 1 by running the same
command again: what ``trainer=ddp`` does on GPUs, over gloo instead of NCCL.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch
from helpers import compose_train, run_training
from omegaconf import open_dict

from licexp.train import train

STEPS = 4
# quant=ste: the equivalence of 2 x 2 images with 1 x 4 needs a training step that draws no
# random numbers; noise quantisation draws per rank, so its noise cannot match a single
# process's (and under DDP each rank draws its own on purpose).
# SGD: Adam's first steps are about lr * sign(gradient), so a parameter whose gradient is
# ~0 moves by +-lr on the sign of float noise, which summing the batch in another order
# flips (measured with Adam: 14 of 113k values apart by up to 1.3 lr, all in the
# hyperprior's density model, the rest within 1e-4). SGD shows that the gradients agree.
# data.train.length=4: every step trains on the same 4 dead-leaves images, whichever rank
# gets which; no checkpoints, no final evaluation: only what the tests read.
COMMON = [
    "debug=smoke",
    "quant=ste",
    "model.optimizer._target_=torch.optim.SGD",
    "model.aux_optimizer._target_=torch.optim.SGD",
    "data.train.length=4",
    f"trainer.max_steps={STEPS}",
    "evaluate=false",
    "callbacks.model_checkpoint=null",
    "+callbacks.probe._target_=ddp_probe.RecordRankState",
]


def last_value(metrics_csv: Path, column: str) -> float:
    with metrics_csv.open() as file:
        values = [row[column] for row in csv.DictReader(file) if row[column]]
    return float(values[-1])


def histogram(run_dir: Path) -> list[float]:
    path = run_dir / "gaps" / f"latent_histogram_step{STEPS:07d}.json"
    return json.loads(path.read_text())["counts"]


@pytest.fixture(scope="module")
def ddp_and_single_runs(tmp_path_factory) -> tuple[Path, Path]:
    """The same training on 2 ranks x 2 images (subprocess) and 1 process x 4 images."""
    root = tmp_path_factory.mktemp("ddp")
    ddp_dir, single_dir = root / "ddp", root / "single"
    result = run_training(
        *COMMON,
        "trainer=ddp_cpu",
        "data.batch_size=2",
        f"+callbacks.probe.out_dir={ddp_dir / 'probe'}",
        f"hydra.run.dir={ddp_dir}",
    )
    if result.returncode != 0:
        pytest.fail(f"DDP training failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    cfg = compose_train(
        [
            *COMMON,
            "trainer=cpu",
            "data.batch_size=4",
            f"+callbacks.probe.out_dir={single_dir / 'probe'}",
            f"paths.output_dir={single_dir}",
        ]
    )
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands it over (HydraConfig keeps it)
    train(cfg)
    return ddp_dir, single_dir


def test_ranks_hold_identical_parameters_and_quantiles_after_every_step(
    ddp_and_single_runs,
) -> None:
    ddp_dir, _ = ddp_and_single_runs
    rank0 = torch.load(ddp_dir / "probe" / "rank0.pt")
    rank1 = torch.load(ddp_dir / "probe" / "rank1.pt")
    assert len(rank0["steps"]) == len(rank1["steps"]) == STEPS
    for step0, step1 in zip(rank0["steps"], rank1["steps"], strict=True):
        assert step0 and step0.keys() == step1.keys()
        assert all(torch.equal(step0[name], step1[name]) for name in step0)
    assert rank0["final"].keys() == rank1["final"].keys()
    for name, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][name]), name
    for name, value in rank0["steps"][-1].items():
        assert not torch.equal(value, rank0["initial"][name]), f"the aux step trained {name}"


def test_ranks_train_on_different_images_with_different_random_streams(
    ddp_and_single_runs,
) -> None:
    ddp_dir, _ = ddp_and_single_runs
    rank0 = torch.load(ddp_dir / "probe" / "rank0.pt")
    rank1 = torch.load(ddp_dir / "probe" / "rank1.pt")
    for names0, names1 in zip(rank0["names"], rank1["names"], strict=True):
        assert len(names0) == len(names1) == 2
        assert not set(names0) & set(names1)
    # Quantisation noise comes from the global generator: the same state would add the same
    # noise on both ranks.
    assert not torch.equal(rank0["rng_state"], rank1["rng_state"])


def test_two_ranks_train_like_one_process_with_their_global_batch(ddp_and_single_runs) -> None:
    ddp_dir, single_dir = ddp_and_single_runs
    ddp = torch.load(ddp_dir / "probe" / "rank0.pt")
    single = torch.load(single_dir / "probe" / "rank0.pt")
    assert ddp["final"].keys() == single["final"].keys()
    for name, initial in single["initial"].items():
        assert torch.equal(initial, ddp["initial"][name]), "both start from the same model"
    moved = max((single["final"][n] - v).abs().max().item() for n, v in single["initial"].items())
    worst = max((ddp["final"][n] - v).abs().max().item() for n, v in single["final"].items())
    print(f"largest parameter change {moved:.3g}, largest DDP - single difference {worst:.3g}")
    assert worst < 1e-4 * moved


def test_validation_metrics_and_histograms_cover_both_ranks_images(ddp_and_single_runs) -> None:
    """Each rank validates one of the two images; the logged mean and the histogram are
    those of both, as the single process (which validates both) measures them."""
    ddp_dir, single_dir = ddp_and_single_runs
    for column in ("val/loss", "val/bpp", "val/psnr", "val/ms_ssim"):
        ddp = last_value(ddp_dir / "csv" / "metrics.csv", column)
        single = last_value(single_dir / "csv" / "metrics.csv", column)
        print(column, ddp, single)
        assert ddp == pytest.approx(single, rel=1e-4, abs=1e-6), column
    ddp_counts, single_counts = histogram(ddp_dir), histogram(single_dir)
    assert sum(single_counts) > 0.5
    print("histogram", max(abs(a - b) for a, b in zip(ddp_counts, single_counts, strict=True)))
    assert ddp_counts == pytest.approx(single_counts, abs=1e-4)


def test_an_error_on_one_rank_ends_the_whole_run_with_that_error(tmp_path) -> None:
    start = time.monotonic()
    result = run_training(
        "debug=smoke",
        "trainer=ddp_cpu",
        "evaluate=false",
        "callbacks.model_checkpoint=null",
        "+callbacks.fail._target_=ddp_probe.FailOnRank",
        "+callbacks.fail.rank=1",
        "+callbacks.fail.step=1",
        f"hydra.run.dir={tmp_path}",
        timeout=240,  # a hang fails the test here
    )
    output = result.stdout + result.stderr
    print(f"exit code {result.returncode} after {time.monotonic() - start:.1f} s")
    assert result.returncode != 0, output[-3000:]
    assert "injected failure on rank 1 at step 1" in output, output[-3000:]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_torchrun_nodes_train_like_one_process_with_their_global_batch(
    ddp_and_single_runs, tmp_path
) -> None:
    """``trainer.num_nodes=2`` under ``torchrun --nnodes=2``: two node processes on
    127.0.0.1 (one rank each, gloo), started as a scheduler starts them on two machines."""
    import os
    import subprocess
    import sys

    from helpers import REPO_ROOT

    _, single_dir = ddp_and_single_runs
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "HYDRA_FULL_ERROR": "1",
        "PYTHONWARNINGS": "ignore",
    }
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                *("-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"),
                f"--node-rank={node}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                *("-m", "licexp.train"),
                *COMMON,
                "trainer=ddp_cpu",
                "trainer.devices=1",
                "trainer.num_nodes=2",
                "data.batch_size=2",
                f"+callbacks.probe.out_dir={tmp_path / 'probe'}",
                f"hydra.run.dir={tmp_path / f'node{node}'}",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=400)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    rank0 = torch.load(tmp_path / "probe" / "rank0.pt")
    rank1 = torch.load(tmp_path / "probe" / "rank1.pt")
    single = torch.load(single_dir / "probe" / "rank0.pt")
    for name, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][name]), name
    for names0, names1 in zip(rank0["names"], rank1["names"], strict=True):
        assert len(names0) == len(names1) == 2 and not set(names0) & set(names1)
    moved = max((single["final"][n] - v).abs().max().item() for n, v in single["initial"].items())
    worst = max((rank0["final"][n] - v).abs().max().item() for n, v in single["final"].items())
    assert worst < 1e-4 * moved
