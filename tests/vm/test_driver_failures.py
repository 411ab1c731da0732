"""Device failures, injected over QMP, as the driver and the program see
them: a failed transfer completes with an error and gives the pages back; a
lost interrupt or a stalled device trips the watchdog, which resets the
device before anything is given back; the device works afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dmagate.devicefaults import device_faults, get_knob
from dmagate.guesttool import (
    DRIVER_TIMEOUT_MS,
    EXIT_MISMATCH,
    EXIT_OK,
    EXIT_XFER_ERROR,
    assert_still_works,
    dmagatectl,
    driver_stats,
    driver_timeout,
    stats_delta,
)
from dmagate.hwregs import HW
from dmagate.vm import VM

EIO, ETIMEDOUT = 5, 110
WATCHDOG_MS = 1000


@pytest.fixture
def short_watchdog(vm: VM) -> Iterator[VM]:
    with driver_timeout(vm, WATCHDOG_MS):
        yield vm


def test_dma_error_completes_with_eio_and_regrants(vm: VM) -> None:
    before = driver_stats(vm)
    with device_faults(vm, **{"fault-dma-error": 1}):
        run = dmagatectl(vm, "touch fill --touch write -s 256K -o 0 -l 128K --at 0x1000")
    assert run.status != EXIT_OK
    xfer = next(line for line in run.lines if "seq" in line)
    assert int(xfer["error"]) == -EIO and int(xfer["status"]) == HW["ST_DMA_ERROR"]
    assert int(xfer["bytes"]) == 64 * 1024
    assert run["after"] == "ok", "pages of a failed transfer are given back"
    assert set(run["revents"].split("|")) == {"IN", "ERR"}
    assert stats_delta(before, driver_stats(vm))["errors"] == 1
    assert_still_works(vm)


def test_partial_transfer_reports_the_truth(vm: VM) -> None:
    with device_faults(vm, **{"fault-partial": 1}):
        run = dmagatectl(vm, "xfer checksum -s 64K")
    assert run.status == EXIT_XFER_ERROR, run.describe()
    assert int(run["error"]) == -EIO and int(run["status"]) == HW["ST_SHORT"]
    assert run["bytes"] == str(32 * 1024)
    assert_still_works(vm)


def test_corrupt_data_is_caught_by_independent_verification(vm: VM) -> None:
    with device_faults(vm, **{"fault-corrupt": 1}):
        run = dmagatectl(vm, "xfer fill -s 64K")
    # The device claims success; only the tool's own reference sees the damage.
    assert run.status == EXIT_MISMATCH, run.describe()
    assert (run["error"], run["verified"], run["bad_offset"]) == ("0", "no", "0x0")
    assert_still_works(vm)


@pytest.mark.parametrize("knob", ["fault-drop-irq", "fault-stall"])
def test_watchdog_resets_the_device_then_regrants(short_watchdog: VM, knob: str) -> None:
    vm = short_watchdog
    before = driver_stats(vm)
    with device_faults(vm, **{knob: 1}):
        run = dmagatectl(vm, "touch fill --touch read -s 64K --at 0x2000")
        assert get_knob(vm, knob) == 0, "the fault fired"
    xfer = next(line for line in run.lines if "seq" in line)
    assert int(xfer["error"]) == -ETIMEDOUT, run.describe()
    assert run["signal"] == "SIGBUS" and run["after"] == "ok"
    delta = stats_delta(before, driver_stats(vm))
    assert (delta["timeouts"], delta["errors"], delta["completions"]) == (1, 1, 1)
    log = vm.run("dmesg | tail -n 20", check=True).stdout
    assert "transfer timed out: resetting the device" in log
    assert_still_works(vm)


def test_spurious_interrupts_change_nothing(vm: VM) -> None:
    before = driver_stats(vm)
    with device_faults(vm, **{"fault-spurious-irq": 5}):
        assert_still_works(vm)
    delta = stats_delta(before, driver_stats(vm))
    assert (delta["completions"], delta["errors"]) == (1, 0)


def test_duplicate_completion_is_ignored(vm: VM) -> None:
    with device_faults(vm, **{"fault-duplicate-completion": 1}):
        assert_still_works(vm)
    assert "ignoring a completion for tag" in vm.run("dmesg | tail -n 5", check=True).stdout
    assert_still_works(vm)


@pytest.mark.parametrize("value", ["0", "60001", "4294967296", "soon"])
def test_watchdog_timeout_is_bounded(vm: VM, value: str) -> None:
    # close() waits for the device up to about timeout_ms, uninterruptibly:
    # above a minute the hung-task detector would fire first.
    before = vm.run(f"cat {DRIVER_TIMEOUT_MS}", check=True).stdout
    refused = vm.run(f"echo {value} > {DRIVER_TIMEOUT_MS}")
    assert refused.status != 0, f"timeout_ms={value} was taken"
    assert vm.run(f"cat {DRIVER_TIMEOUT_MS}", check=True).stdout == before


def test_watchdog_timeout_of_a_minute_is_taken(vm: VM) -> None:
    with driver_timeout(vm, 60000):
        assert vm.run(f"cat {DRIVER_TIMEOUT_MS}", check=True).stdout.strip() == "60000"
