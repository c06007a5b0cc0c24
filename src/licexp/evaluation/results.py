"""Rate-distortion results: CompressAI-schema JSON curves, CSV rows, interpolation, tables.

The JSON schema is the one written by ``compressai.utils.eval_model`` and used by the
anchor files shipped with CompressAI::

    {"name": str, "description": str,
     "results": {"psnr-rgb": [...], "ms-ssim-rgb": [...], "bpp": [...],
                 "encoding_time": [...], "decoding_time": [...]}}

with one list entry per rate-distortion point.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.interpolate import PchipInterpolator

__all__ = [
    "RESULT_KEYS",
    "RDCurve",
    "load_curve",
    "load_rd_curve",
    "save_curve",
    "write_per_image_csv",
    "interpolate_psnr_at_bpp",
    "interpolate_bpp_at_psnr",
    "format_results_table",
    "print_results_table",
]

#: JSON result keys of the standard metrics, mapped to the :class:`RDCurve` attribute names.
RESULT_KEYS: dict[str, str] = {
    "psnr-rgb": "psnr",
    "ms-ssim-rgb": "ms_ssim",
    "bpp": "bpp",
    "encoding_time": "encoding_time",
    "decoding_time": "decoding_time",
}


@dataclass
class RDCurve:
    """A rate-distortion curve: parallel lists with one entry per RD point.

    Metrics a source does not provide are empty lists (e.g. published paper curves have no
    times, some no MS-SSIM). Additional per-point result lists (e.g. ``"estimated_bpp"`` or
    ``"ms-ssim-db-rgb"``) live in ``extra`` under their JSON key; additional top-level JSON
    entries (e.g. ``"meta"``) live in ``metadata``. Both are written back by
    :meth:`to_json_dict`.

    Raises:
        ValueError: a non-empty list's length differs from the others', or an ``extra`` key
            clashes with a standard result key.
    """

    name: str
    description: str = ""
    bpp: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    ms_ssim: list[float] = field(default_factory=list)
    encoding_time: list[float] = field(default_factory=list)
    decoding_time: list[float] = field(default_factory=list)
    extra: dict[str, list[Any]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clashes = set(self.extra) & set(RESULT_KEYS)
        if clashes:
            raise ValueError(f"extra keys clash with standard result keys: {sorted(clashes)}")
        clashes = set(self.metadata) & {"name", "description", "results"}
        if clashes:
            raise ValueError(f"metadata keys clash with top-level schema keys: {sorted(clashes)}")
        lengths = {key: len(values) for key, values in self._result_lists().items() if values}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"result lists of curve {self.name!r} differ in length: {lengths}")

    def __len__(self) -> int:
        """Number of RD points."""
        return max((len(values) for values in self._result_lists().values()), default=0)

    def _result_lists(self) -> dict[str, list[Any]]:
        """All result lists keyed by JSON key, standard keys first."""
        lists = {key: getattr(self, attr) for key, attr in RESULT_KEYS.items()}
        lists.update(self.extra)
        return lists

    def to_json_dict(self) -> dict[str, Any]:
        """The curve in the CompressAI JSON schema.

        Empty standard lists other than ``bpp`` are omitted rather than written as ``[]``.
        """
        results = {
            key: list(values)
            for key, values in self._result_lists().items()
            if values or key == "bpp"
        }
        return {
            "name": self.name,
            "description": self.description,
            **self.metadata,
            "results": results,
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> RDCurve:
        """Build a curve from a CompressAI-schema mapping; missing metric keys become ``[]``."""
        results = data.get("results")
        if not isinstance(results, Mapping):
            raise ValueError("a CompressAI result dict needs a 'results' mapping")
        for key, values in results.items():
            if not isinstance(values, list):
                raise ValueError(f"results[{key!r}] must be a list, got {type(values).__name__}")
        standard = {
            attr: [float(v) for v in results.get(key, [])] for key, attr in RESULT_KEYS.items()
        }
        extra = {key: list(values) for key, values in results.items() if key not in RESULT_KEYS}
        metadata = {
            key: value
            for key, value in data.items()
            if key not in ("name", "description", "results")
        }
        return cls(
            name=str(data.get("name", "")),
            description=str(data.get("description", "")),
            extra=extra,
            metadata=metadata,
            **standard,
        )


def load_curve(path: str | Path) -> RDCurve:
    """Read a CompressAI-schema JSON file; a missing ``name`` becomes the file's stem."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        curve = RDCurve.from_json_dict(json.load(handle))
    if not curve.name:
        curve.name = path.stem
    return curve


