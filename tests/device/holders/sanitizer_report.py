"""Run by tests/device/test_sanitizer_check.py in a child pytest, never
collected on its own: tests whose QEMU "reported" a UBSan error. The report
is written into QEMU's stderr log by the test, as a sanitizer build of
QEMU would have printed it, so this works with any QEMU build."""

from __future__ import annotations

from collections.abc import Callable

from dmagate.qtest import QTestMachine

REPORT = """\
../src/hw/misc/sample.c:12:34: runtime error: shift exponent 32 is too large for 32-bit type 'int'
    #0 0x5581e2a5c0de in sample_write ../src/hw/misc/sample.c:12
    #1 0x5581e2b0c1a2 in memory_region_write_accessor ../src/system/memory.c:497

SUMMARY: UndefinedBehaviorSanitizer: undefined-behavior ../src/hw/misc/sample.c:12:34
"""


def report(machine: QTestMachine) -> None:
    with machine.stderr_log.open("a") as log:
        log.write(REPORT)


def test_report_at_exit(make_machine: Callable[..., QTestMachine]) -> None:
    """Passes as a test; the report must fail it at teardown."""
    machine = make_machine()
    machine.close()
    report(machine)


def test_report_kills_qemu(make_machine: Callable[..., QTestMachine]) -> None:
    """QEMU halts on the report mid-test: the next command fails with it."""
    machine = make_machine()
    machine.kill()
    report(machine)
    machine.readl(0)
