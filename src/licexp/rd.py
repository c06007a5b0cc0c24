"""RD curves and BD-rates of sweeps: ``python -m licexp.rd <sweep dir> [more dirs or JSON]``.

Collects every finished training run under the given directories (a multirun folder, a single
run, or ``logs/`` as a whole; see :mod:`licexp.evaluation.runs` for the grouping): one curve
per backbone x quantiser (x any other override that differs between the runs). For every
curve it prints a table (lambda, bpp, PSNR, MS-SSIM, estimated bpp) and writes
``<out>/<curve>.json``; it draws ``<out>/rd.png`` (PSNR-RGB and MS-SSIM in dB against bpp,
anchors dashed) and prints BD-rate and BD-PSNR (:mod:`licexp.evaluation.bjontegaard`) of
every curve and anchor against a reference curve, also written to ``<out>/bd.csv``. Results
already in ``<out>`` are replaced, with a line saying so.

Anchors: CompressAI's pretrained ``mbt2018-mean`` and ``bmshj2018-hyperprior`` (MSE, Kodak)
from ``../shared/data/anchors/kodak/`` when that folder exists, and every CompressAI-schema
JSON file given, whether as an argument beside the directories or with ``--anchor``; the
files read as anchors are listed. Such a file is drawn dashed and is the reference only when
named by ``--reference``.
W&B (``--wandb``, offline by default; ``--wandb online`` after ``wandb login``): the figure
(``rd/figure``) and the BD table (``rd/bd``) as a run of job type ``rd`` in the sweep's
W&B group (the sweep folder's name, as its jobs' ``logger.wandb.group``), written to
``<out>/wandb/``.
Reference (``--reference NAME``, any curve or anchor): by default ``mbt2018-mean``, the
published model of licexp's mean-scale backbone, when every run was evaluated on Kodak like
the anchors; otherwise the first sweep curve by name, so that runs evaluated on other images
are compared with each other and not with numbers measured on different images.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from licexp.config import WANDB_MODES
from licexp.evaluation.anchor_sources import KODAK_ANCHOR_DIR
from licexp.evaluation.bjontegaard import METHODS, bd_psnr, bd_rate
from licexp.evaluation.metrics import ms_ssim_db
from licexp.evaluation.plots import plot_rd
from licexp.evaluation.results import (
    RDCurve,
    load_rd_curve,
    print_results_table,
    save_curve,
    write_per_image_csv,
)
from licexp.evaluation.runs import find_runs, group_runs

DEFAULT_ANCHORS = (
    "compressai-mbt2018-mean_mse_cpu.json",
    "compressai-bmshj2018-hyperprior_mse_cpu.json",
)
KODAK = "Kodak"
BD_COLUMNS = ("curve", "bd_rate_pct", "bd_psnr_db", "note")


class InputError(ValueError):
    """A problem with the command line's inputs, reported in one line with exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="licexp-rd",
        description="RD curves, tables, CompressAI JSON and BD-rates of licexp sweeps.",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help="sweep or run dirs; curve JSON files given here are anchors, as with --anchor",
    )
    parser.add_argument(
        "--anchor", action="append", type=Path, default=[], help="an anchor curve JSON (repeat)"
    )
    parser.add_argument(
        "--no-default-anchors", action="store_true", help="leave out CompressAI's Kodak anchors"
    )
    parser.add_argument(
        "--reference",
        help="curve or anchor the BD numbers are measured against (default: mbt2018-mean when "
        "every run was evaluated on Kodak, else the first sweep curve by name)",
    )
    parser.add_argument(
        "--method", choices=sorted(METHODS), default="pchip", help="BD interpolation"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: <first dir>/rd)")
    parser.add_argument(
        "--wandb",
        nargs="?",
        const="offline",
        choices=WANDB_MODES,
        help="also log the figure and BD table to W&B (offline without a mode: <out>/wandb/)",
    )
    parser.add_argument(
        "--wandb-group", help="W&B group (default: the first dir's name, its sweep's group)"
    )
    parser.add_argument("--wandb-project", default="licexp", help="W&B project (licexp)")
    return parser.parse_args(argv)


def eval_set(curve: RDCurve) -> str | None:
    """The images a curve was measured on, where it says (licexp curves and anchors)."""
    return curve.metadata.get("licexp", {}).get("eval_set")


