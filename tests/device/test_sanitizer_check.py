"""A sanitizer report in QEMU's stderr fails the test that ran that QEMU,
whether QEMU reported at exit or died of it mid-test (in a child pytest:
tests/device/holders/sanitizer_report.py)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from dmagate.paths import BuildPaths

HOLDER = Path(__file__).parent / "holders" / "sanitizer_report.py"
HEADLINE = "sample.c:12:34: runtime error: shift exponent 32"


def run_holder(tmp_path: Path) -> dict[str, dict[str, str]]:
    """Each holder test's outcomes: "failure" (the call) and "error" (the
    teardown) -> message and text. JUnit gives each its own <testcase>."""
    junit = tmp_path / "holder.xml"
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HOLDER),
         f"--junitxml={junit}", f"--basetemp={tmp_path / 'child'}"],
        cwd=BuildPaths.discover().root, capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert child.returncode == 1, child.stdout + child.stderr
    outcomes: dict[str, dict[str, str]] = {}
    for case in ET.parse(junit).iter("testcase"):
        found = outcomes.setdefault(case.get("name", ""), {})
        for outcome in case:
            if outcome.tag in ("failure", "error"):
                found[outcome.tag] = f"{outcome.get('message')}\n{outcome.text}"
    return outcomes


def test_report_fails_its_test(tmp_path: Path) -> None:
    outcomes = run_holder(tmp_path)

    at_exit = outcomes["test_report_at_exit"]
    assert set(at_exit) == {"error"}, at_exit  # the test passed; its teardown did not
    assert HEADLINE in at_exit["error"]
    assert "#0 0x5581e2a5c0de in sample_write" in at_exit["error"]
    assert "qemu-stderr.log" in at_exit["error"]

    mid_test = outcomes["test_report_kills_qemu"]
    assert set(mid_test) == {"failure", "error"}, mid_test
    assert "QEMU closed qtest" in mid_test["failure"]
    assert HEADLINE in mid_test["failure"]
    assert HEADLINE in mid_test["error"]
