"""The command-line layer of the Hydra entry points (``licexp-train``, ``licexp-eval``, ...).

One decorator, :func:`hydra_command`, gives every entry point the same behaviour however it
is started (``python -m licexp.train``, the installed ``licexp-train``, from any folder):

- the configs come from the package ``licexp.conf`` (the repository's top-level ``conf/``,
  installed with the package), not from a path relative to the caller;
- a user error (a bad config value, an unreadable file) is one line on stderr and exit
  status 1, with the traceback only under ``HYDRA_FULL_ERROR=1``, as Hydra does for its
  own config errors;
- Ctrl-C exits with status 130 and SIGTERM with 143 (128 + the signal), the shell's
  convention, after whatever the run saves on its way out;
- Lightning's banners that say nothing about a licexp run are silenced, and Lightning's
  messages reach the run's log file as licexp's do;
- the job pickles as a reference to its entry point, so launchers that run jobs in other
  processes (``hydra/launcher=joblib``, ``submitit_local``, ``submitit_slurm``) import it
  there.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import pickle
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from licexp.config import register_resolvers

CONFIG_PACKAGE = "pkg://licexp.conf"
"""Hydra's search path for licexp's configs: the package ``licexp.conf`` (``conf/``)."""

INTERRUPTED = 128 + signal.SIGINT
TERMINATED = 128 + signal.SIGTERM

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # CheckpointError, BitstreamError, ImageReadError, ... derive from it
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    InstantiationException,
    OmegaConfBaseException,
)
"""Errors that name a problem with the user's input: reported in one line, no traceback."""

SILENCED_MESSAGES = (
    "litlogger",
    "GPU available:",
    "TPU available:",
    "Skipping setting a default `ModelSummary`",
)
"""Lightning's start-up banners: a sales tip and device lines that a CPU run always prints."""

Task = TypeVar("Task", bound=Callable[[DictConfig], Any])
log = logging.getLogger("licexp")


def error_message(error: BaseException) -> str:
    """The message of the innermost licexp error behind ``error`` (Hydra wraps the errors
    of the objects it instantiates in an ``InstantiationException`` naming the target)."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())  # one line, whatever the message's own line breaks


class _BannerFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(banner in message for banner in SILENCED_MESSAGES)


def silence_banners() -> None:
    """Drops :data:`SILENCED_MESSAGES` from Lightning's loggers (every rank, every job)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_utilities"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _BannerFilter) for f in logger.filters):
            logger.addFilter(_BannerFilter())
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("lightning.pytorch.", "lightning.fabric.")):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _BannerFilter) for f in logger.filters):
                logger.addFilter(_BannerFilter())


def route_lightning_logs() -> None:
    """Lets Lightning's messages reach the job's log file (``<run>/train.log``).

    Lightning gives its logger a console handler of its own and stops propagation when it
    is imported before logging is configured, as it is here (Hydra configures logging in
    the job): its messages then reach the console but never Hydra's file handler.
    """
    if not logging.root.handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def full_errors() -> bool:
    """``HYDRA_FULL_ERROR=1``: tracebacks wanted (Hydra's own switch)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def run_reporting_errors(task: Callable[[], Any], program: str) -> Any:
    """Runs ``task``; a user error becomes one line on stderr and exit status 1, Ctrl-C
    status 130. Under ``HYDRA_FULL_ERROR=1`` a user error propagates with its traceback."""
    try:
        return task()
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    except USER_ERRORS as error:
        if full_errors():
            raise
        message = error_message(error)
        log.debug("%s failed", program, exc_info=error)  # the traceback stays in the run's log
        print(f"{program}: error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


def entry_point_module(task: Callable[..., Any]) -> str:
    """The importable name of the module defining ``task``: under ``python -m licexp.train``
    it is ``__main__``, whose import name is in its ``__spec__``."""
    if task.__module__ != "__main__":
        return task.__module__
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:
        raise pickle.PicklingError(
            f"{task.__name__} runs from a file path: start it as `python -m <module>` or by "
            "its console script to use a launcher that runs jobs in other processes"
        )
    return spec.name


def imported_job(module: str, name: str, program: str) -> HydraJob:
    """The :class:`HydraJob` of the entry point ``module.name``, imported in this process."""
    register_resolvers()
    entry_point = getattr(importlib.import_module(module), name)
    return HydraJob(entry_point.__wrapped__, program)  # functools.wraps keeps the task


class HydraJob:
    """The function Hydra runs as a job: ``task`` with licexp's logging and error handling.

    It pickles as (module, name, program), not by value: a launcher that runs jobs in other
    processes (joblib, submitit) imports the entry point there. By value, cloudpickle would
    copy ``python -m``'s ``__main__`` with the modules it uses, which fails on torch's.
    """

    def __init__(self, task: Callable[[DictConfig], Any], program: str) -> None:
        self.task = task
        self.program = program
        functools.update_wrapper(self, task)

    def __call__(self, cfg: DictConfig) -> Any:
        silence_banners()
        route_lightning_logs()
        return run_reporting_errors(lambda: self.task(cfg), self.program)

    def __reduce__(self) -> tuple[Callable[..., HydraJob], tuple[str, str, str]]:
        return imported_job, (entry_point_module(self.task), self.task.__name__, self.program)


def hydra_command(config_name: str, program: str) -> Callable[[Task], Callable[[], Any]]:
    """``hydra.main`` for a licexp entry point: the configs of :data:`CONFIG_PACKAGE`,
    errors and signals as the module docstring says."""

    def decorate(task: Task) -> Callable[[], Any]:
        main = hydra.main(version_base="1.3", config_path=CONFIG_PACKAGE, config_name=config_name)(
            HydraJob(task, program)
        )

        @functools.wraps(task)
        def entry_point() -> Any:
            register_resolvers()
            silence_banners()
            try:
                return main()
            except KeyboardInterrupt:  # outside a job: while Hydra composes or launches
                print(f"{program}: interrupted", file=sys.stderr)
                raise SystemExit(INTERRUPTED) from None

        return entry_point

    return decorate
