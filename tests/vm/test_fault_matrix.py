"""The fault matrix: every fault the device can show (docs/device.md §8)
against the driver in every state a program can be in when it hits:

  idle      the fault is armed while nothing is in flight, then a transfer runs
  poll, select, epoll, read, ioctl
            a transfer in flight, its program waiting that way
  close     the program closes the file (and unmaps) mid-transfer
  unbind    the driver is unbound mid-transfer, its program polling

On the debug kernel (five times slower) the cells waiting by select, epoll
and read, and the idle ones, are left out: their driver paths are those of
poll and WAIT, which run there.

Each cell is a test: the plugin fails it on a splat, a new taint or an
ownership violation (late and stray writes declare theirs), and the module
ends with a kmemleak scan on the debug kernel. Each cell asserts the
outcome docs/driver.md ("When the device misbehaves") promises, then that
the driver works (after rebinding it, where the fault took the device
away). The table of outcomes is printed at the end of the run and written
to build/test-artifacts/fault-matrix-<flavour>.txt.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from dmagate.cmdline import IOMMU_DEVICES, IOMMU_STRICT_ARGS
from dmagate.devicefaults import device_faults
from dmagate.flavours import image_dir_name
from dmagate.guesttool import (
    DRIVER_TIMEOUT_MS,
    EXIT_MISMATCH,
    EXIT_OK,
    dmagatectl,
    driver_stats,
    driver_timeout,
    merged_fields,
    stats_delta,
    still_works,
    submitted_in_background,
    wait_for,
)
from dmagate.paths import BuildPaths
from dmagate.pytest_plugin import record_table
from dmagate.vm import VM

# The cells that end at the watchdog wait this long; the slowest that must
# not (a delayed interrupt: latency plus 300 ms) have 900 ms to spare.
WATCHDOG_MS = 1500
# Every cell's transfer waits this long on the device before its data pass:
# the program waits (or closes) mid-transfer, since it does so right after
# submitting, in the same process (an unbind cell, from outside, waits
# longer: below). Each cell's time is mostly such waits on the device.
LATENCY_NS = 300_000_000
TRANSFER = "fill -s 64K -l 8K"
# An unbind cell's transfer is ended by the reset at unbind, so its length
# costs nothing: it waits long enough, under a watchdog longer still, that
# no load on the host lets it finish or time out before the unbind lands.
UNBIND_LATENCY_NS = 30_000_000_000
UNBIND_WATCHDOG_MS = 60_000
STATES = ("idle", "poll", "select", "epoll", "read", "ioctl", "close", "unbind")
DRIVER = "/sys/bus/pci/drivers/dmagate"
STOCK_ONLY_STATES = frozenset({"idle", "select", "epoll", "read"})
OWNERSHIP_BROKEN = r"data .*(belongs to the program|was taken back)"


@dataclass(frozen=True)
class Fault:
    knobs: dict[str, Any]
    outcome: str  # what a waiter sees: ok, EIO, ETIMEDOUT, ENODEV, mismatch
    # The device writes outside the transfer's window (unless an unbind's
    # reset cancels it first).
    breaks_ownership: bool = False
    takes_device: bool = False  # the cell ends with the driver rebound
    successor: bool = False  # needs a second transfer in flight behind it
    # The program keeps its buffer this long after the transfer (--recheck),
    # so that a write after completion lands in its pages, not freed ones.
    keep_ms: int = 0
    # A close while it is pending would let it land in pages the close freed:
    # that cell runs behind an IOMMU with dma_map=transfer (docs/driver.md).
    close_needs_iommu: bool = False
    # Fires only on a device that has taken a descriptor since its last
    # reset (wrong-tag names the previous one's tag): one runs first.
    needs_history: bool = False


FAULTS: dict[str, Fault] = {
    "dma-error": Fault({"fault-dma-error": 1}, "EIO"),
    "partial": Fault({"fault-partial": 1}, "EIO"),
    "corrupt": Fault({"fault-corrupt": 1}, "mismatch"),
    "duplicate-completion": Fault({"fault-duplicate-completion": 1}, "ok"),
    "drop-irq": Fault({"fault-drop-irq": 1}, "ETIMEDOUT"),
    "spurious-irq": Fault({"fault-spurious-irq": 5}, "ok"),
    "stall": Fault({"fault-stall": 1}, "ETIMEDOUT"),
    "late-write": Fault({"fault-late-write": 1, "fault-late-write-delay-ns": 100_000_000},
                        "ok", breaks_ownership=True, keep_ms=300, close_needs_iommu=True),
    "stray-write": Fault({"fault-stray-write": 1}, "ok", breaks_ownership=True),
    "delayed-irq": Fault({"fault-delayed-irq": 1, "fault-irq-delay-ns": 300_000_000}, "ok"),
    "out-of-order": Fault({"fault-out-of-order": 1}, "ok", successor=True),
    "wrong-tag": Fault({"fault-wrong-tag": 1}, "ETIMEDOUT", needs_history=True),
    "ignore-reset": Fault({"fault-ignore-reset": "both", "fault-stall": 1}, "EIO",
                          takes_device=True),
    "dead": Fault({"fault-dead": True}, "ENODEV", takes_device=True),
    "irq-storm": Fault({"fault-irq-storm-ns": 200_000}, "ok"),
}


def expected(fault: Fault, state: str) -> str:
    """The outcome docs/driver.md promises for a cell."""
    wedges = bool(fault.knobs.get("fault-ignore-reset"))
    if state == "unbind":
        # The reset at unbind ends the transfer, unless the device ignores it.
        return "held" if wedges else "ENODEV"
    if state == "close":
        # Seen through the driver's counters once the file is closed: a
        # wedged device's transfer never completes; EIO and ENODEV both
        # count as errors.
        if wedges:
            return "held"
        return {"EIO": "error", "ENODEV": "error", "mismatch": "ok"}.get(fault.outcome,
                                                                         fault.outcome)
    return fault.outcome


def _cells() -> Iterator[Any]:
    for name, fault in FAULTS.items():
        for state in STATES:
            marks = []
            contained = state == "unbind" or (state == "close" and fault.close_needs_iommu)
            if fault.breaks_ownership and not contained:
                marks.append(pytest.mark.expect_ownership_violation(OWNERSHIP_BROKEN))
            if state in STOCK_ONLY_STATES:
                marks.append(pytest.mark.stock_kernels_only("a path poll and WAIT cover"))
            yield pytest.param(name, state, marks=marks, id=f"{name}-{state}")


@dataclass
class Matrix:
    flavour: str
    rows: list[tuple[str, str, str, str, float]] = field(default_factory=list)

    def table(self) -> str:
        width = max(len(r[0]) for r in self.rows)
        lines = [f"{'fault':<{width}}  {'state':<7}  {'outcome':<10}  {'promised':<10}  "
                 "seconds"]
        for fault, state, got, want, seconds in self.rows:
            lines.append(f"{fault:<{width}}  {state:<7}  {got:<10}  {want:<10}  {seconds:.1f}")
        return "\n".join(lines)


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest) -> Iterator[Matrix]:
    table = Matrix(str(request.config.getoption("kernel")))
    yield table
    if table.rows:
        text = table.table()
        artifacts = BuildPaths.discover().artifacts
        artifacts.mkdir(parents=True, exist_ok=True)
        name = image_dir_name(table.flavour).removeprefix("image-")
        (artifacts / f"fault-matrix-{name}.txt").write_text(text + "\n")
        total = sum(r[4] for r in table.rows)
        record_table(request.config,
                     f"fault matrix, {table.flavour}: {len(table.rows)} cells, {total:.0f} s",
                     text)


@pytest.fixture(scope="module")
def _set_up() -> weakref.WeakKeyDictionary[VM, str]:
    """The module's VMs whose watchdog is set, each with its device's PCI
    address: a cell needs neither asked again (each costs the debug guest
    a command), and the VM is the module's own."""
    return weakref.WeakKeyDictionary()


