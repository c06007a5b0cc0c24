"""Helpers around Hydra: building collections of objects and recording the run's origin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf


def instantiate_collection(configs: DictConfig | None) -> list[Any]:
    """Instantiates every ``_target_`` entry of a mapping (callbacks, loggers); skips nulls."""
    if not configs:
        return []
    return [
        hydra.utils.instantiate(c) for c in configs.values() if c is not None and "_target_" in c
    ]


def git_state(directory: Path) -> dict[str, Any]:
    """The commit and dirtiness of the git checkout containing ``directory`` (if any)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def run_info() -> dict[str, Any]:
    """The command line and the git state of the code that runs."""
    return {"argv": sys.argv, "git": git_state(Path(__file__).resolve().parent)}


def save_run_info(output_dir: Path, info: dict[str, Any] | None = None) -> None:
    """Writes ``run_info.json`` (default: :func:`run_info`) into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "run_info.json").write_text(json.dumps(info or run_info(), indent=2))


def sweep_name() -> str | None:
    """The name of the sweep directory in a Hydra multirun job; ``None`` in a single run."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).name


WANDB_MODES = ("offline", "online")


def wandb_offline(mode: str) -> bool:
    """Lightning's ``WandbLogger(offline=...)`` for a W&B ``mode`` (``logger.wandb.mode``).

    Lightning's flag, not only wandb's own ``mode``, has to be set for an offline run: it
    keeps the whole process off the network (see ``conf/logger/wandb.yaml``).
    """
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode must be one of {WANDB_MODES}, got {mode!r}")
    return mode == "offline"


def trained_value(path: str | None, key: str, trust: bool = False) -> Any:
    """The value of the top-level ``key`` in the run config of the checkpoint at ``path``
    (a stage-2 run's ``lmbda`` is its stage-1 checkpoint's); ``trust``: the run's
    ``trust_checkpoint``."""
    from licexp.checkpoints import CONFIG_KEY, CheckpointError, read_checkpoint

    if path is None:
        raise ValueError(f"{key} comes from a checkpoint: pass init_from=<its last.ckpt>")
    config = read_checkpoint(path, trust)[CONFIG_KEY]
    if key not in config:
        raise CheckpointError(f"checkpoint {path} records no {key!r} in its run config")
    return config[key]


def register_resolvers() -> None:
    """Registers licexp's config resolvers: ``${licexp.cwd:}`` (the folder the command was
    started in), ``${licexp.sweep:}`` (:func:`sweep_name`), ``${licexp.wandb_offline:<mode>}``
    (:func:`wandb_offline`) and ``${licexp.trained:<checkpoint>,<key>[,<trust>]}``
    (:func:`trained_value`).

    ``${licexp.cwd:}`` stands where ``${hydra:runtime.cwd}`` cannot: Hydra resolves
    ``hydra.sweep.dir`` before it sets its runtime config, so a multirun's folder cannot
    depend on ``hydra:runtime``; the working folder is the same value, known at any time.
    """
    OmegaConf.register_new_resolver("licexp.cwd", os.getcwd, replace=True)
    OmegaConf.register_new_resolver("licexp.sweep", sweep_name, replace=True)
    OmegaConf.register_new_resolver("licexp.wandb_offline", wandb_offline, replace=True)
    OmegaConf.register_new_resolver("licexp.trained", trained_value, replace=True)
