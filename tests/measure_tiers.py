"""Writes tests/slow_tests.txt: the tests that make the fast tier slower than it should be.

    .venv/bin/python tests/measure_tiers.py [--threshold 0.3]

Runs the whole suite in one process at one thread (``pytest -m "slow or not slow"
--durations=0``), and lists every test whose setup, call and teardown together take more
than ``--threshold`` seconds, except the cheapest test of each module, which stays in the
fast tier so that every module is covered. ``tests/conftest.py`` marks the listed tests
``slow``; a bare ``pytest`` (``make test-fast``) leaves them out, ``make test`` runs them.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
LIST = TESTS / "slow_tests.txt"
MARKED_IN_CODE = (
    "test_readme_commands.py",
    "test_packaging.py",
    "test_cli.py",
    "test_ddp.py",
    "test_sweep.py",
)


def durations() -> dict[str, float]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "slow or not slow",
            "--durations=0",
            "--durations-min=0",
        ],
        cwd=TESTS.parent,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    per: dict[str, float] = collections.Counter()
    for line in result.stdout.splitlines():
        if m := re.match(r"([\d.]+)s (?:call|setup|teardown)\s+(.+)$", line):
            per[m.group(2)] += float(m.group(1))
    return per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threshold", type=float, default=0.3)
    args = parser.parse_args()
    per = {k: v for k, v in durations().items() if not k.split("::")[0].endswith(MARKED_IN_CODE)}
    cheapest = {}
    for test, seconds in per.items():
        module = test.split("::")[0]
        if module not in cheapest or seconds < per[cheapest[module]]:
            cheapest[module] = test
    slow = sorted(
        t for t, s in per.items() if s > args.threshold and t != cheapest[t.split("::")[0]]
    )
    LIST.write_text("".join(f"{test}\n" for test in slow))
    fast = sum(s for t, s in per.items() if t not in slow)
    print(f"{len(slow)} tests marked slow; the fast tier's tests take {fast:.1f} s")


if __name__ == "__main__":
    main()