@pytest.fixture
def bench_vm(vm: VM, _set_up: weakref.WeakKeyDictionary[VM, str]) -> VM:
    if vm not in _set_up:  # first, or the VM a cell killed was started again
        vm.run(f"echo {WATCHDOG_MS} > {DRIVER_TIMEOUT_MS}", check=True)
        _set_up[vm] = _bdf(vm)
    return vm


def _bdf(vm: VM) -> str:
    return vm.run(f"ls {DRIVER} | grep : | head -1", check=True).stdout.strip()


def _outcome_of(run_stdout: str, status: int) -> str:
    fields = merged_fields(run_stdout)
    if status == EXIT_MISMATCH and fields.get("verified") == "no":
        return "mismatch"
    if "error" in fields and fields["error"] not in ("", "0"):
        return {"-5": "EIO", "-110": "ETIMEDOUT", "-19": "ENODEV"}.get(fields["error"],
                                                                        fields["error"])
    if fields.get("errno"):
        return fields["errno"]
    return "ok" if fields.get("verified") == "yes" else f"exit {status}"


def _run_waiting(vm: VM, state: str, fault: Fault) -> str:
    mode = "poll" if state == "idle" else state
    if fault.successor:
        vm.run("setsid dmagatectl xfer fill -s 64K > /tmp/successor.out 2>&1 "
               "< /dev/null &", check=True)
    keep = f" --recheck {fault.keep_ms}" if fault.keep_ms else ""
    run = dmagatectl(vm, f"xfer {TRANSFER} -w {mode} -t 10000{keep}")
    if fault.successor:
        wait_for(vm, "cat /tmp/successor.out", r"verified=", 20)
    return _outcome_of(run.stdout, run.status)