def load_curves(paths: Sequence[Path], eval_set_name: str | None = None) -> list[RDCurve]:
    """Reads CompressAI-schema files, noting ``eval_set_name`` as the images they were measured
    on; raises :class:`InputError` naming an unreadable file."""
    curves = []
    for path in paths:
        try:
            curve = load_rd_curve(path)
        except ValueError as error:
            raise InputError(str(error)) from error
        if eval_set_name and eval_set(curve) is None:
            curve.metadata.setdefault("licexp", {})["eval_set"] = eval_set_name
        curves.append(curve)
    return curves


def curve_rows(curve: RDCurve) -> list[dict[str, object]]:
    """One table row per point of ``curve``."""
    runs = curve.metadata.get("licexp", {}).get("runs", [])
    columns = {
        "lmbda": curve.extra.get("lmbda", []),
        "bpp": curve.bpp,
        "psnr": curve.psnr,
        "ms_ssim": curve.ms_ssim,
        "ms_ssim_db": [ms_ssim_db(v) for v in curve.ms_ssim],
        "estimated_bpp": curve.extra.get("estimated_bpp", []),
        "run": [shown_path(Path(run)) for run in runs],
    }
    return [
        {key: values[i] for key, values in columns.items() if i < len(values)}
        for i in range(len(curve))
    ]


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    path = path.resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def choose_reference(
    name: str | None, curves: Sequence[RDCurve], anchors: Sequence[RDCurve]
) -> RDCurve:
    """The curve or anchor called ``name``; by default as the module docstring says."""
    by_name = {curve.name: curve for curve in [*curves, *anchors]}
    if name is None:
        kodak_anchor = next(
            (a for a in anchors if a.name == "mbt2018-mean" and eval_set(a) == KODAK), None
        )
        if kodak_anchor and all(eval_set(curve) == KODAK for curve in curves):
            return kodak_anchor
        return curves[0]
    if name not in by_name:
        raise InputError(
            f"no curve named {name!r} for --reference; choose one of {sorted(by_name)}"
        )
    return by_name[name]


def bd_row(reference: RDCurve, curve: RDCurve, method: str) -> dict[str, object]:
    """BD-rate (%) and BD-PSNR (dB) of ``curve`` against ``reference``; reasons where undefined."""
    row: dict[str, object] = dict.fromkeys(BD_COLUMNS) | {"curve": curve.name}
    notes = []
    for key, label, function in (
        ("bd_rate_pct", "BD-rate", bd_rate),
        ("bd_psnr_db", "BD-PSNR", bd_psnr),
    ):
        try:
            row[key] = function(reference.bpp, reference.psnr, curve.bpp, curve.psnr, method)
        except ValueError as error:
            notes.append(f"{label}: {error}")
    sets = {eval_set(reference), eval_set(curve)} - {None}
    if len(sets) > 1:
        notes.append(f"different images: {' vs '.join(sorted(sets))}")
    row["note"] = "; ".join(notes)
    return row


def figure_title(curves: Sequence[RDCurve], anchors: Sequence[RDCurve]) -> str:
    sets = sorted({eval_set(curve) or "unknown images" for curve in curves})
    title = f"evaluated on {', '.join(sets)}"
    if any(eval_set(a) == KODAK for a in anchors) and sets != [KODAK]:
        title += "\ndashed anchors measured on Kodak, other images: compare shapes, not values"
    return title


def slug(name: str) -> str:
    return re.sub(r"[^\w.=+-]+", "_", name).strip("_") or "curve"


def check_exist(paths: Sequence[Path]) -> None:
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise InputError(f"no such file or directory: {', '.join(missing)}")


def collect_curves(dirs: Sequence[Path], console: Console) -> list[RDCurve]:
    """Sweep curves of the runs under ``dirs``."""
    if not dirs:
        raise InputError(
            "no sweep or run directory given (curve JSON files are anchors, compared with "
            "the runs of a directory)"
        )
    runs, skipped = find_runs(dirs)
    for run in skipped:
        console.print(f"[yellow]skipped[/] {escape(f'{run.path}: {run.reason}')}")
    sweeps = group_runs(runs)
    for sweep in sweeps:
        for run in sweep.duplicates:
            note = f"in {sweep.curve.name}: {run.path} ignored, a newer run has its lambda"
            console.print(f"[yellow]duplicate lambda[/] {escape(note)}")
    curves = [sweep.curve for sweep in sweeps]
    if not curves:
        raise InputError(
            f"no finished runs under {', '.join(map(str, dirs))} (a run is a folder with "
            ".hydra/config.yaml and eval/results.json)",
            code=1,
        )
    return curves


