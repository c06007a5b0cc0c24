"""Helpers around Hydra: building collections of objects and recording the run's origin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig


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


def save_run_info(output_dir: Path) -> None:
    """Writes ``run_info.json``: command line and git state of the code that ran."""
    output_dir.mkdir(parents=True, exist_ok=True)
    info = {"argv": sys.argv, "git": git_state(Path(__file__).resolve().parent)}
    (output_dir / "run_info.json").write_text(json.dumps(info, indent=2))
