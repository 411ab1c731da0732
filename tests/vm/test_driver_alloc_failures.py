"""Every allocation path of the driver, failed on purpose under the debug
kernel (failslab / fail_page_alloc): a clean errno, no leak (the module's
kmemleak scan), and a device that works afterwards."""

from __future__ import annotations

from typing import Literal

import pytest

from dmagate.faultinject import fail_allocations
from dmagate.guesttool import EXIT_OK, EXIT_SYSCALL, dmagatectl, parse_line
from dmagate.vm import VM

pytestmark = pytest.mark.debug_kernel


def still_works(vm: VM) -> None:
    run = dmagatectl(vm, "xfer transform -s 1M")
    assert run.status == EXIT_OK, run.describe()


@pytest.mark.parametrize("kind", ["slab", "page"])
def test_probe(vm: VM, kind: Literal["slab", "page"]) -> None:
    bdf = vm.run("basename $(readlink /sys/class/misc/dmagate0/device)", check=True).stdout.strip()
    vm.run(f"echo {bdf} > /sys/bus/pci/drivers/dmagate/unbind", check=True)
    result = fail_allocations(
        vm, f"sh -c 'echo {bdf} > /sys/bus/pci/drivers/dmagate/bind'", kind=kind,
        module="dmagate")
    assert result.command.status != 0, result
    assert "Cannot allocate memory" in result.command.stderr, result
    assert result.injected >= 1
    assert vm.run("test -e /dev/dmagate0").status != 0, "a failed probe leaves nothing"
    vm.run(f"echo {bdf} > /sys/bus/pci/drivers/dmagate/bind", check=True)
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
