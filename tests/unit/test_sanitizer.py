"""Sanitizer reports found in QEMU's stderr (dmagate.sanitizer), on real
output of gcc 12's ASan, LSan and UBSan runtimes with the options the
harness sets (tests/unit/fixtures/sanitizer-*.txt: a small C program built
with -fsanitize=address,undefined, the way make qemu-asan builds QEMU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmagate.paths import BuildPaths
from dmagate.sanitizer import find_reports, format_reports, sanitizer_options, scan_log

FIXTURES = Path(__file__).parent / "fixtures"
# What a clean QEMU says on stderr in the device tests: -d guest_errors lines.
QEMU_NOISE = (
    "dmagate: doorbell with SQ disabled\n"
    "dmagate: descriptor 3: bad opcode 0x9 (a runtime error: of the guest's)\n"
)


def log(name: str) -> str:
    return (FIXTURES / f"sanitizer-{name}.txt").read_text()


def test_clean_stderr_has_no_reports() -> None:
    assert find_reports(QEMU_NOISE) == []


def test_asan_report_keeps_access_allocation_and_summary() -> None:
    (report,) = find_reports(QEMU_NOISE + log("asan-heap-overflow"))
    assert report.sanitizer == "AddressSanitizer"
    lines = report.excerpt.splitlines()
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in lines[0]
    assert lines[1].startswith("READ of size 4")
    assert "in overflow" in lines[2]
    assert "allocated by thread T0 here:" in report.excerpt
    assert "SUMMARY: AddressSanitizer: heap-buffer-overflow" in report.excerpt
    assert "Shadow byte" not in report.excerpt  # the dump is in the log, not the failure


def test_ubsan_report_with_stack() -> None:
    (report,) = find_reports(QEMU_NOISE + log("ubsan-shift"))
    assert report.sanitizer == "UBSan"
    first, top = report.excerpt.splitlines()[:2]
    assert first == ("toy.c:5:62: runtime error: "
                     "shift exponent 32 is too large for 32-bit type 'int'")
    assert "in shift" in top


def test_leak_report_names_the_allocation() -> None:
    (report,) = find_reports(log("lsan-leak"))
    assert report.sanitizer == "LeakSanitizer"
    assert "Direct leak of 40 byte(s)" in report.excerpt
    assert "in leak" in report.excerpt


def test_reports_in_order_each_cut_short() -> None:
    text = log("ubsan-shift") + QEMU_NOISE + log("asan-heap-overflow") + log("lsan-leak")
    reports = find_reports(text)
    assert [r.sanitizer for r in reports] == ["UBSan", "AddressSanitizer", "LeakSanitizer"]
    assert "dmagate:" not in reports[0].excerpt  # QEMU's next lines are no part of it
    assert all(len(r.excerpt.splitlines()) <= 40 for r in reports)


def test_scan_log_and_failure_message(tmp_path: Path) -> None:
    assert scan_log(tmp_path / "missing.log") == []
    path = tmp_path / "qemu-stderr.log"
    path.write_text(QEMU_NOISE + log("ubsan-shift"))
    message = format_reports(scan_log(path), path)
    assert message.startswith("1 sanitizer report(s) from QEMU:\ntoy.c:5:62: runtime error:")
    assert message.endswith(f"(whole reports in {path})")


def test_options_halt_and_trace_and_yield_to_the_developer() -> None:
    options = sanitizer_options({"ASAN_OPTIONS": "detect_leaks=0"})
    asan = options["ASAN_OPTIONS"].split(":")
    assert "halt_on_error=1" in asan
    assert asan.index("detect_leaks=0") > asan.index("detect_leaks=1")  # later wins
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
