"""Identity, reset values and access rules of the registers (datasheet §1-2)."""

from __future__ import annotations

from dmagate.devdriver import Dmagate
from dmagate.hwregs import HW
from dmagate.qtest import QTestMachine

from .conftest import CQ, RING, SG, SLOT, SQ, guest_errors

RESET_VALUES = {
    "ID": HW["ID_VALUE"],
    "VERSION": HW["VERSION_VALUE"],
    "CAPS": HW["MAX_SEGMENTS"] | HW["MAX_RING_ORDER"] << 16 | HW["CAPS_OP_FILL"]
    | HW["CAPS_OP_CHECKSUM"] | HW["CAPS_OP_TRANSFORM"],
    "MAX_XFER": HW["MAX_XFER"],
    **{reg: 0 for reg in (
        "CTRL", "STATUS", "ERROR", "ERROR_INDEX", "ERROR_ADDR_LO", "ERROR_ADDR_HI",
        "SQ_BASE_LO", "SQ_BASE_HI", "SQ_SIZE", "SQ_TAIL", "SQ_HEAD", "CQ_BASE_LO",
        "CQ_BASE_HI", "CQ_SIZE", "CQ_HEAD", "CQ_TAIL", "INT_STATUS", "INT_MASK")},
}


def test_pci_identity(machine: QTestMachine) -> None:
    dev = Dmagate(machine, SLOT)
    assert dev.pci.read32(0) == HW["PCI_DEVICE_ID"] << 16 | HW["PCI_VENDOR_ID"]
    assert dev.pci.read8(8) == HW["PCI_REVISION"]
    assert dev.pci.read16(0xA) == HW["PCI_CLASS"]
    assert dev.pci.read8(0x3D) == 1  # INTA
    for cap in (0x05, 0x10, 0x11):  # MSI, PCI Express, MSI-X
        assert dev.pci.capability(cap), f"capability 0x{cap:x} missing"


def test_reset_values(machine: QTestMachine) -> None:
    dev = Dmagate(machine, SLOT)
    for reg, value in RESET_VALUES.items():
        assert dev.read(reg) == value, reg
    for stat in ("DESCRIPTORS", "BYTES", "INTERRUPTS", "ERRORS", "FAULTS"):
        assert dev.read64(f"STAT_{stat}") == 0


def test_read_only_registers_ignore_writes(machine: QTestMachine) -> None:
    dev = Dmagate(machine, SLOT)
    for reg in ("ID", "VERSION", "CAPS", "MAX_XFER", "STATUS", "ERROR", "SQ_HEAD", "CQ_TAIL",
                "INT_STATUS"):
        dev.write(reg, 0xFFFFFFFF)
        assert dev.read(reg) == RESET_VALUES[reg], reg
    assert any("read-only or undefined" in line for line in guest_errors(machine))


def test_undefined_offsets_read_zero(machine: QTestMachine) -> None:
    dev = Dmagate(machine, SLOT)
    for offset in (0x028, 0x090, 0x200, 0xFFC):
        machine.writel(dev.bar0 + offset, 0x12345678)
        assert machine.readl(dev.bar0 + offset) == 0


def test_narrow_access_is_refused(machine: QTestMachine) -> None:
    dev = Dmagate(machine, SLOT)
    machine.writeb(dev.bar0 + HW["REG_INT_MASK"], 0x3)
    machine.writew(dev.bar0 + HW["REG_INT_MASK"], 0x3)
    assert dev.read("INT_MASK") == 0


def test_ring_registers_locked_while_enabled(machine: QTestMachine) -> None:
    dev = Dmagate(machine, SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    assert dev.read("STATUS") & HW["STATUS_ENABLED"]
    dev.write("SQ_SIZE", 8)
    dev.write("CQ_BASE_LO", 0x200000)
    assert dev.read("SQ_SIZE") == RING
    assert dev.read("CQ_BASE_LO") == CQ
    assert dev.read("ERROR") == HW["ST_REG_LOCKED"]


def test_doorbell_out_of_range(machine: QTestMachine) -> None:
    dev = Dmagate(machine, SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    dev.write("SQ_TAIL", RING)
    assert dev.read("SQ_TAIL") == 0
    assert dev.read("ERROR") == HW["ST_BAD_INDEX"]
    dev.write("CQ_HEAD", 0xFFFFFFFF)
    assert dev.read("CQ_HEAD") == 0


def test_bad_rings_halt_with_error_interrupt(machine: QTestMachine) -> None:
    dev = Dmagate(machine, SLOT)
    for sq, sq_size, cq, cq_size in (
        (SQ, 3, CQ, RING),  # not a power of two
        (SQ, 8192, CQ, RING),  # too large
        (SQ + 8, RING, CQ, RING),  # misaligned
        (SQ, RING, CQ, 1),  # too small
        ((1 << 64) - 64, RING, CQ, RING),  # wraps the address space
    ):
        dev.write("CTRL", HW["CTRL_RESET"])
        dev.setup(sq, sq_size, cq, cq_size, SG)
        status = dev.read("STATUS")
        assert not status & HW["STATUS_ENABLED"], (sq, sq_size, cq_size)
        assert status & HW["STATUS_HALTED"]
        assert dev.read("ERROR") == HW["ST_BAD_RING"]
        assert dev.read("INT_STATUS") & HW["INT_ERROR"]


def test_int_ack_clears_status_bits(dev: Dmagate) -> None:
    dev.submit(HW["OP_CHECKSUM"], [(0x1000000, 64)], flags=HW["DESC_F_INTERRUPT"])
    dev.wait(1)
    assert dev.read("INT_STATUS") == HW["INT_COMPLETION"]
    dev.write("INT_ACK", HW["INT_COMPLETION"])
    assert dev.read("INT_STATUS") == 0


def test_device_clock_runs_with_virtual_time(machine: QTestMachine) -> None:
    dev = Dmagate(machine, SLOT)
    before = dev.read("TIME_LO") | dev.read("TIME_HI") << 32
    machine.clock_step(123_456)
    after = dev.read("TIME_LO") | dev.read("TIME_HI") << 32
    assert after - before == 123_456
