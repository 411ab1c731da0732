"""A guest that aims the device's own DMA at the PCI machinery around it:
its own config space (an FLR under the running engine), its root port's
Slot Control (a hot-unplug under the running engine), and properties set
to values that once crashed QEMU (datasheet §7, §9, §10)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError

from dmagate import reference as ref
from dmagate.devdriver import (
    PCI_CAP_ID_EXP,
    PCI_COMMAND_MASTER,
    PCI_EXP_DEVCTL,
    PCI_EXP_SLTCTL,
    Dmagate,
    enable_mmconfig,
    mmconfig_address,
    open_root_port,
)
from dmagate.hwregs import HW
from dmagate.qtest import QTestError, QTestMachine

from .conftest import CQ, DATA, PORT_SLOT, RING, SG, SLOT, SQ

FILL, TRANSFORM = HW["OP_FILL"], HW["OP_TRANSFORM"]
PATH = "/machine/peripheral/dg"
PCI_EXP_SLTCTL_PIC = 0x300
PCI_EXP_SLTCTL_PIC_OFF = 0x300
PCI_EXP_SLTCTL_PCC = 0x400


def test_completion_on_own_device_control_resets_the_device(
    machine: QTestMachine,
) -> None:
    """bytes_done 0x8000 lands on Device Control: bit 15 starts an FLR while
    the engine is writing the completion. QEMU once divided by the ring
    sizes the reset had just zeroed."""
    enable_mmconfig(machine)
    dev = Dmagate(machine, SLOT)
    cap = dev.pci.capability(PCI_CAP_ID_EXP)
    assert cap % HW["RING_ALIGN"] == 0
    dev.setup(SQ, RING, mmconfig_address(0, SLOT, 0, cap), 2, SG)
    machine.memset(DATA, 0x8000, 0)
    dev.submit(FILL, [(DATA, 0x8000)], param=3)
    for _ in range(50):
        machine.clock_step(100_000)
    assert machine.alive()
    assert machine.readl(dev.bar0 + HW["REG_ID"]) != HW["ID_VALUE"], "no FLR happened"
    assert not dev.pci.read16(4) & PCI_COMMAND_MASTER, "the FLR did not reset config space"
    assert machine.memread(DATA, 0x8000) == ref.fill_pattern(3, 0, 0x8000)
    assert_device_works(Dmagate(machine, SLOT))


def test_sg_write_on_own_device_control_resets_mid_transfer(
    machine: QTestMachine,
) -> None:
    """A FILL whose second segment is its own Device Control: the FLR comes
    from the engine's data write, and the rest of the transfer must not run."""
    enable_mmconfig(machine)
    dev = Dmagate(machine, SLOT)
    devctl = mmconfig_address(0, SLOT, 0, dev.pci.capability(PCI_CAP_ID_EXP) + PCI_EXP_DEVCTL)
    dev.setup(SQ, RING, CQ, RING, SG)
    machine.memset(DATA, 3 * 4096, 0)
    # The pattern's bytes at transfer offsets 4096..4097 are the value written:
    # find a seed whose byte 4097 has bit 7 set (Device Control bit 15).
    seed = next(s for s in range(1000) if ref.fill_pattern(s, 4097, 1)[0] & 0x80)
    dev.submit(FILL, [(DATA, 4096), (devctl, 2), (DATA + 4096, 8192)], param=seed,
               sg_at=SG)
    for _ in range(50):
        machine.clock_step(100_000)
    assert machine.alive()
    assert machine.readl(dev.bar0 + HW["REG_ID"]) != HW["ID_VALUE"], "no FLR happened"
    assert machine.memread(DATA, 4096) == ref.fill_pattern(seed, 0, 4096)
    assert machine.memread(DATA + 4096, 8192) == bytes(8192), "DMA went on after the FLR"
    assert machine.memread(CQ, 32) == bytes(32), "a completion was written after the FLR"
    assert_device_works(Dmagate(machine, SLOT))


def test_transform_on_root_port_slot_control_unplugs_the_device(
    make_machine: Callable[..., QTestMachine],
) -> None:
    """A TRANSFORM of the root port's Slot Control powers the slot off:
    QEMU unrealizes the device while its engine is on the stack."""
    machine = make_machine(behind_root_port=True)
    port = open_root_port(machine, PORT_SLOT)
    enable_mmconfig(machine)
    dev = Dmagate(machine, 0, bus=1)
    assert dev.read("ID") == HW["ID_VALUE"]
    dev.setup(SQ, RING, CQ, RING, SG)
    sltctl = port.capability(PCI_CAP_ID_EXP) + PCI_EXP_SLTCTL
    control = port.read16(sltctl)
    powered_off = (control & ~PCI_EXP_SLTCTL_PIC) | PCI_EXP_SLTCTL_PIC_OFF | PCI_EXP_SLTCTL_PCC
    key = control ^ powered_off
    assert key, "the slot starts powered off"
    machine.memset(DATA, 8192, 0)
    dev.submit(TRANSFORM, [(mmconfig_address(0, PORT_SLOT, 0, sltctl), 2), (DATA, 8192)],
               param=key)
    deadline = time.monotonic() + 10
    while not any(e["event"] == "DEVICE_DELETED" for e in machine.qmp.events()):
        assert machine.alive(), machine.stderr()
        assert time.monotonic() < deadline, "the slot was never powered off"
        machine.clock_step(100_000)
    for _ in range(20):
        machine.clock_step(1_000_000)
    assert machine.alive()
    assert machine.memread(DATA, 8192) == bytes(8192), "DMA after the unplug"
    assert machine.memread(CQ, 32) == bytes(32)
    assert all(d.get("id") != "dg" for d in machine.qmp.cmd("query-pci")[0]["devices"])
    # The machine goes on: a new device in the same slot works.
    port.write16(sltctl, control)
    machine.qmp.cmd("device_add", driver="dmagate", id="dg2", bus="rp0")
    fresh = Dmagate(machine, 0, bus=1)
    assert fresh.read("ID") == HW["ID_VALUE"]


