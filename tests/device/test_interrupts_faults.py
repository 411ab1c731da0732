"""Interrupt delivery (MSI-X, MSI, INTx) and every fault knob (datasheet §6, §8)."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from dmagate import reference as ref
from dmagate.devdriver import PCI_COMMAND_MASTER, Dmagate
from dmagate.hwregs import HW
from dmagate.qtest import QTestMachine

from .conftest import DATA, MSG

FILL, CHECKSUM = HW["OP_FILL"], HW["OP_CHECKSUM"]
PATH = "/machine/peripheral/dg"
ALWAYS = HW["FAULT_ALWAYS"]


def qom_set(dev: Dmagate, prop: str, value: Any) -> None:
    dev.qt.qmp.cmd("qom-set", path=PATH, property=prop, value=value)


def qom_get(dev: Dmagate, prop: str) -> Any:
    return dev.qt.qmp.cmd("qom-get", path=PATH, property=prop)


def messages(dev: Dmagate, count: int = 2) -> list[int]:
    return list(struct.unpack(f"<{count}I", dev.qt.memread(MSG, 4 * count)))


def test_msix_completion_and_error_vectors(dev: Dmagate) -> None:
    dev.qt.memset(MSG, 8, 0)
    dev.enable_msix(MSG, [0xC0DE0000, 0xC0DE0001])
    dev.submit(FILL, [(DATA, 4096)])
    dev.wait()
    assert messages(dev) == [0xC0DE0000, 0]
    dev.write("INT_ACK", 3)
    dev.submit(FILL, [(0xF000_0000, 4096)])  # nothing there: DMA error
    (done,) = dev.wait()
    assert done.status == HW["ST_DMA_ERROR"]
    assert messages(dev)[1] == 0xC0DE0001
    assert dev.read64("STAT_INTERRUPTS") == 3


def test_msi(dev: Dmagate) -> None:
    dev.qt.memset(MSG, 4, 0)
    dev.enable_msi(MSG, 0x4242)
    dev.submit(FILL, [(DATA, 512)])
    dev.wait()
    assert dev.qt.memread(MSG, 2) == b"\x42\x42"


def test_intx_level_follows_status_and_mask(dev: Dmagate) -> None:
    dev.qt.irq_intercept_in("ioapic")
    dev.submit(FILL, [(DATA, 512)])
    dev.wait()
    raised = [n for what, n in dev.qt.take_irq_events() if what == "raise"]
    assert len(raised) == 1
    dev.write("INT_MASK", HW["INT_COMPLETION"])
    assert ("lower", raised[0]) in dev.qt.take_irq_events()
    dev.write("INT_MASK", 0)
    assert ("raise", raised[0]) in dev.qt.take_irq_events()
    dev.write("INT_ACK", HW["INT_COMPLETION"])
    assert ("lower", raised[0]) in dev.qt.take_irq_events()


def test_no_interrupt_without_the_flag(dev: Dmagate) -> None:
    dev.submit(FILL, [(DATA, 512)], flags=0)
    (done,) = dev.wait()
    assert done.status == HW["ST_OK"]
    assert dev.read("INT_STATUS") == 0


def test_fault_dma_error(dev: Dmagate) -> None:
    qom_set(dev, "fault-dma-error", 1)
    dev.qt.memset(DATA, 3 * 4096, 0)
    dev.submit(FILL, [(DATA, 3 * 4096)], param=1)
    (done,) = dev.wait()
    assert (done.status, done.bytes_done) == (HW["ST_DMA_ERROR"], 4096)
    data = dev.qt.memread(DATA, 3 * 4096)
    assert data[:4096] == ref.fill_pattern(1, 0, 4096) and data[4096:] == bytes(8192)
    assert dev.read("INT_STATUS") & HW["INT_ERROR"]
    assert qom_get(dev, "fault-dma-error") == 0
    dev.submit(FILL, [(DATA, 4096)])
    assert dev.wait()[0].status == HW["ST_OK"], "one-shot fault fired twice"
    assert qom_get(dev, "stat-faults") == 1


def test_fault_drop_irq(dev: Dmagate) -> None:
    qom_set(dev, "fault-drop-irq", 1)
    dev.enable_msix(MSG, [1, 2])
    dev.qt.memset(MSG, 8, 0)
    dev.submit(FILL, [(DATA, 4096)])
    (done,) = dev.wait()
    assert done.status == HW["ST_OK"]
    assert dev.read("INT_STATUS") == 0 and messages(dev) == [0, 0]
    dev.submit(FILL, [(DATA, 4096)])
    dev.wait()
    assert messages(dev)[0] == 1


def test_fault_spurious_irq(dev: Dmagate) -> None:
    dev.enable_msix(MSG, [7, 8])
    dev.qt.memset(MSG, 8, 0)
    qom_set(dev, "fault-spurious-irq", 2)
    assert messages(dev)[0] == 7
    assert dev.read("INT_STATUS") == HW["INT_COMPLETION"]
    assert dev.read("CQ_TAIL") == 0
    assert dev.read64("STAT_FAULTS") == 2 and dev.read64("STAT_INTERRUPTS") == 2
    with pytest.raises(Exception, match="at most"):
        qom_set(dev, "fault-spurious-irq", ALWAYS)


def test_fault_duplicate_completion(dev: Dmagate) -> None:
    qom_set(dev, "fault-duplicate-completion", 1)
    dev.submit(FILL, [(DATA, 4096)], tag=77)
    done = dev.wait(2)
    assert [c.tag for c in done] == [77, 77]
    assert done[0] == done[1]


def test_fault_corrupt_claims_success(dev: Dmagate) -> None:
    qom_set(dev, "fault-corrupt", 1)
    dev.submit(FILL, [(DATA, 3 * 4096)], param=9)
    (done,) = dev.wait()
    good = ref.fill_pattern(9, 0, 3 * 4096)
    data = dev.qt.memread(DATA, 3 * 4096)
    assert done.status == HW["ST_OK"] and done.crc == ref.crc32(good)
    diffs = [i for i in range(len(good)) if good[i] != data[i]]
    assert diffs == [0, 4096, 8192]


def test_fault_partial(dev: Dmagate) -> None:
    qom_set(dev, "fault-partial", 1)
    dev.qt.memset(DATA, 10_000, 0)
    dev.submit(FILL, [(DATA, 10_000)], param=2)
    (done,) = dev.wait()
    assert (done.status, done.bytes_done) == (HW["ST_SHORT"], 4096)
    data = dev.qt.memread(DATA, 10_000)
    assert data[:4096] == ref.fill_pattern(2, 0, 4096)
    assert data[4096:] == bytes(10_000 - 4096)
    assert done.crc == ref.crc32(data[:4096])


def test_fault_stall_until_reset(dev: Dmagate) -> None:
    qom_set(dev, "fault-stall", 1)
    dev.submit(FILL, [(DATA, 4096)])
    for _ in range(50):
        dev.qt.clock_step(1_000_000)
    assert dev.completions() == []
    assert dev.read("STATUS") & HW["STATUS_STALLED"]
    dev.write("CTRL", HW["CTRL_RESET"])
    assert dev.read("STATUS") == 0
    dev.setup(dev.sq_base, dev.sq_size, dev.cq_base, dev.cq_size, dev.sg_area)
    dev.submit(FILL, [(DATA, 4096)])
    assert dev.wait()[0].status == HW["ST_OK"]


def test_fault_extra_delay(dev: Dmagate) -> None:
    qom_set(dev, "fault-extra-delay-ns", 2_000_000)
    start = dev.read64("TIME_LO")
    dev.submit(FILL, [(DATA, 1000)])
    (done,) = dev.wait()
    assert done.timestamp - start == 1_000_000 + 2_000_000 + 1000


def test_persistent_fault(dev: Dmagate) -> None:
    qom_set(dev, "fault-partial", ALWAYS)
    for _ in range(3):
        dev.submit(FILL, [(DATA, 8192)])
        assert dev.wait()[0].status == HW["ST_SHORT"]
    assert qom_get(dev, "fault-partial") == ALWAYS
    qom_set(dev, "fault-partial", 0)
    dev.submit(FILL, [(DATA, 8192)])
    assert dev.wait()[0].status == HW["ST_OK"]


def test_statistics_over_qom(dev: Dmagate) -> None:
    dev.submit(FILL, [(DATA, 1000)])
    dev.submit(FILL, [(0xF000_0000, 1000)])
    dev.wait(2)
    assert qom_get(dev, "stat-descriptors") == 2
    assert qom_get(dev, "stat-bytes") == 1000
    assert qom_get(dev, "stat-errors") == 1
    assert qom_get(dev, "stat-interrupts") == dev.read64("STAT_INTERRUPTS")


def test_bus_master_off(dev: Dmagate) -> None:
    dev.pci.set_command(PCI_COMMAND_MASTER, on=False)
    dev.submit(CHECKSUM, [(DATA, 64)])
    for _ in range(20):
        dev.qt.clock_step(100_000)
    assert dev.read("CQ_TAIL") == 0 and dev.read("SQ_HEAD") == 0
    assert dev.read("ERROR") == HW["ST_BUS_MASTER_OFF"]
    dev.pci.set_command(PCI_COMMAND_MASTER, on=True)
    dev.write("SQ_TAIL", dev.sq_tail)
    assert dev.wait()[0].status == HW["ST_OK"]


def test_machine_survives(machine: QTestMachine) -> None:
    assert machine.alive()
