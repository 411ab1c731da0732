"""Regressions for what a hostile review of datasheet 1.1's device found:
MSI-X state in a stream, a reset after unrealize, a CHECKSUM told to
corrupt, read permission for TRANSFORM behind the IOMMU, accesses after a
self-inflicted FLR, MMIO writes that fail halfway, interrupts in D3hot,
counters after a reset, MSI per cause, ring registers while halted."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path

from dmagate import reference as ref
from dmagate.devdriver import (
    PCI_CAP_ID_EXP,
    PCI_EXP_DEVCTL,
    Dmagate,
    enable_mmconfig,
    mmconfig_address,
)
from dmagate.hwregs import HW
from dmagate.migstream import MigrationStream
from dmagate.qtest import QTestMachine

from .conftest import CQ, DATA, MSG, RING, SG, SLOT, SQ, guest_errors, load_state, save_state
from .test_datasheet_promises import D3HOT, set_power_state
from .test_hostile_guest import aim_msix_at_own_device_control
from .test_iommu import PAGE, PTE_W, VTD, enable_translation, translating_machine

FILL, CHECKSUM, TRANSFORM = HW["OP_FILL"], HW["OP_CHECKSUM"], HW["OP_TRANSFORM"]
PATH = "/machine/peripheral/dg"
MiB = 1 << 20


def refused(make_machine: Callable[..., QTestMachine], state: Path) -> str:
    target, status = load_state(make_machine, state)
    assert status == "failed", "the corrupted stream loaded"
    assert target.alive()
    return target.stderr()


def test_pending_unmasked_msix_vector_in_a_stream_is_refused_not_sent(
    make_machine: Callable[..., QTestMachine], tmp_path: Path
) -> None:
    source = make_machine()
    dev = Dmagate(source, SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    source.memset(MSG, 8, 0)
    dev.enable_msix(MSG, [0x11, 0x22])
    state = tmp_path / "state"
    save_state(source, state)
    stream = MigrationStream.read(state)
    section = stream.section("dmagate")
    section.write("msix_state", 1, index=2 * 16)  # the PBA: vector 0 pending
    stream.save(state)
    log = refused(make_machine, state)
    assert "MSI-X vector pending while unmasked" in log


def test_msix_masks_and_pending_bits_survive_migration(
    make_machine: Callable[..., QTestMachine], tmp_path: Path
) -> None:
    source = make_machine()
    dev = Dmagate(source, SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    source.memset(MSG, 8, 0)
    dev.enable_msix(MSG, [0x11, 0x22])
    source.writel(dev.bar2 + 12, 1)  # mask vector 0
    dev.submit(FILL, [(DATA, 4096)])
    dev.wait()
    assert source.readl(dev.bar2 + 0x800) & 1
    state = tmp_path / "state"
    save_state(source, state)
    target, status = load_state(make_machine, state)
    assert status == "completed"
    moved = Dmagate(target, SLOT, configure=False)
    assert target.readl(moved.bar2 + 0x800) & 1, "the pending bit was lost"
    assert target.memread(MSG, 4) == bytes(4), "the load sent the held message"
    target.writel(moved.bar2 + 12, 0)
    assert struct.unpack("<I", target.memread(MSG, 4))[0] == 0x11


def test_reset_after_unrealize_touches_nothing(dev: Dmagate) -> None:
    dev.qt.qmp.cmd("qom-set", path=PATH, property="realized", value=False)
    dev.qt.qmp.cmd("system_reset")
    time.sleep(0.2)
    dev.qt.clock_step(1000)
    assert dev.qt.alive(), dev.qt.stderr()


def test_checksum_told_to_corrupt_by_a_stream_is_refused(
    make_machine: Callable[..., QTestMachine], tmp_path: Path
) -> None:
    source = make_machine()
    dev = Dmagate(source, SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    source.memset(DATA, 4 * MiB, 0x33)
    dev.submit(CHECKSUM, [(DATA, 4 * MiB)])
    source.clock_step(1_000_000 + MiB)
    state = tmp_path / "state"
    save_state(source, state)
    stream = MigrationStream.read(state)
    stream.section("dmagate").write("corrupt", 1)
    stream.save(state)
    assert "CHECKSUM writes nothing" in refused(make_machine, state)


def test_transform_needs_read_permission_too(
    make_machine: Callable[..., QTestMachine],
) -> None:
    qt, slpt, aw = translating_machine(make_machine)
    write_only = 0x8020_0000
    slpt.map(write_only, DATA, PTE_W)
    dev = Dmagate(qt, SLOT)
    enable_translation(qt, slpt, SLOT << 3, aw)
    dev.setup(SQ, RING, CQ, RING, SG)
    before = bytes(range(256)) * 16
    qt.memwrite(DATA, before)
    dev.submit(TRANSFORM, [(write_only, PAGE)], param=0x0101010101010101)
    (done,) = dev.wait()
    assert (done.status, done.bytes_done) == (HW["ST_DMA_ERROR"], 0)
    assert qt.memread(DATA, PAGE) == before


def test_nothing_is_written_after_the_access_that_resets_the_device(
    machine: QTestMachine,
) -> None:
    """A FILL that starts on its own Device Control: the first 4-byte access
    sets bit 15 (FLR); the 60 bytes after it must stay as the reset left them."""
    enable_mmconfig(machine)
    dev = Dmagate(machine, SLOT)
    cap = dev.pci.capability(PCI_CAP_ID_EXP)
    seed = next(s for s in range(5000) if ref.fill_pattern(s, 1, 1)[0] & 0x80)
    dev.setup(SQ, RING, CQ, RING, SG)
    after = [dev.pci.read32(cap + PCI_EXP_DEVCTL + 4 + 4 * i) for i in range(15)]
    dev.submit(FILL, [(mmconfig_address(0, SLOT, 0, cap + PCI_EXP_DEVCTL), 64)], param=seed)
    for _ in range(20):
        machine.clock_step(100_000)
    assert machine.readl(dev.bar0 + HW["REG_ID"]) != HW["ID_VALUE"], "no FLR happened"
    assert [dev.pci.read32(cap + PCI_EXP_DEVCTL + 4 + 4 * i) for i in range(15)] == after


def test_bytes_done_counts_an_mmio_write_that_succeeded_before_one_failed(
    make_machine: Callable[..., QTestMachine],
) -> None:
    """6 bytes at VT-d's FEADDR, which takes 4- and 8-byte accesses only:
    the first 4 land and count, the 2-byte rest is refused."""
    qt = make_machine(iommu=True)
    feaddr = VTD + 0x40
    dev = Dmagate(qt, SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    dev.submit(FILL, [(feaddr, 6)], param=9)
    (done,) = dev.wait()
    assert (done.status, done.bytes_done) == (HW["ST_DMA_ERROR"], 4)
    assert done.crc == ref.crc32(ref.fill_pattern(9, 0, 4))
    pattern = struct.unpack("<I", ref.fill_pattern(9, 0, 4))[0]
    assert qt.readl(feaddr) == pattern & ~3  # FEADDR's low two bits read 0


def test_no_interrupt_leaves_the_device_in_d3hot(dev: Dmagate) -> None:
    dev.qt.memset(MSG, 8, 0)
    dev.enable_msix(MSG, [0x31, 0x32])
    set_power_state(dev, D3HOT)
    dev.qt.qmp.cmd("qom-set", path=PATH, property="fault-spurious-irq", value=1)
    assert dev.qt.memread(MSG, 4) == bytes(4), "a message in D3hot"
    set_power_state(dev, 0)
    dev.qt.clock_step(1000)
    assert struct.unpack("<I", dev.qt.memread(MSG, 4))[0] == 0x31, "held message lost"
    assert dev.read64("STAT_INTERRUPTS") == 1


def test_nothing_is_counted_after_a_message_resets_the_device(machine: QTestMachine) -> None:
    aim_msix_at_own_device_control(machine)
    machine.qmp.cmd("qom-set", path=PATH, property="fault-spurious-irq", value=3)
    dev = Dmagate(machine, SLOT)
    assert dev.read("STATUS") == 0
    assert dev.read64("STAT_INTERRUPTS") == 0 and dev.read64("STAT_FAULTS") == 0


def test_msi_sends_one_message_per_cause(dev: Dmagate) -> None:
    dev.enable_msi(MSG, 0x77)
    dev.submit(FILL, [(0xF000_0000, 4096)])  # DMA error, INTERRUPT flag: two causes
    dev.wait()
    assert dev.read("INT_STATUS") == HW["INT_COMPLETION"] | HW["INT_ERROR"]
    assert dev.read64("STAT_INTERRUPTS") == 2


def test_ring_registers_stay_locked_while_ctrl_enable_is_set(machine: QTestMachine) -> None:
    dev = Dmagate(machine, SLOT)
    dev.setup(SQ, 3, CQ, RING, SG)  # not a power of two: halts at enable
    assert dev.read("STATUS") & HW["STATUS_HALTED"] and dev.read("CTRL") == HW["CTRL_ENABLE"]
    dev.write("SQ_SIZE", RING)
    assert dev.read("SQ_SIZE") == 3
    assert dev.read("ERROR") == HW["ST_REG_LOCKED"]
    assert any("while enabled" in line for line in guest_errors(machine))
