"""Every allocation path of the driver, failed on purpose under the debug
kernel (failslab / fail_page_alloc): a clean errno, no leak (the module's
kmemleak scan), and a device that works afterwards."""

from __future__ import annotations

from typing import Literal

import pytest

from dmagate.faultinject import NthFailure, fail_allocations, fail_each_allocation
from dmagate.guesttool import EXIT_OK, EXIT_SYSCALL, dmagatectl, parse_line
from dmagate.vm import VM

pytestmark = pytest.mark.debug_kernel


def still_works(vm: VM) -> None:
    run = dmagatectl(vm, "xfer transform -s 1M")
    assert run.status == EXIT_OK, run.describe()


def bdf_of(vm: VM) -> str:
    return vm.run("basename $(readlink /sys/class/misc/dmagate0/device)",
                  check=True).stdout.strip()


def test_probe_fails_cleanly_at_every_allocation(vm: VM) -> None:
    bdf = bdf_of(vm)
    bind = "/sys/bus/pci/drivers/dmagate/bind"
    vm.run(f"echo {bdf} > /sys/bus/pci/drivers/dmagate/unbind", check=True)

    def command(n: int) -> str:
        return (f"sh -c 'echo {n} > /proc/thread-self/fail-nth; echo {bdf} > {bind}; s=$?; "
                "read left < /proc/thread-self/fail-nth; echo fail_nth_left=$left; exit $s'")

    def check(failure: NthFailure) -> None:
        if failure.result.status == 0:
            # The driver got around it (e.g. MSI after MSI-X): it must work.
            still_works(vm)
            vm.run(f"echo {bdf} > /sys/bus/pci/drivers/dmagate/unbind", check=True)
            return
        assert "write error" in failure.result.stderr, failure
        assert vm.run("test -e /dev/dmagate0").status != 0, f"left behind: {failure}"

    failures = fail_each_allocation(vm, "dmagate", command, check)
    print(f"probe: {len(failures)} allocations failed in turn, "
          f"{sum(f.result.status != 0 for f in failures)} of them failed the probe")
    # misc_register, the rings, the interrupts, the devres: dozens of them.
    assert len(failures) >= 20, [f.n for f in failures]
    assert sum(f.result.status != 0 for f in failures) >= 10
    still_works(vm)


def test_session_fails_cleanly_at_every_allocation(vm: VM) -> None:
    def check(failure: NthFailure) -> None:
        fields = {k: v for line in failure.result.stdout.splitlines()
                  for k, v in parse_line(line).items()}
        if failure.result.status == EXIT_OK:
            # Absorbed (a smaller chunk order, a retried fault): data still right.
            assert fields.get("verified") == "yes", failure
        else:
            assert failure.result.status == EXIT_SYSCALL, failure
            assert fields.get("errno") == "ENOMEM", failure

    failures = fail_each_allocation(
        vm, "dmagate", lambda n: f"dmagatectl xfer fill -s 1M --fail-nth {n}", check)
    print(f"session: {len(failures)} allocations failed in turn, "
          f"{sum(f.result.status != 0 for f in failures)} of them failed a call")
    # open (session, inode), ALLOC (arrays, 16 chunks), faults, SUBMIT.
    assert len(failures) >= 15, [f.n for f in failures]
    still_works(vm)


@pytest.mark.parametrize(("step", "kind", "module"), [
    ("open", "slab", "dmagate"),
    ("alloc", "slab", "dmagate"),
    ("alloc", "page", "dmagate"),
    # mmap allocates nothing in the driver: fail the core's VMA allocation.
    ("mmap", "slab", None),
    ("submit", "slab", "dmagate"),
])
def test_session_step(
    vm: VM, step: str, kind: Literal["slab", "page"], module: str | None
) -> None:
    result = fail_allocations(vm, f"dmagatectl xfer fill -s 1M --fail-at {step}", kind=kind,
                              module=module, armed_by_command=True)
    assert result.command.status == EXIT_SYSCALL, result
    failed = [parse_line(line) for line in result.command.stdout.splitlines()
              if line.startswith("failed_step=")]
    assert failed == [{"failed_step": step, "errno": "ENOMEM"}], result
    assert result.injected >= 1
    still_works(vm)
