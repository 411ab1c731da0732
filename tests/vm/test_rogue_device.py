"""The rogue faults (docs/device.md §8) against the real driver: what the
driver and the program see when the device writes late or astray,
interrupts late or without end, completes out of order or with another
tag, ignores its reset or drops off the bus.

Where today's driver cannot keep its promise the test states the promise
and is marked expected-to-fail with issue 11 (the driver's fixes); strict,
so a fix shows up as an unexpected pass."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dmagate.devicefaults import device_faults, dmagate_paths
from dmagate.guesttool import (
    DRIVER_TIMEOUT_MS,
    EXIT_OK,
    EXIT_XFER_ERROR,
    assert_still_works,
    dmagatectl,
    driver_timeout,
)
from dmagate.vm import VM

pytestmark = pytest.mark.vm

ETIMEDOUT = 110
WATCHDOG_MS = 1000
ISSUE_11 = "issue 11: the driver does not survive this rogue device yet"


@pytest.fixture
def short_watchdog(vm: VM) -> Iterator[VM]:
    with driver_timeout(vm, WATCHDOG_MS):
        yield vm


def interrupts(vm: VM) -> int:
    """Interrupts the guest took from dmagate, all CPUs and vectors."""
    table = vm.run("cat /proc/interrupts", check=True).stdout.splitlines()
    cpus = len(table[0].split())
    return sum(int(count) for line in table[1:] if "dmagate" in line
               for count in line.split()[1:1 + cpus])


# -- what the driver survives today --------------------------------------------------------

def test_delayed_interrupt_inside_the_watchdog_completes(vm: VM) -> None:
    knobs = {"fault-delayed-irq": 1, "fault-irq-delay-ns": 300_000_000}
    with device_faults(vm, **knobs):
        run = dmagatectl(vm, "xfer fill -s 256K")
    assert run.status == EXIT_OK, run.describe()
    assert run["verified"] == "yes"
    assert_still_works(vm)


def test_delayed_interrupt_past_the_watchdog_fails_cleanly(short_watchdog: VM) -> None:
    vm = short_watchdog
    knobs = {"fault-delayed-irq": 1, "fault-irq-delay-ns": 3_000_000_000}
    with device_faults(vm, **knobs):
        run = dmagatectl(vm, "xfer fill -s 256K")
        # The record was in the ring all along; the watchdog's reset races it.
        assert run.status in (EXIT_OK, EXIT_XFER_ERROR), run.describe()
        if run.status == EXIT_XFER_ERROR:
            assert int(run["error"]) == -ETIMEDOUT
    assert_still_works(vm)


def test_interrupt_storm_does_not_stop_transfers(vm: VM) -> None:
    before = interrupts(vm)
    with device_faults(vm, **{"fault-irq-storm-ns": 200_000}):
        run = dmagatectl(vm, "xfer fill -s 64K -n 20")
        during = interrupts(vm)
    assert run.status == EXIT_OK, run.describe()
    assert during - before > 100, "no storm reached the guest"
    settled = interrupts(vm)
    assert interrupts(vm) - settled < 5, "the storm outlived its fault"
    assert_still_works(vm)


def test_wrong_tag_fails_that_transfer_and_only_it(short_watchdog: VM) -> None:
    vm = short_watchdog
    with device_faults(vm, **{"fault-rules": "wrong-tag:times=1"}):
        run = dmagatectl(vm, "xfer fill -s 64K -n 3")
    # Completions are matched by tag: the mistagged one is ignored and its
    # transfer ends at the watchdog; the others complete.
    errors = [int(line["error"]) for line in run.lines if "seq" in line]
    assert sorted(errors) == [-ETIMEDOUT, 0, 0], run.describe()
    assert_still_works(vm)


# -- promises today's driver does not keep (issue 11) ---------------------------------------

@pytest.mark.xfail(strict=True, reason=ISSUE_11 + " (a late write into pages given back)")
def test_late_write_never_reaches_the_program(vm: VM) -> None:
    knobs = {"fault-rules": "late-write:op=transform:times=1",
             "fault-late-write-delay-ns": 100_000_000}
    with device_faults(vm, **knobs):
        run = dmagatectl(vm, "xfer transform -s 64K --recheck 400")
    assert run["verified"] == "yes", run.describe()
    assert run["recheck"] == "same", "the device wrote the program's pages after completion"


@pytest.mark.xfail(strict=True, reason=ISSUE_11 + " (a stray write into the program's pages)")
def test_stray_write_never_reaches_the_program(vm: VM) -> None:
    with device_faults(vm, **{"fault-stray-write": 1}):
        run = dmagatectl(vm, "xfer fill -s 64K -o 0 -l 8K")
    assert run["verified"] == "yes", run.describe()
    assert run["outside"] == "ok", "the device wrote a page outside the transfer"


@pytest.mark.xfail(strict=True, reason=ISSUE_11 + " (out-of-order completions)")
def test_out_of_order_completions_both_complete(short_watchdog: VM) -> None:
    vm = short_watchdog
    knobs = {"fault-rules": "out-of-order:times=1", "latency-ns": 200_000_000}
    with device_faults(vm, **knobs):
        run = vm.run("dmagatectl xfer fill -s 64K & dmagatectl xfer fill -s 64K; wait",
                     timeout=60)
    assert run.stdout.count("verified=yes") == 2, run


@pytest.mark.xfail(strict=True, reason=ISSUE_11 + " (waiters sleep once a reset fails)")
def test_ignored_reset_gives_the_waiter_an_error(fresh_vm: VM) -> None:
    with driver_timeout(fresh_vm, WATCHDOG_MS), \
            device_faults(fresh_vm, **{"fault-ignore-reset": "both", "fault-stall": 1}):
        run = dmagatectl(fresh_vm, "touch fill -s 64K --touch read -t 8000")
        assert "signal=SIGBUS" in run.stdout, "the program touched a page the device owns"
        assert "wait=timeout" not in run.stdout, "the waiter was never told"
        assert run.status == EXIT_XFER_ERROR, run.describe()


@pytest.mark.xfail(strict=True, reason=ISSUE_11 + " (all ones taken for a working device)")
def test_dead_device_behaves_as_removed(fresh_vm: VM) -> None:
    # The device stays dead to the end: today's driver gives the pages back
    # after a "reset" it took from all ones, and a device that came back
    # would finish its transfer into freed memory (seen on the debug kernel:
    # a general protection fault in another task). The VM is the test's own.
    fresh_vm.run(f"echo {WATCHDOG_MS} > {DRIVER_TIMEOUT_MS}", check=True)
    with device_faults(fresh_vm, **{"latency-ns": 3_000_000_000}):
        # In flight (3 s of latency) when the device goes dead.
        fresh_vm.run("setsid dmagatectl xfer fill -s 64K -t 8000 > /tmp/xfer.out 2>&1 "
                     "< /dev/null & sleep 0.5", check=True)
        path = dmagate_paths(fresh_vm)[0]
        fresh_vm.qmp.cmd("qom-set", path=path, property="fault-dead", value=True)
        run = fresh_vm.run("timeout 30 sh -c 'until grep -q seq= /tmp/xfer.out; do "
                           "sleep 0.2; done'; cat /tmp/xfer.out", timeout=60)
        dmesg = fresh_vm.run("dmesg | grep dmagate", check=True).stdout
    assert "did not stop" not in dmesg, "a device reading all ones was reset as a live one"
    assert "error=-19" in run.stdout, f"the transfer did not fail with ENODEV:\n{run}"