def _run_close(vm: VM) -> str:
    before = driver_stats(vm)
    run = dmagatectl(vm, f"hold {TRANSFER} --no-child --close", timeout=60)
    assert run["closed"] == "", run.describe()
    delta = stats_delta(before, driver_stats(vm)) if _bound(vm) else None
    if delta is None:
        return "error"  # the driver let the device go (off the bus)
    if not delta["completions"]:
        return "held"
    if delta["timeouts"]:
        return "ETIMEDOUT"
    return "error" if delta["errors"] else "ok"


def _run_unbind(vm: VM, bdf: str) -> str:
    # The unbind follows the submission inside the guest: an SSH round trip
    # on the debug kernel can outlast the transfer's latency.
    vm.run(submitted_in_background(f"wait-hup {TRANSFER}", "/tmp/hup.out")
           + f"echo {bdf} > {DRIVER}/unbind", check=True, timeout=60)
    out = wait_for(vm, "cat /tmp/hup.out", r"^close=", 30)
    assert "submitted" in out, out
    records = [line for line in out.splitlines() if line.startswith("record ")]
    if not records:
        return "held"
    error = merged_fields(records[0])["error"]
    return "ok" if error == "0" else error


def _bound(vm: VM) -> bool:
    return vm.run(f"ls {DRIVER} | grep -q :").status == 0


def _rebind(vm: VM, bdf: str) -> None:
    """Bind the driver to the device again (a fresh probe resets it)."""
    vm.run(f"if [ -e {DRIVER}/{bdf} ]; then echo {bdf} > {DRIVER}/unbind; fi; "
           f"echo {bdf} > {DRIVER}/bind", check=True)


def _iommu_vm(make_vm: Callable[..., VM]) -> VM:
    guest = make_vm(devices=IOMMU_DEVICES, kernel_args=(*IOMMU_STRICT_ARGS, "dmagate.noload"))
    guest.run(f"insmod /lib/modules/dmagate.ko dma_map=transfer timeout_ms={WATCHDOG_MS}",
              check=True)
    return guest


@pytest.mark.parametrize(("fault_name", "state"), list(_cells()))
def test_cell(request: pytest.FixtureRequest, matrix: Matrix, make_vm: Callable[..., VM],
              fault_name: str, state: str) -> None:
    fault = FAULTS[fault_name]
    if state == "close" and fault.close_needs_iommu:
        vm = _iommu_vm(make_vm)
        bdf = _bdf(vm)
    else:
        vm = request.getfixturevalue("bench_vm")
        bdf = request.getfixturevalue("_set_up")[vm]
    if fault.needs_history:
        first = dmagatectl(vm, "xfer fill -s 4K")
        assert first.status == 0, first.describe()
    started = time.monotonic()
    unbind = state == "unbind"
    with driver_timeout(vm, UNBIND_WATCHDOG_MS) if unbind else contextlib.nullcontext(), \
            device_faults(vm, **{"latency-ns": UNBIND_LATENCY_NS if unbind else LATENCY_NS,
                                 **fault.knobs}):
        if state == "idle":
            time.sleep(0.3)
        if state == "close":
            outcome = _run_close(vm)
        elif state == "unbind":
            outcome = _run_unbind(vm, bdf)
        else:
            outcome = _run_waiting(vm, state, fault)
    seconds = time.monotonic() - started
    want = expected(fault, state)
    matrix.rows.append((fault_name, state, outcome, want, seconds))
    if fault.takes_device or state == "unbind":
        _rebind(vm, bdf)
    works = still_works(vm)
    if works.status != EXIT_OK and not _bound(vm):
        # The driver let the device go: the cell's outcome says whether it
        # should have; bound again, it must work (and the next cells need it).
        _rebind(vm, bdf)
        works = still_works(vm)
    assert outcome == want, f"{fault_name} while {state}: {outcome}, promised {want}"
    assert works.status == EXIT_OK, works.describe()
