"""The seeded device fuzz: the package tests/device/fuzz (its docstring
says what it does and how to replay a run).

    DMAGATE_FUZZ_SEED=1234 DMAGATE_FUZZ_OPS=20000 .venv/bin/pytest tests/device/test_fuzz.py -q -s
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from dmagate.qtest import QTestMachine

from .fuzz.report import Reporter
from .fuzz.runner import run
from .fuzz.seed import choose_seed


def test_fuzz(make_machine: Callable[..., QTestMachine], tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> None:
    """Chaos and checked phases; DMAGATE_FUZZ_SEED replays, DMAGATE_FUZZ_OPS sets the length."""
    seed, origin = choose_seed(os.environ, Path(__file__).parent)
    total = int(os.environ.get("DMAGATE_FUZZ_OPS", "100000"))
    keep_going = os.environ.get("DMAGATE_FUZZ_KEEP_GOING", "") not in ("", "0")
    # glibc fills freed memory: a use after free in a plain build reads garbage and crashes.
    monkeypatch.setenv("MALLOC_PERTURB_", "165")
    rep = Reporter(seed, total, keep_going)
    print(f"\nfuzz seed {seed} ({origin}), {total} operations; {rep.replay()}")
    run(make_machine, tmp_path, rep)
