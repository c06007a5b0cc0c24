"""Hydra jobs under Lightning's DDP: every rank runs the same job, in the job's directory.

Lightning's ``ddp`` strategy starts ranks 1..n-1 by running the command line again, with
``hydra.run.dir=<HydraConfig run.dir>`` appended (``_SubprocessScriptLauncher``). That is
right for a single run: the ranks share its directory and, rank 0 aside, write nothing
there but their Hydra log. Two things break in a multirun (``-m``) instead:

* the command line holds the whole sweep, so each rank would start the sweep again, and
  ``hydra.run.dir`` is not the job's directory (that is ``hydra.sweep.dir/<subdir>``);
* the launcher leaves ``LOCAL_RANK``, ``MASTER_PORT``, ... in ``os.environ`` and the process
  group open, so the next job of the sweep would take its ranks to be started by someone
  else and wait for them forever.

:func:`hydra_ddp_job` puts right both around ``trainer.fit``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, read_write

LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
"""What Lightning's launcher sets in the launching process's environment."""

MULTIRUN_FLAGS = ("-m", "--multirun")


def is_override(argument: str) -> bool:
    """Whether a command-line argument is a Hydra override (``key=value``, ``~key``)."""
    return not argument.startswith("-") and ("=" in argument or argument.startswith("~"))


def job_command_line(argv: Sequence[str], job_overrides: Sequence[str]) -> list[str]:
    """The command line of one job of a sweep: the sweep's options, the job's overrides.

    ``-m`` and the sweep's overrides are dropped; options such as ``--config-name x`` stay.
    """
    options = [a for a in argv[1:] if a not in MULTIRUN_FLAGS and not is_override(a)]
    return [argv[0], *options, *job_overrides]


@contextmanager
def hydra_ddp_job() -> Iterator[None]:
    """Lets Lightning start this Hydra job's DDP ranks; cleans up after them.

    In a multirun job, ranks 1..n-1 get this job's overrides and its output directory as
    their run directory. Afterwards the launcher's environment variables are restored and
    the process group is closed, so that the next job in this process starts afresh.
    """
    saved_env = {name: os.environ.get(name) for name in LAUNCHER_VARIABLES}
    saved_argv = sys.argv
    hydra_config = HydraConfig.get() if HydraConfig.initialized() else None
    multirun = hydra_config is not None and hydra_config.mode == RunMode.MULTIRUN
    if multirun:
        run_dir = OmegaConf.to_container(hydra_config.run)["dir"]  # unresolved, to restore
        sys.argv = job_command_line(sys.argv, list(hydra_config.overrides.task))
        with read_write(hydra_config.run):
            hydra_config.run.dir = hydra_config.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = saved_argv
        if multirun:
            with read_write(hydra_config.run):
                hydra_config.run.dir = run_dir
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


SPAWNING_LAUNCHERS = ("joblib",)
"""Hydra launchers that run each job inside a worker process of their own: Lightning's
DDP launcher would restart that worker's command line, not licexp's."""


def check_launcher_can_run(strategy: object) -> None:
    """Refuses, before anything is built, a DDP run under a launcher whose worker processes
    Lightning cannot restart as ranks (``hydra/launcher=joblib``)."""
    if not HydraConfig.initialized():
        return
    launcher = HydraConfig.get().runtime.choices.get("hydra/launcher")
    target = OmegaConf.select(strategy, "_target_") if OmegaConf.is_config(strategy) else strategy
    if launcher in SPAWNING_LAUNCHERS and "ddp" in str(target).lower():
        raise ValueError(
            f"trainer=ddp cannot run under hydra/launcher={launcher}: Lightning starts DDP's "
            "ranks by running the command line again, and a joblib job's is joblib's worker. "
            "Sweep DDP runs with the basic launcher (one job after the other) or with "
            "hydra/launcher=submitit_slurm, whose srun starts the ranks"
        )
