"""How the pytest plugin turns kernel findings into a test verdict."""

from __future__ import annotations

import re

from dmagate.health import HealthReport
from dmagate.pytest_plugin import judge
from dmagate.splat import Splat

WARN = Splat("WARNING", "WARNING in splat_test_warn", 10, "WARNING: CPU: 0 ...")
OOPS = Splat("BUG", "kernel BUG in foo", 20, "kernel BUG at foo.c:1!")
W_TAINT = 1 << 9


def test_clean_run_passes() -> None:
    assert judge([], [HealthReport("vm")]) == ""


def test_unexpected_splat_fails_with_its_title() -> None:
    verdict = judge([], [HealthReport("vm", [WARN], W_TAINT)])
    assert "WARNING in splat_test_warn" in verdict
    assert "taint W" in verdict


def test_new_taint_alone_fails() -> None:
    assert "taint W" in judge([], [HealthReport("vm", [], W_TAINT)])


def test_vm_gone_fails() -> None:
    assert "exited" in judge([], [HealthReport("vm", problem="QEMU exited during the test")])


def test_expected_splat_passes_and_its_taint_too() -> None:
    assert judge([re.compile("^WARNING in splat_test_warn$")],
                 [HealthReport("vm", [WARN], W_TAINT)]) == ""


def test_expected_splat_missing_fails() -> None:
    verdict = judge([re.compile("WARNING in splat_test_warn")], [HealthReport("vm")])
    assert "none came" in verdict


def test_other_splat_next_to_expected_one_fails() -> None:
    verdict = judge([re.compile("WARNING in splat_test_warn")],
                    [HealthReport("vm", [WARN, OOPS], W_TAINT)])
    assert "kernel BUG in foo" in verdict
    assert "splat_test_warn" not in verdict.split("splat(s)")[0]
