"""Finished training runs under sweep directories, grouped into one RD curve per setting.

A run is a directory holding Hydra's ``.hydra/config.yaml`` and ``.hydra/hydra.yaml`` (every
``python -m licexp.train`` job, single or multirun) and, once evaluated, ``eval/results.json``
(one RD point). Runs are grouped by backbone and quantiser (Hydra's runtime choices), by
evaluation set, and by any other command-line override whose value differs between the runs
found (``model.optimizer.lr=...``, ``backbone.N=...``): runs that differ only in ``lmbda``
(and in bookkeeping: ``logger``, ``callbacks``, ``evaluation``, ``hydra.*``) form one curve.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from licexp.evaluation.results import RESULT_KEYS, RDCurve, load_curve

__all__ = ["Run", "SkippedRun", "SweepCurve", "find_runs", "group_runs"]

RESULTS = Path("eval") / "results.json"

# Overrides that do not change the trained model, or that the grouping reads elsewhere.
_NOT_A_SETTING = {"lmbda", "lambdas", "backbone", "quant", "ckpt_path", "evaluate"}
_BOOKKEEPING_PREFIXES = ("hydra", "logger", "callbacks", "paths", "evaluation")


@dataclass(frozen=True)
class Run:
    """One finished run: its setting, its lambda and its evaluated RD point."""

    path: Path
    backbone: str
    quant: str
    lmbda: float
    eval_set: str
    overrides: dict[str, str]
    point: RDCurve


@dataclass(frozen=True)
class SkippedRun:
    """A directory with a Hydra config that holds no usable result, and why."""

    path: Path
    reason: str


@dataclass
class SweepCurve:
    """An RD curve of runs sorted by bpp; ``curve.extra["lmbda"]`` holds their lambdas."""

    curve: RDCurve
    runs: list[Run]
    duplicates: list[Run] = field(default_factory=list)


def _is_setting(key: str) -> bool:
    key = key.lstrip("+~")
    return key not in _NOT_A_SETTING and not any(
        key == prefix or key.startswith(f"{prefix}.") for prefix in _BOOKKEEPING_PREFIXES
    )


def _eval_set(config: DictConfig) -> str:
    """A short name of the images the run was evaluated on, ``"Kodak"`` for Kodak."""

    def select(key: str) -> object:
        try:
            return OmegaConf.select(config, f"data.test.{key}")
        except OmegaConfBaseException:
            return None

    kind = str(select("_target_") or "unknown").rsplit(".", 1)[-1]
    if kind == "Kodak":
        return "Kodak"
    names, root, crop = select("names"), select("root"), select("crop_size")
    detail = ", ".join(names) if names else (str(root) if root else "")
    label = f"{kind}({detail})" if detail else kind
    return f"{label} {crop} px crops" if crop else label


def read_run(run_dir: Path) -> Run:
    """Reads a run's setting and RD point; raises ``ValueError`` naming what is missing."""
    try:
        config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        hydra_config = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as error:
        raise ValueError(f"unreadable Hydra config: {error}") from error
    if "lmbda" not in config:
        raise ValueError("not a training run (no lmbda in .hydra/config.yaml)")
    if not (run_dir / RESULTS).is_file():
        raise ValueError(f"no {RESULTS} (unfinished, failed, or evaluate=false)")
    try:
        point = load_curve(run_dir / RESULTS)
    except (OSError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"unreadable {RESULTS}: {error}") from error
    if len(point) != 1 or not point.psnr:
        raise ValueError(f"{RESULTS} should hold one point with PSNR, has {len(point)}")
    overrides = dict(item.split("=", 1) for item in hydra_config.overrides.task if "=" in item)
    return Run(
        path=run_dir,
        backbone=str(hydra_config.runtime.choices.backbone),
        quant=str(hydra_config.runtime.choices.quant),
        lmbda=float(config.lmbda),
        eval_set=_eval_set(config),
        overrides={key: value for key, value in overrides.items() if _is_setting(key)},
        point=point,
    )


def find_runs(roots: Iterable[Path]) -> tuple[list[Run], list[SkippedRun]]:
    """Every run under ``roots`` (a root may itself be a run); runs that cannot be read are
    returned as skipped, with the reason."""
    runs, skipped = [], []
    for root in roots:
        for config in sorted(Path(root).glob("**/.hydra/config.yaml")):
            run_dir = config.parent.parent
            try:
                runs.append(read_run(run_dir))
            except ValueError as error:
                skipped.append(SkippedRun(run_dir, str(error)))
    return runs, skipped


def _curve_name(run: Run, varying: Sequence[str], several_sets: bool) -> str:
    name = f"{run.backbone}-{run.quant}"
    name += "".join(f" {key}={run.overrides[key]}" for key in varying if key in run.overrides)
    return f"{name} on {run.eval_set}" if several_sets else name


def group_runs(runs: Sequence[Run]) -> list[SweepCurve]:
    """One curve per setting, points sorted by bpp, curves sorted by name.

    Two runs of one setting with the same lambda (a sweep repeated) keep the newer result
    (``eval/results.json`` modification time); the other is listed in ``duplicates``.
    """
    keys = sorted({key for run in runs for key in run.overrides})
    varying = [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]
    several_sets = len({run.eval_set for run in runs}) > 1
    groups: dict[str, dict[float, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[_curve_name(run, varying, several_sets)][run.lmbda].append(run)

    curves = []
    for name in sorted(groups):
        chosen, duplicates = [], []
        for same_lambda in groups[name].values():
            same_lambda.sort(key=lambda run: (run.path / RESULTS).stat().st_mtime)
            chosen.append(same_lambda[-1])
            duplicates += same_lambda[:-1]
        chosen.sort(key=lambda run: run.point.bpp[0])
        curves.append(SweepCurve(_curve(name, chosen), chosen, duplicates))
    return curves


def _column(points: Sequence[RDCurve], attribute: str) -> list[float]:
    """The points' values of a metric, or ``[]`` if any point lacks it."""
    values = [getattr(point, attribute) for point in points]
    return [value[0] for value in values] if all(values) else []


def _curve(name: str, runs: Sequence[Run]) -> RDCurve:
    points = [run.point for run in runs]
    return RDCurve(
        name=name,
        description=f"licexp sweep, real bitstreams on {runs[0].eval_set}",
        **{attr: _column(points, attr) for attr in RESULT_KEYS.values()},
        extra={
            "lmbda": [run.lmbda for run in runs],
            "estimated_bpp": [p.extra.get("estimated_bpp", [None])[0] for p in points],
        },
        metadata={
            "licexp": {"eval_set": runs[0].eval_set, "runs": [str(run.path) for run in runs]}
        },
    )