def load_rd_curve(path: str | Path, what: str = "curve file") -> RDCurve:
    """:func:`load_curve` for a file that must hold RD points; raises a ``ValueError``
    naming ``what`` and the file when it cannot be read or has no bpp and PSNR-RGB points."""
    try:
        curve = load_curve(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {what} {path}: {error}") from error
    if not curve.bpp or len(curve.psnr) != len(curve.bpp):
        raise ValueError(f"{what} {path} has no bpp and PSNR-RGB points")
    return curve


def save_curve(curve: RDCurve, path: str | Path) -> None:
    """Write ``curve`` as CompressAI-schema JSON (indented), creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        json.dump(curve.to_json_dict(), handle, indent=2)
        handle.write("\n")


def write_per_image_csv(
    rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Iterable[str] | None = None
) -> None:
    """Write dict rows to CSV; the header is ``columns``, by default the union of the rows'
    keys in first-seen order.

    Keys a row lacks are left empty. Parent directories are created.
    """
    if columns is None:
        columns = dict.fromkeys(key for row in rows for key in row)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)


def _monotone_interpolate(
    xs: Sequence[float], ys: Sequence[float], query: float, what: str
) -> float | None:
    """PCHIP interpolation of ``ys`` over ``xs`` at ``query``; ``None`` outside ``xs``'s range.

    Points with a non-finite coordinate are dropped; ``xs`` must then be strictly increasing
    after sorting (at least two points).
    """
    points = sorted((x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x + y))
    if len(points) < 2:
        raise ValueError(f"need at least 2 finite points to interpolate {what}, got {len(points)}")
    x_arr = np.array([p[0] for p in points])
    y_arr = np.array([p[1] for p in points])
    if np.any(np.diff(x_arr) <= 0):
        raise ValueError(f"cannot interpolate {what}: repeated abscissae {x_arr.tolist()}")
    if not math.isfinite(query) or query < x_arr[0] or query > x_arr[-1]:
        return None
    return float(PchipInterpolator(x_arr, y_arr, extrapolate=False)(query))


def _log_bpp(curve: RDCurve) -> list[float]:
    if any(b <= 0 for b in curve.bpp):
        raise ValueError(f"curve {curve.name!r} has non-positive bpp values: {curve.bpp}")
    return [math.log(b) for b in curve.bpp]


def interpolate_psnr_at_bpp(curve: RDCurve, bpp: float) -> float | None:
    """PSNR of ``curve`` at rate ``bpp``, or ``None`` if ``bpp`` is outside the curve's range.

    Monotone piecewise-cubic (``scipy.interpolate.PchipInterpolator``) interpolation of PSNR
    over log(bpp), the points sorted by bpp; the range ends are included. Points with a
    non-finite PSNR (lossless) are ignored.
    """
    if not curve.psnr:
        raise ValueError(f"curve {curve.name!r} has no PSNR values")
    if bpp <= 0:
        return None
    return _monotone_interpolate(_log_bpp(curve), curve.psnr, math.log(bpp), "PSNR over log-bpp")


def interpolate_bpp_at_psnr(curve: RDCurve, psnr: float) -> float | None:
    """Rate (bpp) ``curve`` needs to reach ``psnr``, or ``None`` outside its PSNR range.

    Monotone piecewise-cubic (PCHIP) interpolation of log(bpp) over PSNR, the points sorted by
    PSNR, which therefore must be strictly increasing along the curve's points. Useful for
    statements like "the model needs X % fewer bits than JPEG at equal PSNR".
    """
    if not curve.psnr:
        raise ValueError(f"curve {curve.name!r} has no PSNR values")
    log_rate = _monotone_interpolate(curve.psnr, _log_bpp(curve), psnr, "log-bpp over PSNR")
    return None if log_rate is None else math.exp(log_rate)


def _format_cell(value: Any, float_format: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(value)
    if not math.isfinite(value):
        return str(float(value))
    return format(value, float_format)


def format_results_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    title: str,
    float_format: str = ".4f",
) -> Table:
    """A ``rich`` table of ``rows`` restricted to ``columns`` (in that order).

    Floats are formatted with ``float_format``, missing values are blank, and columns whose
    values are all numeric are right-aligned.
    """
    table = Table(title=title)
    for column in columns:
        values = [row.get(column) for row in rows if row.get(column) is not None]
        numeric = bool(values) and all(
            isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values
        )
        table.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(_format_cell(row.get(column), float_format) for column in columns))
    return table


def print_results_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    title: str,
    float_format: str = ".4f",
    console: Console | None = None,
) -> None:
    """Print :func:`format_results_table` to ``console`` (a new stdout console by default)."""
    (console or Console()).print(format_results_table(rows, columns, title, float_format))
