"""Not collected on its own: test_kernel_checkers.py runs it in a child
pytest on the debug kernel. The test leaks on purpose without saying so;
the module's kmemleak scan, when the module is done with its VM, must turn
that into an error."""

from __future__ import annotations

from dmagate.vm import VM


def test_leaks_quietly(vm: VM) -> None:
    vm.run("insmod /lib/modules/dmagate_splat_test.ko", check=True)
    vm.run("echo leak > /sys/kernel/debug/dmagate_splat_test/trigger", check=True)
