"""Hot-unplug in the middle of a transfer: the device stops touching memory
and QEMU lets it go (datasheet §9). The test plays the guest's part in PCIe
native hot-plug: when QEMU presses the slot's attention button, it powers
the slot off."""

from __future__ import annotations

import time
from collections.abc import Callable

from dmagate.devdriver import (
    PCI_CAP_ID_EXP,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    Dmagate,
    PciFunction,
)
from dmagate.hwregs import HW
from dmagate.qtest import QTestMachine

from .conftest import CQ, DATA, PORT_SLOT, RING, SG, SQ

PCI_PRIMARY_BUS = 0x18
PCI_MEMORY_BASE = 0x20
PCI_EXP_SLTCTL = 0x18
PCI_EXP_SLTCTL_PWR_OFF = 0x400
PCI_EXP_SLTCTL_PWR_IND_OFF = 0x300
MiB = 1 << 20


def test_hot_unplug_mid_transfer(make_machine: Callable[..., QTestMachine]) -> None:
    machine = make_machine(behind_root_port=True)
    port = PciFunction(machine, 0, PORT_SLOT)
    port.write32(PCI_PRIMARY_BUS, 0x01_01_00)  # secondary and subordinate bus 1
    port.write32(PCI_MEMORY_BASE, 0xE000 | 0xE000 << 16)  # 0xe0000000..0xe00fffff
    port.set_command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
    dev = Dmagate(machine, 0)
    dev.pci = PciFunction(machine, 1, 0)
    dev.pci.write32(0x10, dev.bar0)
    dev.pci.write32(0x18, dev.bar2)
    dev.pci.set_command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
    assert dev.read("ID") == HW["ID_VALUE"]
    dev.setup(SQ, RING, CQ, RING, SG)

    size = 8 * MiB
    machine.memset(DATA, size, 0)
    dev.submit(HW["OP_FILL"], [(DATA, size)], param=8)
    machine.clock_step(1_000_000 + 2 * MiB)
    assert dev.read("STATUS") & HW["STATUS_BUSY"]

    machine.qmp.cmd("device_del", id="dg")
    cap = port.capability(PCI_CAP_ID_EXP)
    control = port.read16(cap + PCI_EXP_SLTCTL)
    port.write16(cap + PCI_EXP_SLTCTL,
                 control | PCI_EXP_SLTCTL_PWR_OFF | PCI_EXP_SLTCTL_PWR_IND_OFF)
    deadline = time.monotonic() + 10
    while not any(e["event"] == "DEVICE_DELETED" for e in machine.qmp.events()):
        assert time.monotonic() < deadline, "QEMU never deleted the device"
        machine.clock_step(100_000)
        time.sleep(0.01)

    snapshot = machine.memread(DATA, size)
    assert snapshot != bytes(size)
    for _ in range(20):
        machine.clock_step(10_000_000)
    assert machine.memread(DATA, size) == snapshot, "DMA after unplug"
    assert machine.memread(CQ, 32) == bytes(32)
    assert PciFunction(machine, 1, 0).read32(0) == 0xFFFFFFFF
    assert machine.alive()
    assert all(d.get("id") != "dg" for d in machine.qmp.cmd("query-pci")[0]["devices"])
