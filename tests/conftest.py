"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


SLOW_TESTS = frozenset((Path(__file__).parent / "slow_tests.txt").read_text().split())
"""Tests measured slower than the fast tier allows (``tests/measure_tiers.py`` writes the
list): marked ``slow``, so that a bare ``pytest`` leaves them out and ``make test`` runs them."""


SLOW_MODULES = ("tests/test_cli.py", "tests/test_ddp.py", "tests/test_sweep.py")
"""Modules whose every test trains in a subprocess or on two ranks (seconds each): slow
whole; tests/test_cli_errors.py and tests/test_distributed.py keep the CLI and DDP code in
the fast tier."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid in SLOW_TESTS or item.nodeid.startswith(SLOW_MODULES):
            item.add_marker(pytest.mark.slow)
