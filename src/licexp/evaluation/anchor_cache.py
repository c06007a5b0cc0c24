"""Live anchors measured once: :func:`~licexp.evaluation.anchors.anchor_curve` results kept
as JSON files and reused by every job that evaluates the same images.

Measuring Pillow's codecs on Kodak takes minutes, longer than a short job's training, and
every job of a sweep evaluates on the same images. :func:`cached_anchor_curve` stores a
codec's per-image rows and mean curve in ``<cache_dir>/<codec>-<key>.json``; the key is a
SHA-256 of everything that decides them:

- the images as coded: each name, shape and 8-bit pixels
  (:func:`~licexp.evaluation.anchors.coded_pixels`), in order;
- the codec settings (:func:`~licexp.evaluation.anchors.anchor_settings`: qualities,
  Pillow's encoder options, the Pillow and codec library versions);
- how they are measured: the source of licexp's anchor and metric modules and the versions
  of torch, numpy and pytorch_msssim.

A cached result keeps the encoding and decoding times of the run that measured it.

Jobs running at once (the joblib launcher) take a lock per file (``fcntl.flock``, POSIX;
elsewhere there is no lock and two jobs may measure the same anchors): the first measures,
the others wait and read its file. A file is written under a temporary name and renamed
(``os.replace``), so no reader ever sees half of one. A file that cannot be read, or does
not hold its key's results, is measured again with a warning; a cache folder that cannot
be written leaves the results uncached, with a warning.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from licexp.evaluation import anchors, metrics
from licexp.evaluation.anchors import AnchorResult, anchor_curve, anchor_settings, coded_pixels
from licexp.evaluation.results import RDCurve

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

__all__ = ["CACHE_FORMAT", "anchor_cache_key", "cache_path", "cached_anchor_curve"]

log = logging.getLogger(__name__)

#: Version of the cache files' layout; a change makes every older file a miss.
CACHE_FORMAT = 1
#: Hex digits of the key in a file's name (the file holds the whole key).
NAME_KEY_DIGITS = 20


@functools.cache
def measurement_versions() -> dict[str, str]:
    """What measures the anchors besides the codec: the SHA-256 of the anchor and metric
    modules' source and the versions of the libraries they compute with."""
    sources = hashlib.sha256()
    for module in (anchors, metrics):
        sources.update(Path(module.__file__).read_bytes())
    return {
        "sources": sources.hexdigest(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pytorch_msssim": importlib.metadata.version("pytorch_msssim"),
    }


def anchor_cache_key(images: Sequence[tuple[str, Tensor]], settings: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the images as coded and of ``settings`` (see the module docstring)."""
    digest = hashlib.sha256()
    header = {"format": CACHE_FORMAT, "settings": settings, "measurement": measurement_versions()}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name, image in images:
        pixels = coded_pixels(image)
        digest.update(json.dumps([name, list(pixels.shape)]).encode())
        digest.update(pixels.tobytes())
    return digest.hexdigest()


def cache_path(cache_dir: str | Path, codec: str, key: str) -> Path:
    """The file holding ``codec``'s results under ``key``."""
    return Path(cache_dir) / f"{codec}-{key[:NAME_KEY_DIGITS]}.json"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``<path>.lock``; none without ``fcntl`` or when that file
    cannot be opened (then parallel jobs may measure the same anchors twice)."""
    if fcntl is None:
        yield
        return
    try:
        handle = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 (closed below)
    except OSError as error:
        log.warning("no lock on the anchor cache file %s: %s", path, error)
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
        yield


def _read(path: Path, key: str) -> AnchorResult | None:
    """The result stored in ``path`` under ``key``; ``None`` when the file is missing, and
    with a warning when it cannot be read or holds something else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["format"] != CACHE_FORMAT or data["key"] != key:
            raise ValueError("it holds the results of other images or settings")
        rows = data["rows"]
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise ValueError("its rows are not a list of objects")
        return AnchorResult(rows=rows, curve=RDCurve.from_json_dict(data["curve"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("anchor cache file %s unusable (%s): measuring again", path, error)
        return None


def _write_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file beside ``path``, then renames it to ``path``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _store(
    path: Path,
    key: str,
    settings: Mapping[str, Any],
    names: Sequence[str],
    result: AnchorResult,
) -> None:
    """Writes ``result`` to ``path``; a failure leaves it uncached, with a warning."""
    data = {
        "format": CACHE_FORMAT,
        "key": key,
        "settings": settings,
        "measurement": measurement_versions(),
        "images": list(names),
        "computed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "rows": result.rows,
        "curve": result.curve.to_json_dict(),
    }
    try:
        _write_atomically(path, json.dumps(data, indent=1))
    except (OSError, TypeError, ValueError) as error:
        log.warning("anchor results not cached in %s: %s", path, error)


def cached_anchor_curve(
    images: Sequence[tuple[str, Tensor]],
    codec: str,
    qualities: Sequence[float] | None = None,
    *,
    subsampling: str = "4:2:0",
    cache_dir: str | Path | None = None,
) -> AnchorResult:
    """:func:`~licexp.evaluation.anchors.anchor_curve`, read from ``cache_dir`` when these
    images were measured with these settings before, else measured and stored there.

    ``cache_dir=None`` measures without a cache.
    """
    if cache_dir is None:
        return anchor_curve(images, codec, qualities, subsampling=subsampling)
    settings = anchor_settings(codec, qualities, subsampling=subsampling)
    key = anchor_cache_key(images, settings)
    path = cache_path(cache_dir, codec, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("anchor cache %s unusable (%s): measuring without it", cache_dir, error)
        return anchor_curve(images, codec, qualities, subsampling=subsampling)
    with _locked(path):
        cached = _read(path, key)
        if cached is not None:
            log.info("%s anchors of these %d images from %s", codec, len(images), path)
            return cached
        result = anchor_curve(images, codec, qualities, subsampling=subsampling)
        _store(path, key, settings, [name for name, _ in images], result)
        return result
