"""Checkpoint files that are either complete or absent: write a temporary file, then rename."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoint IO, made atomic on a local file system.

    The checkpoint goes to a hidden temporary file beside its target, is flushed to disk,
    and then replaces the target with ``os.replace`` (atomic within one file system).
    Killing the process at any moment leaves the previous checkpoint whole; Lightning's
    own save writes through an fsspec transaction whose temporary file lives in the
    system's temp folder, so its final move may be a copy across file systems.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