def assert_device_works(dev: Dmagate) -> None:
    dev.setup(SQ, RING, CQ, RING, SG)
    dev.qt.memset(DATA, 4096, 0)
    dev.submit(FILL, [(DATA, 4096)], param=5)
    (done,) = dev.wait()
    assert (done.status, done.bytes_done) == (HW["ST_OK"], 4096)
    assert dev.qt.memread(DATA, 4096) == ref.fill_pattern(5, 0, 4096)


def aim_msix_at_own_device_control(machine: QTestMachine) -> Dmagate:
    """The device enabled, both MSI-X vectors writing 0x8000 (FLR) to its
    own Device Control through MMCONFIG: its next message resets it."""
    enable_mmconfig(machine)
    dev = Dmagate(machine, SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    devctl = mmconfig_address(0, SLOT, 0, dev.pci.capability(PCI_CAP_ID_EXP) + PCI_EXP_DEVCTL)
    dev.enable_msix(devctl, [0x8000, 0x8000])
    return dev


def test_spurious_interrupt_aimed_at_own_device_control(machine: QTestMachine) -> None:
    """An MSI-X message is a DMA write too: one whose address is the device's
    own Device Control resets it in the middle of a burst of spurious ones."""
    dev = aim_msix_at_own_device_control(machine)
    machine.qmp.cmd("qom-set", path=PATH, property="fault-spurious-irq", value=1024)
    assert machine.alive()
    assert machine.readl(dev.bar0 + HW["REG_ID"]) != HW["ID_VALUE"], "no FLR happened"
    assert_device_works(Dmagate(machine, SLOT))


LIMITS = {
    "latency-ns": HW["MAX_DELAY_NS"],
    "fault-extra-delay-ns": HW["MAX_DELAY_NS"],
    "bandwidth-mbps": HW["MAX_BANDWIDTH_MBPS"],
    "fault-spurious-irq": HW["MAX_SPURIOUS"],
}


@pytest.mark.parametrize("prop", sorted(LIMITS))
def test_property_range_is_enforced_at_runtime(dev: Dmagate, prop: str) -> None:
    limit = LIMITS[prop]
    for bad in [v for v in (limit + 1, 1 << 32, 1 << 63, (1 << 64) - 1) if v > limit]:
        with pytest.raises(ExecuteError, match=r"out of range|uint32"):
            dev.qt.qmp.cmd("qom-set", path=PATH, property=prop, value=bad)
    dev.qt.qmp.cmd("qom-set", path=PATH, property=prop, value=limit)
    if prop != "fault-spurious-irq":  # that one fires and reads back 0
        assert dev.qt.qmp.cmd("qom-get", path=PATH, property=prop) == limit


def test_largest_bandwidth_still_transfers(make_machine: Callable[..., QTestMachine]) -> None:
    machine = make_machine(f"latency-ns=0,bandwidth-mbps={HW['MAX_BANDWIDTH_MBPS']}")
    assert_device_works(Dmagate(machine, SLOT))


@pytest.mark.parametrize("option", [
    "bandwidth-mbps=4294967296",
    "bandwidth-mbps=1000001",
    "latency-ns=60000000001",
    "fault-extra-delay-ns=18446744073709551615",
    "fault-spurious-irq=1025",
])
def test_property_range_is_enforced_on_the_command_line(
    make_machine: Callable[..., QTestMachine], option: str, tmp_path: Path
) -> None:
    with pytest.raises(QTestError) as refused:
        make_machine(option)
    assert "out of range" in str(refused.value)


def test_engine_is_not_confused_by_an_interrupt_storm_into_itself(dev: Dmagate) -> None:
    """MSI-X messages aimed at the device's own registers (BAR0) are blocked
    by the re-entrancy guard while the engine runs; the device keeps working."""
    dev.enable_msix(dev.bar0 + HW["REG_CTRL"], [HW["CTRL_RESET"], HW["CTRL_RESET"]])
    dev.qt.memset(DATA, 4096, 0)
    for _ in range(8):
        dev.submit(FILL, [(DATA, 4096)], param=7)
    done = dev.wait(8)
    assert all(c.status == HW["ST_OK"] for c in done)
    assert dev.qt.memread(DATA, 4096) == ref.fill_pattern(7, 0, 4096)
