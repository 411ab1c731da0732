"""Sanitizer reports found in QEMU's stderr (dmagate.sanitizer), on whole
stderr logs of make qemu-asan's QEMU under the device tests, with the
options the harness sets (tests/unit/fixtures/sanitizer-qemu-*.txt):
  ubsan  division by zero in an early dmagate.c (test_completion_on_own_device...)
  asan   heap-use-after-free of the engine's timer after a self-unplug
         (test_transform_on_root_port_slot_control_unplugs_the_device)
  lsan   QMP quit with a 77-byte leak planted by an LD_PRELOAD constructor
  clean  QMP quit of a clean run: only ASan's makecontext warning"""

from __future__ import annotations

from pathlib import Path

import pytest

from dmagate.paths import BuildPaths
from dmagate.sanitizer import (
    EXCERPT_LINES,
    SECTION_LINES,
    find_reports,
    format_reports,
    sanitizer_options,
    scan_log,
)

FIXTURES = Path(__file__).parent / "fixtures"
# What QEMU says on stderr in the device tests besides reports (-d guest_errors).
GUEST_ERRORS = (
    "dmagate: ring index out of range (error 9, address 0x3c)\n"
    "dmagate: sq[0] tag 0x99 refused: unknown opcode (status 1, address 0x0)\n"
)


def log(name: str) -> str:
    return (FIXTURES / f"sanitizer-qemu-{name}.txt").read_text()


def test_clean_run_has_no_reports() -> None:
    assert find_reports(log("clean") + GUEST_ERRORS) == []


def test_ubsan_report_with_its_top_frames() -> None:
    (report,) = find_reports(GUEST_ERRORS + log("ubsan"))
    assert report.sanitizer == "UBSan"
    lines = report.excerpt.splitlines()
    assert lines[0] == "../src/hw/dmagate/dmagate.c:559:35: runtime error: division by zero"
    assert "in dmagate_post ../src/hw/dmagate/dmagate.c:559" in lines[1]
    assert len(lines) == SECTION_LINES  # 17 frames in the log; the top 9 here


def test_asan_report_keeps_access_free_allocation_and_summary() -> None:
    (report,) = find_reports(log("asan"))
    assert report.sanitizer == "AddressSanitizer"
    text = report.excerpt
    assert "ERROR: AddressSanitizer: heap-use-after-free" in text.splitlines()[0]
    assert "#1 0x55c04e67ef63 in dmagate_run ../src/hw/dmagate/dmagate.c:653" in text
    assert "freed by thread T0 here:" in text
    assert "in dmagate_exit ../src/hw/dmagate/dmagate.c:1033" in text
    assert "previously allocated by thread T0 here:" in text
    assert text.endswith("SUMMARY: AddressSanitizer: heap-use-after-free "
                         "../src/util/qemu-timer.c:469 in timer_mod")
    assert "Shadow byte" not in text  # the dump stays in the log
    assert len(text.splitlines()) <= EXCERPT_LINES


def test_leak_report_names_the_allocation() -> None:
    (report,) = find_reports(log("lsan"))
    assert report.sanitizer == "LeakSanitizer"
    assert "Direct leak of 77 byte(s) in 1 object(s)" in report.excerpt
    assert "in leak_at_start" in report.excerpt
    assert "makecontext" not in report.excerpt


def test_reports_in_order_each_ending_where_it_ends() -> None:
    reports = find_reports(log("ubsan") + GUEST_ERRORS + log("asan") + log("lsan"))
    assert [r.sanitizer for r in reports] == ["UBSan", "AddressSanitizer", "LeakSanitizer"]
    assert "dmagate: ring index" not in reports[0].excerpt
    assert "makecontext" not in reports[1].excerpt


def test_scan_log_and_failure_message(tmp_path: Path) -> None:
    assert scan_log(tmp_path / "missing.log") == []
    path = tmp_path / "qemu-stderr.log"
    path.write_text(log("ubsan"))
    message = format_reports(scan_log(path), path)
    assert message.startswith("1 sanitizer report(s) from QEMU:\n../src/hw/dmagate/dmagate.c:559")
    assert message.endswith(f"(whole reports in {path})")


def test_options_halt_and_trace_and_yield_to_the_developer() -> None:
    options = sanitizer_options({"ASAN_OPTIONS": "detect_leaks=0"})
    asan = options["ASAN_OPTIONS"].split(":")
    assert "halt_on_error=1" in asan
    assert asan.index("detect_leaks=0") > asan.index("detect_leaks=1")  # the later one wins
    assert set(options["UBSAN_OPTIONS"].split(":")) >= {"halt_on_error=1", "print_stacktrace=1"}
    assert not options["LSAN_OPTIONS"].endswith(":")


@pytest.mark.parametrize("qemu", [None, "elsewhere/qemu-system-x86_64"])
def test_dmagate_qemu_overrides_the_binary(
    qemu: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DMAGATE_ROOT", str(tmp_path))
    if qemu is None:
        monkeypatch.delenv("DMAGATE_QEMU", raising=False)
        expected = tmp_path / "build" / "qemu" / "qemu-system-x86_64"
    else:
        monkeypatch.setenv("DMAGATE_QEMU", qemu)
        expected = tmp_path / qemu  # relative to where the harness was started
    assert BuildPaths.discover().qemu == expected
