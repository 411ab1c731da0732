"""The device behind a PCIe root port: hot-plugged with device_add, bound by
the driver, hot-unplugged with device_del with the guest's cooperation."""

from __future__ import annotations

import re
from collections.abc import Callable

from dmagate.guesttool import wait_device_deleted, wait_for
from dmagate.hwregs import HW
from dmagate.vm import VM

DEVICE_VERSION = f"{HW['VERSION_VALUE'] >> 16}\\.{HW['VERSION_VALUE'] & 0xFFFF}"


def test_hot_plug_and_unplug_behind_root_port(make_vm: Callable[..., VM]) -> None:
    guest = make_vm(devices=("pcie-root-port,id=rp0,chassis=1,slot=1",))
    assert guest.run("dmagatectl list").status == 1, "no device before device_add"

    guest.qmp.cmd("device_add", driver="dmagate", id="hp0", bus="rp0")
    # The driver link appears in sysfs before probe() has run; the probe's
    # last message says it is done.
    log = wait_for(guest, "dmesg", r"dmagate 0000:01:00\.0: /dev/dmagate0, MSI-X interrupts$", 10)
    listing = guest.run("dmagatectl list", check=True).stdout
    assert re.fullmatch(r"0000:01:00\.0 1234:d6a7 driver=dmagate\n", listing), listing
    assert re.search(rf"dmagate 0000:01:00\.0: bound, device version {DEVICE_VERSION}", log)

    guest.qmp.cmd("device_del", id="hp0")
    wait_device_deleted(guest, "hp0")
    assert guest.run("dmagatectl list").status == 1
    assert guest.run("ls /sys/bus/pci/drivers/dmagate/ | grep -c 0000:").stdout.strip() == "0"
