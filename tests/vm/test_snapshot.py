"""Fresh guests from a snapshot (dmagate.snapshot): a guest restored into a
new QEMU runs on from where a booted one of the same options was saved,
SSH-ready with its driver bound, and each restored guest is a machine of
its own."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dmagate.guesttool import EXIT_OK, dmagatectl
from dmagate.snapshot import snapshot_path
from dmagate.vm import VM

# Every fresh guest of every kernel's suite is restored so; these look at
# the harness's part of it.
pytestmark = pytest.mark.default_kernel_only("the harness's snapshots, made alike for every kernel")


def test_fresh_guests_are_restored_and_each_is_its_own(make_vm: Callable[..., VM]) -> None:
    one, two = make_vm(name="restored-one"), make_vm(name="restored-two")
    for guest in (one, two):
        # Restored: loaded from the snapshot, never booted in this QEMU.
        assert "-incoming" in guest.argv
        assert "dmagate-init: ready" not in guest.console.text()
        assert snapshot_path(guest).exists()
    assert one.pid != two.pid and one.ssh_port != two.ssh_port
    one.run("echo one > /tmp/mark", check=True)
    assert two.run("cat /tmp/mark").status != 0
    # The driver bound at the snapshot's boot works in both.
    for guest in (one, two):
        run = dmagatectl(guest, "xfer fill -s 256K -p 0x51")
        assert run.status == EXIT_OK, run.describe()
        assert run["verified"] == "yes"
    # The boot's kernel log came along in guest memory.
    assert "dmagate" in one.run("dmesg | grep 'bound, device version'", check=True).stdout


def test_other_options_get_a_snapshot_of_their_own(make_vm: Callable[..., VM]) -> None:
    default = make_vm(name="default")
    first, second = (make_vm(name=name, devices=("dmagate", "dmagate"))
                     for name in ("two-first", "two-second"))
    for guest in (first, second):
        assert "-incoming" in guest.argv
        assert "dmagate-init: ready" not in guest.console.text()
        assert dmagatectl(guest, "list").stdout.count("driver=dmagate") == 2
    assert snapshot_path(first) == snapshot_path(second) != snapshot_path(default)
    assert dmagatectl(default, "list").stdout.count("driver=dmagate") == 1
