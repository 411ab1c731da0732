"""The harness notices when the guest kernel breaks."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dmagate import taint
from dmagate.health import HealthWatch
from dmagate.vm import VM

TRIGGER = "/sys/kernel/debug/dmagate_splat_test/trigger"


@pytest.mark.expect_splat(r"^WARNING in splat_test_warn$")
def test_kernel_warning_is_reported(make_vm: Callable[..., VM]) -> None:
    guest = make_vm()
    guest.run("insmod /lib/modules/dmagate_splat_test.ko", check=True)
    watch = HealthWatch.begin(guest)
    guest.run(f"echo warn > {TRIGGER}", check=True)
    guest.console.wait_for(r"---\[ end trace", guest.scale(10), start=watch.console_mark)
    report = watch.check()
    assert [s.title for s in report.splats] == ["WARNING in splat_test_warn"]
    assert report.splats[0].kind == "WARNING"
    assert "deliberate warning" in report.splats[0].report
    assert report.new_taint & (1 << taint.TAINT_LETTERS.index("W"))
    assert not report.clean
    # What the kernel prints after a clean check, before the next test on
    # the VM begins, is that test's: it resumes where the check ended.
    assert watch.ended is None  # not clean: the next one takes its own baseline
    clean = HealthWatch.begin(guest)
    assert clean.check().clean and clean.ended is not None
    guest.run(f"echo warn > {TRIGGER}", check=True)
    guest.console.wait_for(r"---\[ end trace", guest.scale(10), start=clean.ended[0])
    later = HealthWatch.resume(guest, clean.ended).check()
    assert [s.title for s in later.splats] == ["WARNING in splat_test_warn"]
    assert later.new_taint == 0  # W came with the first warning


def test_bad_trigger_is_refused_without_splat(vm: VM) -> None:
    vm.run("insmod /lib/modules/dmagate_splat_test.ko || true")
    result = vm.run(f"echo nonsense > {TRIGGER}")
    assert result.status != 0
    assert "Invalid argument" in result.stderr
    vm.run("rmmod dmagate_splat_test", check=True)
