"""Every command of README.md and experiments/README.md runs as a user types it.

The commands are read from the ```bash blocks of both files and run in bash, in a temporary
working folder that holds what the commands name (``.venv`` and ``experiments/`` link to
the checkout's; ``photo.jpg`` and a folder of photos are made there), with the
placeholders of the text (``<run>``, ``<date>``, ``$S``, ``/data/photos``) standing for
runs and folders that earlier README commands made. Only scale-shrinking arguments are
appended (:data:`RUNS`): ``debug=smoke``, fewer steps, images or trials, small backbones,
``evaluate=false`` where the command is not about evaluation. No ``hydra.*`` path is ever
added. Commands that cannot run here are listed in :data:`NOT_RUNNABLE` with the reason.

A command added to or changed in a README fails :func:`test_every_readme_command_is_covered`
until it is given a row here, and then runs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import REPO_ROOT, SHARED_DIR
from PIL import Image

pytestmark = pytest.mark.slow

README_FILES = ("README.md", "experiments/README.md")
KODAK = SHARED_DIR / "data" / "kodak"
SMOKE = "debug=smoke evaluate=false"
SMOKE_EVALUATED = "debug=smoke evaluation.anchors=[jpeg]"
EVAL_SMALL = "anchors=[jpeg] data.test.crop_size=96"


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks of a Markdown text: comment lines dropped,
    continuation lines joined, a ``for ... done`` loop kept as one command."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        loop: list[str] = []
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if loop or line.startswith("for "):
                loop.append(line)
                loop[-1] = " ".join(line.split())
                if line.startswith("done"):
                    commands.append("\n".join(loop))
                    loop = []
                continue
            commands.append(" ".join(line.split("  #")[0].split()))
    return commands


def documented_commands() -> list[str]:
    commands = []
    for name in README_FILES:
        for command in readme_commands((REPO_ROOT / name).read_text()):
            if command not in commands:
                commands.append(command)
    return commands


@dataclass(frozen=True)
class Run:
    """How a README command runs here: the arguments appended, the earlier commands whose
    runs its placeholders name, and the folder it runs in."""

    append: str = ""
    needs: dict[str, str] = field(default_factory=dict)
    in_checkout: bool = False
    jobs: int | None = None  # a multirun: the job folders it must leave
    needs_kodak: bool = False


DEFAULT_RUN = "make train"
ENCODE = (
    ".venv/bin/python -m licexp.codec encode photo.jpg -o photo.lic "
    "--ckpt logs/train/runs/<run>/checkpoints/last.ckpt"
)
PAN_BASE = "python -m licexp.train experiment=pan_mean_scale data.train.root=/data/photos quant=ste"
LAMBDA_SWEEP = ".venv/bin/python -m licexp.train -m lmbda=0.0018,0.013 quant=noise,ste"
THREE_GAPS = "python -m licexp.train -m experiment=three_gaps"
TCQ_SWEEP = "python -m licexp.train -m lmbda=0.0018,0.0067,0.025 hydra.sweep.dir=$S"
GPU_RECIPE = "trainer=cpu"  # a recipe that selects trainer=gpu, run on the CPU here
RUN = "logs/train/runs/<run>/checkpoints/last.ckpt"

RUNS: dict[str, Run] = {
    # make runs in the checkout; its run goes to the working folder's logs/, as the others'
    DEFAULT_RUN: Run(
        'ARGS="debug=smoke evaluate=false paths.log_dir=$WORK/logs"', in_checkout=True
    ),
    ".venv/bin/python -m licexp.train quant=ste backbone=bmshj2018 lmbda=0.013": Run(SMOKE),
    ".venv/bin/python -m licexp.train -m quant=noise,ste lmbda=0.0018,0.0067,0.025": Run(
        SMOKE, jobs=6
    ),
    f".venv/bin/python -m licexp.eval ckpt_path={RUN} data=kodak": Run(
        EVAL_SMALL, {"<run>": DEFAULT_RUN}, needs_kodak=True
    ),
    f".venv/bin/python -m licexp.eval ckpt_path={RUN} images=/path/to/images": Run(
        "anchors=[jpeg]", {"<run>": DEFAULT_RUN}
    ),
    f".venv/bin/python -m licexp.eval ckpt_path={RUN} quant=tcq": Run(
        EVAL_SMALL, {"<run>": DEFAULT_RUN}
    ),
    f".venv/bin/python -m licexp.train ckpt_path={RUN}": Run(
        # the run's own overrides, as the README says, and two more steps
        "debug=smoke evaluate=false trainer.max_steps=6",
        {"<run>": DEFAULT_RUN},
    ),
    f".venv/bin/python -m licexp.train experiment=stage2 init_from={RUN} quant=tcq": Run(
        SMOKE, {"<run>": DEFAULT_RUN}
    ),
    ENCODE: Run("", {"<run>": DEFAULT_RUN}),
    f".venv/bin/python -m licexp.codec decode photo.lic -o photo.png --ckpt {RUN}": Run(
        "", {"<run>": DEFAULT_RUN, "photo.lic": ENCODE}
    ),
    ".venv/bin/python -m licexp.codec info photo.lic": Run("", {"photo.lic": ENCODE}),
    ".venv/bin/python -m licexp.train quant=soft_ste backbone=tiny_lic": Run(
        f"{SMOKE} backbone=tiny_lic_small"
    ),
    ".venv/bin/python -m licexp.train quant=soft_ste backbone=tiny_lic_small "
    "trainer.max_steps=300": Run(f"{SMOKE} trainer.max_steps=4"),
    ".venv/bin/python -m licexp.train experiment=tiny_lic data.train.root=/data/photos "
    "quant=soft_ste": Run(f"{SMOKE} backbone=tiny_lic_small {GPU_RECIPE}"),
    ".venv/bin/python -m licexp.train backbone=jiang quant=fourier_qecm": Run(
        f"{SMOKE} backbone=jiang_small"
    ),
    ".venv/bin/python -m licexp.train backbone=jiang_small quant=fourier_qecm "
    "trainer.max_steps=300": Run(f"{SMOKE} trainer.max_steps=4"),
    ".venv/bin/python -m licexp.train experiment=jiang data.train.root=/data/photos": Run(
        f"{SMOKE} backbone=jiang_small {GPU_RECIPE}"
    ),
    ".venv/bin/python -m licexp.train -m experiment=jiang data.train.root=/data/photos "
    "ablation=baseline,fexm_frm,fenm_without_feature_loss,fenm,qecm": Run(
        f"{SMOKE} backbone=jiang_small {GPU_RECIPE}", jobs=5
    ),
    ".venv/bin/licexp-complexity backbone=jiang_tiny": Run("height=256 width=256 timing=false"),
    LAMBDA_SWEEP: Run(SMOKE_EVALUATED, jobs=4),
    ".venv/bin/licexp-rd logs/train/multiruns/<date>": Run("", {"<date>": LAMBDA_SWEEP}),
    ".venv/bin/python -m licexp.train -m lambdas=compressai8 quant=noise,ste": Run(SMOKE, jobs=16),
    ".venv/bin/python -m licexp.train trainer=ddp_cpu": Run(SMOKE),
    ".venv/bin/python -m licexp.train -m lmbda=0.0018,0.0067 trainer=ddp_cpu": Run(SMOKE, jobs=2),
    ".venv/bin/python -m licexp.train logger=[csv,wandb]": Run(SMOKE),
    ".venv/bin/python -m licexp.eval ckpt_path=<ckpt> quant=tcq data=kodak": Run(
        EVAL_SMALL, {"<ckpt>": DEFAULT_RUN}, needs_kodak=True
    ),
    ".venv/bin/python -m licexp.eval ckpt_path=<ckpt> quant=tcq quant.states=4 "
    "quant.rd_lambda=0.05": Run(EVAL_SMALL, {"<ckpt>": DEFAULT_RUN}),
    ".venv/bin/python experiments/tcq_inference.py logs/train/multiruns/<date> "
    "--rd-lambdas 0 0.05 0.1": Run("--images 1", {"<date>": LAMBDA_SWEEP}),
    "make lint": Run("", in_checkout=True),
    # experiments/README.md
    PAN_BASE: Run(f"{SMOKE} {GPU_RECIPE}"),
    THREE_GAPS: Run(SMOKE_EVALUATED, jobs=5),
    "python experiments/three_gaps.py logs/train/multiruns/<date>": Run("", {"<date>": THREE_GAPS}),
    f"python -m licexp.train experiment=stage2 init_from={RUN} quant=ste": Run(
        SMOKE, {"<run>": DEFAULT_RUN}
    ),
    "python experiments/stage2.py logs/train/multiruns/<date>/0 logs/train/multiruns/<date>/1": Run(
        "--steps 2 --images 1 --overrides debug=smoke", {"<date>": LAMBDA_SWEEP}
    ),
    "python -m licexp.train -m experiment=lambda_finetune lambdas=compressai8 quant=ste "
    "data.train.root=/data/photos "
    "base_checkpoint=logs/train/runs/<base>/checkpoints/last.ckpt": Run(
        f"{SMOKE} {GPU_RECIPE}", {"<base>": PAN_BASE}, jobs=8
    ),
    "python -m licexp.train -m lambdas=compressai8 quant=noise,ste": Run(SMOKE, jobs=16),
    "python -m licexp.train -m lambdas=jiang6 quant=noise,fourier_qecm": Run(SMOKE, jobs=12),
    # n_trials is the search's size, the one scale knob an Optuna sweep has
    "python -m licexp.train hparams_search=optuna_lr_n lmbda=0.0067": Run(
        f"{SMOKE} hydra.sweeper.n_trials=2", jobs=2
    ),
    "python -m licexp.rd logs/train/multiruns/<date>": Run("", {"<date>": LAMBDA_SWEEP}),
    "python experiments/default_run_spread.py --seeds 42 43 44 --threads 1 2": Run(
        "--overrides debug=smoke"
    ),
    TCQ_SWEEP: Run(SMOKE_EVALUATED, jobs=3),
    "python experiments/tcq_inference.py $S --states 8 --steps 0.45 0.5 0.56 --rd-lambdas 0 "
    "0.025 0.05 0.1 --fixed-window --out experiments/results/tcq_inference": Run(
        "--images 1", {"$S": TCQ_SWEEP}
    ),
    "python experiments/tcq_inference.py $S/1 --states 4 8 --steps 0.5 --rd-lambdas 0.05 "
    "--scans row plane --neighbours 1 2 --fixed-window "
    "--out experiments/results/tcq_inference/variants": Run("--images 1", {"$S": TCQ_SWEEP}),
    "OMP_NUM_THREADS=1 python experiments/tcq_inference.py logs/train/multiruns/<date> "
    "--rd-lambdas 0 0.025 0.05 0.1 --rdoq --weighted --reference noise_plus --jobs 2 "
    "--images 8 --out experiments/results/tcq_rdoq": Run(
        "--images 1 --rd-lambdas 0 0.1 --jobs 1", {"<date>": LAMBDA_SWEEP}
    ),
    "python -m licexp.train -m experiment=jiang data.train.root=/data/photos "
    "ablation=baseline,fexm_frm,fenm_without_feature_loss,fenm,qecm "
    "lmbda=0.0035,0.0067,0.013,0.0483": Run(f"{SMOKE} backbone=jiang_small {GPU_RECIPE}", jobs=20),
}

GPU = "needs a CUDA GPU (trainer=gpu or ddp); CI has none"
ZOO = (
    "needs weights from the Tiny-LIC release or CompressAI's zoo, which cannot be downloaded "
    "here; tests/test_importers.py writes both formats and loads them through the same code"
)
ABLATION_RECORD = (
    "the record of a measured run, Table V's rows on ../shared/data/photos and Kodak (55 "
    "minutes here); the rows run at test scale in the ablation multirun above"
)
NOT_RUNNABLE: dict[str, str] = {
    "make test": "the suite itself, which CI runs",
    "make test-fast": "the fast tier of this suite, which make test runs whole",
    "make bench": "the benchmarks take tens of minutes and rewrite BENCHMARKS.md",
    ".venv/bin/python -m licexp.train data=folder data.train.root=/data/flickr2w trainer=gpu": GPU,
    ".venv/bin/python -m licexp.train trainer=ddp trainer.devices=4": GPU,
    "torchrun --nnodes=2 --nproc-per-node=4 --node-rank=<0 or 1> --master-addr=<node 0> "
    "--master-port=29500 -m licexp.train trainer=ddp trainer.devices=4 trainer.num_nodes=2": (
        "two hosts with four GPUs each; tests/test_ddp.py runs two torchrun nodes over gloo on "
        "one machine"
    ),
    "wandb sync logs/train/runs/<run>/wandb/offline-run-*": "uploads to W&B: needs the network",
    ".venv/bin/python -m licexp.train logger=wandb logger.wandb.mode=online": (
        "logs live to W&B: needs the network and a login"
    ),
    ".venv/bin/python -m licexp.eval ckpt_path=/models/tinylic_0.0067.pth.tar backbone=tiny_lic "
    "data=kodak": ZOO,
    ".venv/bin/python -m licexp.eval ckpt_path=/models/mbt2018-mean-3-xxxx.pth.tar "
    "backbone=mean_scale data=kodak": ZOO,
    ".venv/bin/python -m licexp.eval ckpt_path=/models/tinylic_0.0067.pth.tar backbone=tiny_lic "
    "data=kodak padding=centred_zeros": ZOO,
    ".venv/bin/python -m licexp.train experiment=stage2 "
    "init_from=/models/mbt2018-mean-3-xxxx.pth.tar backbone=mean_scale lmbda=0.0067": ZOO,
    ".venv/bin/python -m licexp.eval ckpt_path=/models/tinylic_0.0067.pth.tar backbone=tiny_lic "
    "quant=tcq": ZOO,
    "for q in noise noise_plus ste ste_sn soft_ste; do\n"
    "python -m licexp.train experiment=three_gaps quant=$q trainer=gpu trainer.max_steps=4000 "
    "trainer.val_check_interval=1000 data.train.size=128 data.num_workers=3 "
    "evaluation.anchors=[jpeg] hydra.run.dir=$S/$q &\ndone; wait": GPU,
    "python experiments/three_gaps.py $S --out experiments/results/three_gaps_h100": (
        "reads the GPU runs of the loop above; the same script runs on the three_gaps sweep"
    ),
    "OMP_NUM_THREADS=1 python -m licexp.train -m hydra/launcher=joblib hydra.launcher.n_jobs=2 "
    "data=folder data.train.root=../shared/data/photos data.train.crop_size=128 "
    "data.train.crops_per_image=16 lmbda=0.0018,0.0067,0.013,0.025 seed=42,43,44 "
    "trainer.max_steps=600 evaluate=false": (
        "the record of a measured run, 12 trainings on ../shared/data/photos (32 minutes here); "
        "tests/test_launchers.py runs a joblib sweep with loader workers from the command line"
    ),
    "OMP_NUM_THREADS=1 python experiments/stage2.py logs/train/multiruns/<date> --steps 150 "
    "--jobs 2 --images 8 --out experiments/results/stage2_controls --overrides data=folder "
    "data.train.root=../shared/data/photos data.train.crop_size=128 "
    "data.train.crops_per_image=16 data.num_workers=1": (
        "the record of a measured run, 60 trainings (42 minutes here); the same script runs on "
        "two test runs above"
    ),
    "OMP_NUM_THREADS=1 python -m licexp.train -m hydra/launcher=joblib hydra.launcher.n_jobs=2 "
    "experiment=jiang trainer=cpu data.train.root=../shared/data/photos train_crop_size=64 "
    "data.batch_size=16 data.train.crops_per_image=16 data.num_workers=1 trainer.max_steps=600 "
    "lmbda=0.0067 evaluation.anchors=[jpeg] data.test._target_=licexp.data.Kodak "
    "~data.test.names backbone=jiang_small ablation=fexm_frm,fenm_without_feature_loss,fenm,"
    "qecm": ABLATION_RECORD,
    "OMP_NUM_THREADS=2 python -m licexp.train -m experiment=jiang trainer=cpu "
    "data.train.root=../shared/data/photos train_crop_size=64 data.batch_size=16 "
    "data.train.crops_per_image=16 data.num_workers=1 trainer.max_steps=600 lmbda=0.0067 "
    "evaluation.anchors=[jpeg] data.test._target_=licexp.data.Kodak ~data.test.names "
    "backbone=tiny_lic_small ablation=baseline": ABLATION_RECORD,
    "python -m licexp.rd logs/train/multiruns/<rows> logs/train/multiruns/<baseline> "
    "--out experiments/results/jiang_ablation_cpu": (
        "reads the two measured runs above; the same command runs on a test sweep above"
    ),
    "python experiments/stage2.py /work/runs/rd_sweep/0 /work/runs/rd_sweep/1 "
    "/work/runs/rd_sweep/2 /work/runs/stage1/lmbda0.013 --steps 200": (
        "the record of a run on folders of the machine that measured it; the same script runs "
        "on a test sweep above"
    ),
}

PLACEHOLDER_FOLDERS = ("/data/photos", "/data/flickr2w", "/path/to/images")
"""Folders of the user's own images in the text: a small folder of photos here."""


