"""A buggy or hostile guest gets error statuses, never a crash; resets and
migration in the middle of a transfer (datasheet §5, §9-11)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dmagate import reference as ref
from dmagate.devdriver import Dmagate
from dmagate.hwregs import HW
from dmagate.qtest import QTestMachine

from .conftest import CQ, DATA, RING, SG, SLOT, SQ, guest_errors

FILL = HW["OP_FILL"]
MiB = 1 << 20


def submit_raw(dev: Dmagate, **fields: int) -> int:
    """A descriptor with one valid 4 KiB segment, then ``fields`` overridden."""
    sg_addr = dev.write_sg([(DATA, 4096)])
    desc = dict(op=FILL, flags=HW["DESC_F_INTERRUPT"], reserved=0, tag=1, sg_addr=sg_addr,
                sg_count=1, length=4096, param=0)
    desc.update(fields)
    raw = struct.pack("<BBHIQIIQ", desc["op"], desc["flags"], desc["reserved"], desc["tag"],
                      desc["sg_addr"], desc["sg_count"], desc["length"], desc["param"])
    return dev.post(raw)


@pytest.mark.parametrize(("fields", "status"), [
    ({"op": 0}, "BAD_OPCODE"),
    ({"op": 200}, "BAD_OPCODE"),
    ({"flags": 0x80}, "BAD_DESCRIPTOR"),
    ({"reserved": 1}, "BAD_DESCRIPTOR"),
    ({"length": 0}, "BAD_LENGTH"),
    ({"length": 0x1000_0001}, "BAD_LENGTH"),
    ({"sg_count": 0}, "BAD_SG"),
    ({"sg_count": 1025}, "BAD_SG"),
    ({"sg_addr": SG + 8}, "BAD_SG"),
    ({"length": 4097}, "BAD_SG"),  # the segments cover less than length
    ({"sg_addr": (1 << 64) - 16, "sg_count": 2}, "BAD_SG"),  # list wraps
    ({"sg_addr": 0xF000_0000}, "DMA_ERROR"),  # list not in memory
])
def test_malformed_descriptor_touches_nothing(
    dev: Dmagate, fields: dict[str, int], status: str
) -> None:
    dev.qt.memset(DATA, 4096, 0x5A)
    submit_raw(dev, **fields)
    (done,) = dev.wait()
    assert done.status == HW[f"ST_{status}"]
    assert done.bytes_done == 0
    assert dev.qt.memread(DATA, 4096) == b"\x5a" * 4096
    assert dev.read("INT_STATUS") & HW["INT_ERROR"]
    # The device goes on with the next descriptor.
    dev.submit(FILL, [(DATA, 4096)], param=4)
    assert dev.wait()[0].status == HW["ST_OK"]


@pytest.mark.parametrize("entry", [
    struct.pack("<QII", DATA, 0, 0),  # empty segment
    struct.pack("<QII", DATA, 4096, 1),  # reserved bits
    struct.pack("<QII", (1 << 64) - 100, 4096, 0),  # wraps
])
def test_malformed_sg_entry(dev: Dmagate, entry: bytes) -> None:
    dev.qt.memwrite(SG, entry)
    dev.post(dev.descriptor(FILL, SG, 1, 100))
    assert dev.wait()[0].status == HW["ST_BAD_SG"]
    assert any("bad SG entry" in line for line in guest_errors(dev.qt))


def test_dma_at_own_bar_is_refused(dev: Dmagate) -> None:
    dev.submit(FILL, [(dev.bar0, 64)])
    assert dev.wait()[0].status == HW["ST_DMA_ERROR"]
    dev.submit(FILL, [(dev.bar2, 64)])
    assert dev.wait()[0].status == HW["ST_DMA_ERROR"]
    assert dev.read("ID") == HW["ID_VALUE"]
    assert dev.read("STATUS") & HW["STATUS_ENABLED"]


def test_unreachable_completion_ring_halts(machine: QTestMachine) -> None:
    dev = Dmagate(machine, SLOT)
    dev.setup(SQ, RING, 0xF000_0000, RING, SG)
    dev.submit(FILL, [(DATA, 64)])
    for _ in range(20):
        machine.clock_step(1_000_000)
    assert dev.read("STATUS") & HW["STATUS_HALTED"]
    assert dev.read("ERROR") == HW["ST_BAD_RING"]
    assert dev.read64("ERROR_ADDR_LO") == 0xF000_0000


def start_long_fill(dev: Dmagate, size: int = 8 * MiB) -> None:
    dev.qt.memset(DATA, size, 0)
    dev.submit(FILL, [(DATA, size)], param=6)
    dev.qt.clock_step(1_000_000 + 2 * MiB)  # latency, then about 2 MiB moved
    assert dev.read("STATUS") & HW["STATUS_BUSY"]


def assert_reset_and_quiet(dev: Dmagate, size: int = 8 * MiB) -> None:
    for reg in ("CTRL", "STATUS", "SQ_SIZE", "CQ_TAIL", "INT_STATUS", "ERROR"):
        assert dev.read(reg) == 0, reg
    snapshot = dev.qt.memread(DATA, size)
    assert snapshot != bytes(size), "nothing was moved before the reset"
    for _ in range(20):
        dev.qt.clock_step(10_000_000)
    assert dev.qt.memread(DATA, size) == snapshot, "DMA went on after the reset"
    assert dev.qt.memread(CQ, 32) == bytes(32), "a completion was written"


def test_soft_reset_mid_transfer(dev: Dmagate) -> None:
    start_long_fill(dev)
    dev.write("CTRL", HW["CTRL_RESET"])
    assert_reset_and_quiet(dev)


def test_function_level_reset_mid_transfer(dev: Dmagate) -> None:
    start_long_fill(dev)
    dev.function_level_reset()
    assert_reset_and_quiet(dev)


def test_system_reset_mid_transfer(dev: Dmagate) -> None:
    start_long_fill(dev)
    dev.qt.qmp.cmd("system_reset")
    for _ in range(20):  # the reset request is served by the main loop
        dev.qt.clock_step(100_000)
        if dev.read("CTRL") == 0:
            break
    # BAR and command register are reset too: map the device again.
    dev = Dmagate(dev.qt, SLOT)
    assert_reset_and_quiet(dev)


def test_migration_mid_transfer(
    make_machine: Callable[..., QTestMachine], tmp_path: Path
) -> None:
    size = 8 * MiB
    source = make_machine()
    dev = Dmagate(source, SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    start_long_fill(dev, size)
    state = tmp_path / "state"
    source.qmp.cmd("migrate", uri=f"file:{state}")
    for _ in range(200):
        if source.qmp.cmd("query-migrate").get("status") == "completed":
            break
        time.sleep(0.05)
    assert source.qmp.cmd("query-migrate")["status"] == "completed"
    source.close()

    target = make_machine(extra=("-incoming", "defer"))
    target.qmp.cmd("migrate-incoming", uri=f"file:{state}")
    for _ in range(200):
        if target.qmp.cmd("query-status")["status"] != "inmigrate":
            break
        time.sleep(0.05)
    target.qmp.cmd("cont")
    moved = Dmagate(target, SLOT, configure=False)
    moved.follow(dev)
    assert moved.read("STATUS") & HW["STATUS_BUSY"]
    (done,) = moved.wait()
    assert (done.status, done.bytes_done) == (HW["ST_OK"], size)
    data = target.memread(DATA, size)
    assert data == ref.fill_pattern(6, 0, size)
    assert done.crc == ref.crc32(data)


def test_disable_mid_transfer_abandons_it(dev: Dmagate) -> None:
    start_long_fill(dev)
    dev.write("CTRL", 0)
    assert dev.read("STATUS") == 0
    snapshot = dev.qt.memread(DATA, 8 * MiB)
    for _ in range(20):
        dev.qt.clock_step(10_000_000)
    assert dev.qt.memread(DATA, 8 * MiB) == snapshot
    assert dev.read("CQ_TAIL") == 0
    dev.setup(SQ, RING, CQ, RING, SG)  # enabling again starts the rings afresh
    dev.submit(FILL, [(DATA, 4096)], param=1)
    assert dev.wait()[0].status == HW["ST_OK"]
