"""Not collected on its own: test_gdb.py runs it in a child pytest with
--gdb-on-failure, which keeps this test's VM paused for gdb."""

from __future__ import annotations

from dmagate.vm import VM


def test_fails_with_a_vm(vm: VM) -> None:
    assert vm.run("true").status == 0
    raise AssertionError("failing on purpose, for --gdb-on-failure")