def test_every_readme_command_is_covered() -> None:
    documented = documented_commands()
    missing = [c for c in documented if c not in RUNS and c not in NOT_RUNNABLE]
    assert not missing, f"README commands with no row in RUNS or NOT_RUNNABLE: {missing}"
    stale = [c for c in [*RUNS, *NOT_RUNNABLE] if c not in documented]
    assert not stale, f"rows for commands no README shows: {stale}"
    assert not set(RUNS) & set(NOT_RUNNABLE)


def test_no_run_adds_a_hydra_override() -> None:
    for command, run in RUNS.items():
        added = re.findall(r"hydra\.[\w.]+", run.append)
        assert added in ([], ["hydra.sweeper.n_trials"]), (command, added)


class Workspace:
    """A working folder other than the checkout, with what the README's commands name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / ".venv").symlink_to(REPO_ROOT / ".venv")
        (root / "experiments").mkdir()
        for script in (REPO_ROOT / "experiments").glob("*.py"):
            (root / "experiments" / script.name).symlink_to(script)
        self.photos = root / "photos"
        self.photos.mkdir()
        for index in range(3):
            image = Image.effect_mandelbrot((160, 128), (-2 + index / 4, -1, 1, 1), 60)
            image.convert("RGB").save(self.photos / f"photo{index}.png")
        Image.open(self.photos / "photo0.png").save(root / "photo.jpg", quality=90)
        self.outputs: dict[str, Path] = {}
        self.sweep_root = root / "sweeps"

    def environment(self, activated: bool = True) -> dict[str, str]:
        """The environment of a shell with the project's venv activated (experiments/README.md
        types ``python``), or not (``make`` installs the venv with the system's Python)."""
        path = os.environ["PATH"]
        return {
            **os.environ,
            "PATH": f"{REPO_ROOT / '.venv' / 'bin'}{os.pathsep}{path}" if activated else path,
            "WORK": str(self.root),
            "PYTHONWARNINGS": "ignore",
            # W&B keeps its settings and staged files under the home folder
            **{
                f"WANDB_{n}_DIR": str(self.root / "wandb_home") for n in ("CONFIG", "CACHE", "DATA")
            },
        }

    def substitute(self, command: str, run: Run) -> tuple[str, dict[str, str]]:
        """The command line with its placeholders filled in, and extra environment."""
        env: dict[str, str] = {}
        for placeholder, producer in run.needs.items():
            made = self.output(producer)
            if placeholder == "photo.lic":  # a file in the working folder
                continue
            if placeholder == "$S":
                env["S"] = str(made)
            elif placeholder == "<ckpt>":
                command = command.replace(placeholder, str(made / "checkpoints" / "last.ckpt"))
            else:
                command = command.replace(placeholder, made.name)
        for folder in PLACEHOLDER_FOLDERS:
            command = command.replace(folder, str(self.photos))
        return command, env

    def output(self, producer: str) -> Path:
        """The run or sweep folder made by the README command ``producer`` (run once)."""
        if producer not in self.outputs:
            before = self.new_folders()
            result = self.run(producer)
            assert result.returncode == 0, failure(producer, result)
            made = self.new_folders() - before
            assert len(made) <= 1, made
            self.outputs[producer] = made.pop() if made else self.root
        return self.outputs[producer]

    def new_folders(self) -> set[Path]:
        found = set()
        for kind in ("runs", "multiruns"):
            found |= set((self.root / "logs" / "train" / kind).glob("*"))
        if self.sweep_root.exists():
            found |= set(self.sweep_root.glob("*"))
        return found

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        run = RUNS[command]
        line, env = self.substitute(command, run)
        if "$S" in command and "S" not in env:  # the command that makes $S
            self.sweep_root.mkdir(exist_ok=True)
            env["S"] = str(self.sweep_root / "S")
        if run.needs_kodak and not KODAK.is_dir():
            pytest.skip(f"needs the Kodak images in {KODAK}")
        return subprocess.run(
            ["bash", "-c", f"{line} {run.append}"],
            cwd=REPO_ROOT if run.in_checkout else self.root,
            env={**self.environment(activated=not run.in_checkout), **env},
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )


def failure(command: str, result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"{command!r} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("readme"))


PRODUCERS = {producer for run in RUNS.values() for producer in run.needs.values()}


def group(command: str) -> str:
    """The xdist group of a command: with the run its placeholders name (made once per
    worker), so that ``pytest -n 2 --dist loadgroup`` makes each of those runs once."""
    producer = next(iter(RUNS[command].needs.values()), command)
    while RUNS[producer].needs:
        producer = next(iter(RUNS[producer].needs.values()))
    return f"readme:{producer}" if producer in PRODUCERS else f"readme:{command}"


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=pytest.mark.xdist_group(group(c))) for c in RUNS],
    ids=lambda c: c.split(" -m ")[-1][:60],
)
def test_readme_command_runs_as_typed(workspace: Workspace, command: str) -> None:
    if command in PRODUCERS:
        made = workspace.output(command)  # run once, shared with the commands that use it
        result = None
    else:
        result = workspace.run(command)
        assert result.returncode == 0, failure(command, result)
        made = None
    run = RUNS[command]
    if run.jobs is not None:
        sweep = made or max(
            (workspace.root / "logs" / "train" / "multiruns").glob("*"), key=os.path.getmtime
        )
        jobs = [d for d in sweep.iterdir() if (d / "checkpoints" / "last.ckpt").is_file()]
        assert len(jobs) == run.jobs, f"{command}: {len(jobs)} job folders in {sweep}"
    if result is not None and "licexp.train" in command and " -m " not in command:
        assert "Done: run directory" in result.stdout + result.stderr, failure(command, result)


def test_readme_sweep_is_read_by_licexp_rd(workspace: Workspace) -> None:
    sweep = workspace.output(LAMBDA_SWEEP)
    result = subprocess.run(
        shlex.split(f"{REPO_ROOT / '.venv/bin/licexp-rd'} {sweep}"),
        cwd=workspace.root,
        env=workspace.environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, failure("licexp-rd", result)
    curves = sorted(p.name for p in (sweep / "rd").glob("*.json"))
    assert len(curves) == 2, curves  # one curve per quantiser, two lambdas each
    assert (sweep / "rd" / "rd.png").is_file() and (sweep / "rd" / "bd.csv").is_file()
