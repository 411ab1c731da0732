"""Not collected on its own: test_memory_dump.py runs it in a child pytest,
whose plugin must then leave the panicked guest's memory dump among the
failed test's artifacts."""

from __future__ import annotations

from dmagate.guesttool import crash_guest
from dmagate.vm import VM


def test_guest_panics(vm: VM) -> None:
    crash_guest(vm)
    raise AssertionError("the guest panicked, on purpose")
