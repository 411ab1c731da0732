"""Promises of the datasheet that the device once broke, one test each:
CRC and bytes on DMA errors, power management, access sizes, timing of the
extra delay and of SQ_HEAD, stalls, held spurious interrupts, duplicate
completions, error reporting, interrupt bookkeeping, what counts as a fired
fault, the engine's work per bottom half, own-BAR DMA behind the IOMMU."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest

from dmagate import reference as ref
from dmagate.devdriver import PCI_COMMAND_MASTER, Dmagate
from dmagate.hwregs import HW
from dmagate.qtest import QTestMachine

from .conftest import CQ, DATA, MSG, RING, SG, SLOT, SQ, guest_errors
from .test_iommu import PAGE, PTE_R, PTE_W, enable_translation, translating_machine

FILL, CHECKSUM, TRANSFORM = HW["OP_FILL"], HW["OP_CHECKSUM"], HW["OP_TRANSFORM"]
PATH = "/machine/peripheral/dg"
ALWAYS = HW["FAULT_ALWAYS"]
NOWHERE = 0xF000_0000
PCI_CAP_ID_PM = 0x01
PCI_PM_CTRL = 4
PCI_PM_CTRL_NO_SOFT_RESET = 0x8
D3HOT = 3


def qom_set(dev: Dmagate, prop: str, value: Any) -> None:
    dev.qt.qmp.cmd("qom-set", path=PATH, property=prop, value=value)


def qom_get(dev: Dmagate, prop: str) -> Any:
    return dev.qt.qmp.cmd("qom-get", path=PATH, property=prop)


# -- DMA errors: bytes_done and crc are exact ----------------------------------


@pytest.mark.parametrize("op", [FILL, CHECKSUM, TRANSFORM])
def test_dma_error_crc_covers_exactly_bytes_done(dev: Dmagate, op: int) -> None:
    before = bytes(range(256)) * 16
    dev.qt.memwrite(DATA, before)
    dev.qt.memset(DATA + 4096, 4096, 0x77)
    dev.submit(op, [(DATA, 4096), (NOWHERE, 4096), (DATA + 4096, 4096)], param=0x1234)
    (done,) = dev.wait()
    assert (done.status, done.bytes_done) == (HW["ST_DMA_ERROR"], 4096)
    data = dev.qt.memread(DATA, 4096)
    expected = {FILL: ref.fill_pattern(0x1234, 0, 4096), CHECKSUM: before,
                TRANSFORM: ref.transform(before, 0x1234)}[op]
    assert data == expected
    assert done.crc == ref.crc32(expected)
    assert dev.qt.memread(DATA + 4096, 4096) == b"\x77" * 4096, "touched past bytes_done"


def test_dma_error_inside_one_segment_stops_at_the_end_of_ram(
    make_machine: Callable[..., QTestMachine],
) -> None:
    """One segment that runs off the end of guest RAM: the piece in RAM is
    done and counted, the rest is not, and the CRC matches exactly that."""
    machine = make_machine(memory_mib=128)
    dev = Dmagate(machine, SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    end = 128 << 20
    dev.submit(FILL, [(end - 3000, 8192)], param=21)
    (done,) = dev.wait()
    assert (done.status, done.bytes_done) == (HW["ST_DMA_ERROR"], 3000)
    assert done.crc == ref.crc32(ref.fill_pattern(21, 0, 3000))
    assert machine.memread(end - 3000, 3000) == ref.fill_pattern(21, 0, 3000)


# -- PCI power management -------------------------------------------------------------


def set_power_state(dev: Dmagate, state: int) -> None:
    pm = dev.pci.capability(PCI_CAP_ID_PM)
    control = dev.pci.read16(pm + PCI_PM_CTRL)
    dev.pci.write16(pm + PCI_PM_CTRL, (control & ~3) | state)


def test_pm_capability_d3hot_pauses_and_d0_resumes(dev: Dmagate) -> None:
    pm = dev.pci.capability(PCI_CAP_ID_PM)
    assert pm, "no PM capability"
    assert dev.pci.read16(pm + PCI_PM_CTRL) & PCI_PM_CTRL_NO_SOFT_RESET
    size = 4 << 20
    dev.qt.memset(DATA, size, 0)
    dev.submit(FILL, [(DATA, size)], param=4)
    dev.qt.clock_step(1_000_000 + 1_000_000)  # latency, then about 1 MiB moved
    set_power_state(dev, D3HOT)
    assert dev.pci.read16(pm + PCI_PM_CTRL) & 3 == D3HOT
    assert dev.qt.readl(dev.bar0 + HW["REG_ID"]) != HW["ID_VALUE"], "BAR0 decodes in D3hot"
    snapshot = dev.qt.memread(DATA, size)
    assert snapshot != bytes(size)
    for _ in range(20):
        dev.qt.clock_step(1_000_000)
    assert dev.qt.memread(DATA, size) == snapshot, "DMA in D3hot"
    set_power_state(dev, 0)
    assert dev.read("SQ_SIZE") == RING, "D3hot -> D0 reset the device (No_Soft_Reset is 1)"
    (done,) = dev.wait()
    assert (done.status, done.bytes_done) == (HW["ST_OK"], size)
    assert dev.qt.memread(DATA, size) == ref.fill_pattern(4, 0, size)


# -- Register access sizes --------------------------------------------------------------


def test_other_access_sizes_read_all_ones_and_write_nothing(dev: Dmagate) -> None:
    base = dev.bar0
    assert dev.qt.readb(base + HW["REG_ID"]) == 0xFF
    assert dev.qt.readw(base + HW["REG_ID"]) == 0xFFFF
    assert int(dev.qt.command(f"readq 0x{base:x}")[0], 16) == (1 << 64) - 1
    assert dev.qt.readl(base + HW["REG_ID"] + 2) == 0xFFFF_FFFF  # misaligned
    dev.qt.writeq(base + HW["REG_INT_STATUS"], 0x3 << 32)  # would land on INT_MASK
    assert dev.read("INT_MASK") == 0
    assert (dev.read("ERROR"), dev.read64("ERROR_ADDR_LO")) == (HW["ST_BAD_ACCESS"],
                                                                HW["REG_INT_STATUS"])
    dev.qt.writeb(base + HW["REG_INT_MASK"], 0x3)
    dev.qt.writew(base + HW["REG_INT_MASK"], 0x3)
    assert dev.read("INT_MASK") == 0
    assert any("refused" in line for line in guest_errors(dev.qt))
    assert any("dropped" in line for line in guest_errors(dev.qt))


def test_error_addr_names_the_register(dev: Dmagate) -> None:
    dev.write("CTRL", HW["CTRL_ENABLE"] | 0x100)
    assert (dev.read("ERROR"), dev.read64("ERROR_ADDR_LO")) == (HW["ST_BAD_ACCESS"],
                                                                HW["REG_CTRL"])
    assert dev.read("STATUS") & HW["STATUS_ENABLED"], "the defined bit did not act"
    dev.write("SQ_TAIL", RING)
    assert (dev.read("ERROR"), dev.read64("ERROR_ADDR_LO")) == (HW["ST_BAD_INDEX"],
                                                                HW["REG_SQ_TAIL"])
    dev.write("SQ_SIZE", 8)
    assert (dev.read("ERROR"), dev.read64("ERROR_ADDR_LO")) == (HW["ST_REG_LOCKED"],
                                                                HW["REG_SQ_SIZE"])


# -- Timing ---------------------------------------------------------------------------


@pytest.mark.parametrize("timing", ["zero-delay=on", "latency-ns=1000,bandwidth-mbps=1000"])
def test_extra_delay_holds_the_completion_not_the_data(
    make_machine: Callable[..., QTestMachine], timing: str
) -> None:
    machine = make_machine(f"{timing},fault-extra-delay-ns=5000000")
    dev = Dmagate(machine, SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    machine.memset(DATA, 8192, 0)
    start = dev.read64("TIME_LO")
    dev.submit(FILL, [(DATA, 8192)], param=8)
    machine.clock_step(1_000_000)
    assert machine.memread(DATA, 8192) == ref.fill_pattern(8, 0, 8192), "data not moved"
    assert dev.read("CQ_TAIL") == 0, "the completion did not wait for the extra delay"
    assert dev.read("STATUS") & HW["STATUS_BUSY"]
    (done,) = dev.wait()
    data_ns = 0 if timing.startswith("zero") else 1000 + 8192
    assert done.timestamp - start == data_ns + 5_000_000


def test_sq_head_moves_when_the_descriptor_is_taken(dev: Dmagate) -> None:
    dev.submit(FILL, [(DATA, 4096)])
    dev.qt.clock_step(1000)  # the doorbell's bottom half ran; the 1 ms latency did not pass
    assert dev.read("STATUS") & HW["STATUS_BUSY"]
    assert dev.read("SQ_HEAD") == 1
    assert dev.read("CQ_TAIL") == 0
    dev.wait()


# -- Stall, spurious, duplicate ------------------------------------------------------------


def test_disable_does_not_end_a_stall(dev: Dmagate) -> None:
    qom_set(dev, "fault-stall", 1)
    dev.submit(FILL, [(DATA, 4096)])
    dev.qt.clock_step(2_000_000)
    assert dev.read("STATUS") & HW["STATUS_STALLED"]
    dev.write("CTRL", 0)
    assert dev.read("STATUS") & HW["STATUS_STALLED"], "disabling ended the stall"
    dev.setup(SQ, RING, CQ, RING, SG)
    dev.submit(FILL, [(DATA, 4096)])
    for _ in range(10):
        dev.qt.clock_step(1_000_000)
    assert dev.read("SQ_HEAD") == 0 and dev.read("CQ_TAIL") == 0, "a stalled device ran"
    dev.write("CTRL", HW["CTRL_RESET"])
    assert dev.read("STATUS") == 0
    dev.setup(SQ, RING, CQ, RING, SG)
    dev.submit(FILL, [(DATA, 4096)])
    assert dev.wait()[0].status == HW["ST_OK"]


def test_spurious_irq_from_the_command_line_fires_at_enable(
    make_machine: Callable[..., QTestMachine],
) -> None:
    machine = make_machine("fault-spurious-irq=3")
    dev = Dmagate(machine, SLOT)
    assert qom_get(dev, "fault-spurious-irq") == 3
    machine.memset(MSG, 8, 0)
    dev.enable_msix(MSG, [0x5150, 0x5151])
    assert machine.memread(MSG, 4) == bytes(4), "fired before the device was enabled"
    dev.setup(SQ, RING, CQ, RING, SG)
    assert struct.unpack("<I", machine.memread(MSG, 4))[0] == 0x5150
    assert dev.read("INT_STATUS") == HW["INT_COMPLETION"]
    assert dev.read64("STAT_FAULTS") == 3 and dev.read64("STAT_INTERRUPTS") == 3
    assert qom_get(dev, "fault-spurious-irq") == 0


def test_spurious_irq_set_while_disabled_is_held(dev: Dmagate) -> None:
    dev.write("CTRL", 0)
    qom_set(dev, "fault-spurious-irq", 2)
    assert dev.read("INT_STATUS") == 0
    assert qom_get(dev, "fault-spurious-irq") == 2
    dev.setup(SQ, RING, CQ, RING, SG)
    assert dev.read("INT_STATUS") == HW["INT_COMPLETION"]
    assert dev.read64("STAT_FAULTS") == 2


def test_duplicate_waits_for_room_in_the_cq(machine: QTestMachine) -> None:
    dev = Dmagate(machine, SLOT)
    dev.setup(SQ, RING, CQ, 2, SG)  # room for one record at a time
    qom_set(dev, "fault-duplicate-completion", 1)
    dev.submit(FILL, [(DATA, 4096)], tag=0x77)
    (first,) = dev.wait()
    (second,) = dev.wait()
    assert (first.tag, second.tag) == (0x77, 0x77)
    assert (first.timestamp, first.bytes_done, first.crc) == (second.timestamp,
                                                              second.bytes_done, second.crc)
    dev.submit(FILL, [(DATA, 4096)], tag=0x78)
    assert [c.tag for c in dev.wait()] == [0x78]


# -- Logging ------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {"op": 0}, {"flags": 0x80}, {"length": 0}, {"sg_count": 0}, {"sg_addr": SG + 8},
    {"length": 4097},
])
def test_every_rejection_is_logged(dev: Dmagate, fields: dict[str, int]) -> None:
    sg_addr = dev.write_sg([(DATA, 4096)])
    desc = dict(op=FILL, flags=1, reserved=0, tag=0x99, sg_addr=sg_addr, sg_count=1,
                length=4096, param=0) | fields
    dev.post(struct.pack("<BBHIQIIQ", *desc.values()))
    assert dev.wait()[0].status != HW["ST_OK"]
    assert any("tag 0x99 refused" in line for line in guest_errors(dev.qt))


# -- Interrupt bookkeeping ------------------------------------------------------------------


def mask_vector(dev: Dmagate, vector: int, masked: bool) -> None:
    dev.qt.writel(dev.bar2 + 16 * vector + 12, int(masked))


def pba(dev: Dmagate) -> int:
    return dev.qt.readl(dev.bar2 + 0x800)


def test_int_ack_clears_the_msix_pending_bit(dev: Dmagate) -> None:
    dev.qt.memset(MSG, 8, 0)
    dev.enable_msix(MSG, [0xA0, 0xA1])
    mask_vector(dev, 0, True)
    dev.submit(FILL, [(DATA, 4096)])
    dev.wait()
    assert pba(dev) & 1, "the masked message is not pending"
    assert dev.read64("STAT_INTERRUPTS") == 0, "a masked message counted as sent"
    dev.write("INT_ACK", HW["INT_COMPLETION"])
    assert not pba(dev) & 1, "INT_ACK left the PBA bit set"
    mask_vector(dev, 0, False)
    assert dev.qt.memread(MSG, 4) == bytes(4), "a message for an acked cause"


def test_unmask_signals_only_causes_not_yet_signalled(dev: Dmagate) -> None:
    dev.qt.memset(MSG, 8, 0)
    dev.enable_msix(MSG, [0xB0, 0xB1])
    dev.write("INT_MASK", HW["INT_COMPLETION"])
    dev.submit(FILL, [(DATA, 4096)])
    dev.wait()
    assert dev.qt.memread(MSG, 4) == bytes(4)
    dev.write("INT_MASK", 0)
    assert struct.unpack("<I", dev.qt.memread(MSG, 4))[0] == 0xB0
    assert dev.read64("STAT_INTERRUPTS") == 1
    dev.qt.memset(MSG, 8, 0)
    dev.write("INT_MASK", HW["INT_COMPLETION"])
    dev.write("INT_MASK", 0)
    assert dev.qt.memread(MSG, 4) == bytes(4), "a delivered cause signalled again"
    assert dev.read64("STAT_INTERRUPTS") == 1


def test_intx_disabled_assertions_are_not_counted(dev: Dmagate) -> None:
    dev.pci.set_command(0x400)  # INTx Disable
    dev.submit(FILL, [(DATA, 4096)])
    dev.wait()
    assert dev.read("INT_STATUS") == HW["INT_COMPLETION"]
    assert dev.read64("STAT_INTERRUPTS") == 0


# -- What counts as a fired fault -------------------------------------------------------------


def test_faults_fire_only_where_they_have_an_effect(dev: Dmagate) -> None:
    qom_set(dev, "fault-stall", 1)
    qom_set(dev, "fault-dma-error", 1)
    dev.submit(FILL, [(DATA, 4096)])
    dev.qt.clock_step(2_000_000)
    assert dev.read("STATUS") & HW["STATUS_STALLED"]
    assert qom_get(dev, "fault-dma-error") == 1, "a stalled descriptor spent a fault"
    assert qom_get(dev, "stat-faults") == 1
    dev.write("CTRL", HW["CTRL_RESET"])
    dev.setup(SQ, RING, CQ, RING, SG)
    qom_set(dev, "fault-dma-error", 0)

    qom_set(dev, "fault-corrupt", 1)
    dev.submit(CHECKSUM, [(DATA, 4096)])
    dev.wait()
    assert qom_get(dev, "fault-corrupt") == 1, "CHECKSUM spent fault-corrupt"
    qom_set(dev, "fault-drop-irq", 1)
    dev.submit(CHECKSUM, [(DATA, 4096)], flags=0)
    dev.wait()
    assert qom_get(dev, "fault-drop-irq") == 1, "a completion without interrupt spent drop-irq"
    assert qom_get(dev, "stat-faults") == 0  # statistics went with the reset
    dev.write("INT_ACK", HW["INT_COMPLETION"] | HW["INT_ERROR"])
    dev.submit(FILL, [(DATA, 8192)], param=3)
    dev.wait()
    assert qom_get(dev, "fault-corrupt") == 0 and qom_get(dev, "fault-drop-irq") == 0
    assert dev.read("INT_STATUS") == 0, "drop-irq did not drop"
    assert dev.qt.memread(DATA, 1) != ref.fill_pattern(3, 0, 1), "corrupt did not corrupt"
    assert qom_get(dev, "stat-faults") == 2


def test_no_fault_fires_on_a_refused_descriptor(dev: Dmagate) -> None:
    for fault in ("fault-drop-irq", "fault-dma-error", "fault-duplicate-completion",
                  "fault-stall"):
        qom_set(dev, fault, 1)
    dev.submit(FILL, [(DATA, 4096)], flags=0x80)  # reserved flag: BAD_DESCRIPTOR
    (done,) = dev.wait()
    assert done.status == HW["ST_BAD_DESCRIPTOR"]
    assert dev.read("INT_STATUS") & HW["INT_ERROR"], "the refusal's interrupt was dropped"
    assert qom_get(dev, "stat-faults") == 0
    assert qom_get(dev, "fault-drop-irq") == 1


# -- Work per bottom half -----------------------------------------------------------------------


def test_a_huge_doorbell_yields_to_the_main_loop(
    make_machine: Callable[..., QTestMachine],
) -> None:
    """4,095 descriptors of 1,024 SG entries each: the engine must give the
    main loop back between bottom halves, so the qtest command right after
    the doorbell is answered while most descriptors are still to come."""
    machine = make_machine("zero-delay=on", memory_mib=256)
    dev = Dmagate(machine, SLOT)
    size = HW["MAX_RING_SIZE"]
    dev.setup(SQ, size, 0x0400_0000, size, SG)
    entries = HW["MAX_SEGMENTS"]
    dev.write_sg([(DATA + i, 1) for i in range(entries)])
    descriptor = dev.descriptor(FILL, SG, entries, entries, flags=0, tag=1)
    machine.memwrite(SQ, descriptor * (size - 1))
    dev.write("SQ_TAIL", size - 1)
    head = dev.read("SQ_HEAD")
    # One list of 1,024 entries per bottom half; a bottom half bounded by
    # bytes alone would take 1,024 such descriptors (1 MiB) at once.
    assert head < 1024, f"{head} descriptors taken before the main loop answered"
    dev.sq_tail = size - 1
    done = dev.wait(size - 1, max_steps=1_000_000)
    assert len(done) == size - 1 and all(c.status == HW["ST_OK"] for c in done)


# -- Own BARs behind the IOMMU -----------------------------------------------------------------


def test_own_bar_is_recognised_after_iommu_translation(
    make_machine: Callable[..., QTestMachine],
) -> None:
    qt, slpt, aw = translating_machine(make_machine)
    dev = Dmagate(qt, SLOT)
    iova_to_bar = 0x8000_0000
    slpt.map(iova_to_bar, dev.bar0, PTE_R | PTE_W)
    slpt.map(dev.bar0, DATA, PTE_R | PTE_W)  # the BAR's address as an IOVA is RAM
    enable_translation(qt, slpt, SLOT << 3, aw)
    dev.setup(SQ, RING, CQ, RING, SG)
    qt.memset(DATA, PAGE, 0)

    dev.submit(FILL, [(dev.bar0, PAGE)], param=2)
    assert dev.wait()[0].status == HW["ST_OK"], "an IOVA equal to a BAR address was refused"
    assert qt.memread(DATA, PAGE) == ref.fill_pattern(2, 0, PAGE)
    dev.submit(FILL, [(iova_to_bar, 64)])
    assert dev.wait()[0].status == HW["ST_DMA_ERROR"]
    assert any("own BAR" in line for line in guest_errors(qt))
    assert dev.read("ID") == HW["ID_VALUE"]
    assert dev.pci.read16(4) & PCI_COMMAND_MASTER