def anchor_files(files: Sequence[Path], kodak_defaults: bool) -> dict[Path, str | None]:
    """Anchor files, each once, with the images they were measured on where known:
    CompressAI's Kodak anchors (when wanted and present), then ``files``."""
    sources: dict[Path, str | None] = {}
    if kodak_defaults and KODAK_ANCHOR_DIR.is_dir():
        sources = {KODAK_ANCHOR_DIR / name: KODAK for name in DEFAULT_ANCHORS}
    for path in files:
        if path.resolve() not in {known.resolve() for known in sources}:
            sources[path] = None
    return sources


def load_anchors(sources: dict[Path, str | None], console: Console | None = None) -> list[RDCurve]:
    """The curves of :func:`anchor_files`, each file named on ``console`` as it is read."""
    anchors = []
    for path, images in sources.items():
        (anchor,) = load_curves([path], images)
        if console:
            note = f"anchor {anchor.name} (dashed) from {shown_path(path)}"
            console.print(escape(note))
        anchors.append(anchor)
    return anchors


def collect_anchors(files: Sequence[Path], kodak_defaults: bool) -> list[RDCurve]:
    return load_anchors(anchor_files(files, kodak_defaults))


def holds_results(out: Path) -> bool:
    """Whether ``out`` already holds what :func:`report` writes."""
    names = ("rd.png", "bd.csv")
    return out.is_dir() and (any((out / n).exists() for n in names) or any(out.glob("*.json")))


def report(
    curves: Sequence[RDCurve],
    anchors: Sequence[RDCurve],
    reference: RDCurve,
    method: str,
    out: Path,
    console: Console,
) -> None:
    """Tables and JSON per curve, the RD figure, and the BD table against ``reference``."""
    for curve in curves:
        rows = curve_rows(curve)
        title = f"{curve.name} (evaluated on {eval_set(curve) or 'images not stated'})"
        print_results_table(rows, list(rows[0]), title, console=console)
        save_curve(curve, out / f"{slug(curve.name)}.json")
    plot_rd(curves, out / "rd.png", figure_title(curves, anchors), anchors=anchors)
    others = [curve for curve in [*curves, *anchors] if curve is not reference]
    rows = [bd_row(reference, curve, method) for curve in others]
    title = (
        f"BD against {reference.name} ({method}, over the overlapping range; "
        "negative BD-rate: fewer bits at equal PSNR)"
    )
    print_results_table(rows, list(BD_COLUMNS), title, float_format=".3f", console=console)
    write_per_image_csv([{"reference": reference.name, **row} for row in rows], out / "bd.csv")
    console.print(f"curves, rd.png and bd.csv in {escape(str(out))}")


def log_to_wandb(args: argparse.Namespace, dirs: Sequence[Path], out: Path) -> None:
    """Logs ``out``'s figure and BD table to W&B (see the module docstring)."""
    from lightning.pytorch.loggers import WandbLogger

    from licexp.loggers.wandb import finish_wandb, log_rd

    group = args.wandb_group or dirs[0].resolve().name
    logger = WandbLogger(
        project=args.wandb_project,
        name=f"rd-{group}",
        group=group,
        job_type="rd",
        save_dir=str(out),
        mode=args.wandb,
        offline=args.wandb == "offline",  # keeps the process off the network (wandb.yaml)
    )
    exit_code = 1
    try:
        log_rd(logger, out / "rd.png", out / "bd.csv")
        exit_code = 0
    finally:
        finish_wandb([logger], exit_code)


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """The command line; returns the exit status (1: no runs found, 2: bad input)."""
    args = parse_args(argv)
    console = console or Console(width=None if Console().is_terminal else 160)
    try:
        check_exist([*args.paths, *args.anchor])
        dirs = [path for path in args.paths if path.is_dir()]
        files = [*(path for path in args.paths if not path.is_dir()), *args.anchor]
        anchors = load_anchors(anchor_files(files, not args.no_default_anchors), console)
        curves = collect_curves(dirs, console)
        reference = choose_reference(args.reference, curves, anchors)
    except InputError as error:
        console.print(f"[red]error:[/] {escape(str(error))}")
        return error.code
    out = args.out or dirs[0] / "rd"
    if holds_results(out):
        console.print(f"replacing the results in {escape(str(out))}")
    report(curves, anchors, reference, args.method, out, console)
    if args.wandb:
        log_to_wandb(args, dirs, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
