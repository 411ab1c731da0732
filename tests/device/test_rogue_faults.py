"""Rogue faults (datasheet §8): the device breaking its own datasheet the way
real hardware does: resets ignored, a late write after the completion, a
stray write past a segment, a dead device, a delayed interrupt, an
interrupt storm, completions out of order or with another descriptor's
tag; each one's DMAGATE_FAULT event; their state across migration."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError

from dmagate import reference as ref
from dmagate.devdriver import Dmagate
from dmagate.hwregs import HW
from dmagate.migstream import MigrationStream
from dmagate.qtest import QTestMachine

from .conftest import CQ, DATA, MSG, RING, SG, SLOT, SQ, load_state, save_state

FILL, CHECKSUM, TRANSFORM = HW["OP_FILL"], HW["OP_CHECKSUM"], HW["OP_TRANSFORM"]
PATH = "/machine/peripheral/dg"
OK = HW["ST_OK"]
MS = 1_000_000
ENABLED, BUSY, STALLED = (HW[f"STATUS_{b}"] for b in ("ENABLED", "BUSY", "STALLED"))
COMPLETION = HW["INT_COMPLETION"]
PAGE = 4096


def qom_set(dev: Dmagate, prop: str, value: Any) -> None:
    dev.qt.qmp.cmd("qom-set", path=PATH, property=prop, value=value)


def qom_get(dev: Dmagate, prop: str) -> Any:
    return dev.qt.qmp.cmd("qom-get", path=PATH, property=prop)


def device(make_machine: Callable[..., QTestMachine], options: str = "",
           zero_delay: bool = True) -> Dmagate:
    opts = ",".join(filter(None, ("zero-delay=on" if zero_delay else "", options)))
    dev = Dmagate(make_machine(opts), SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    return dev


def fault_events(dev: Dmagate) -> list[dict[str, Any]]:
    """The DMAGATE_FAULT events so far: QEMU sends an event before the reply
    to any later command, so one round trip brings them all in."""
    dev.qt.qmp.cmd("query-status")
    return [e["data"] for e in dev.qt.qmp.events() if e["event"] == "DMAGATE_FAULT"]


def messages(dev: Dmagate) -> tuple[int, int]:
    """The MSI-X message words the two vectors have written so far."""
    first, second = struct.unpack("<2I", dev.qt.memread(MSG, 8))
    return first, second


def msix(dev: Dmagate) -> None:
    dev.qt.memset(MSG, 8, 0)
    dev.enable_msix(MSG, [0xC0DE0000, 0xC0DE0001])


def step(dev: Dmagate, ns: int) -> None:
    dev.qt.clock_step(ns)


# -- Resets ignored -------------------------------------------------------------------------

def stalled(dev: Dmagate) -> None:
    qom_set(dev, "fault-stall", 1)
    dev.submit(FILL, [(DATA, 4096)])
    step(dev, 1000)
    assert dev.read("STATUS") == ENABLED | BUSY | STALLED


@pytest.mark.parametrize("mode", ["soft", "both"])
def test_soft_reset_ignored_leaves_the_engine_as_it_was(
    make_machine: Callable[..., QTestMachine], mode: str,
) -> None:
    dev = device(make_machine, f"fault-ignore-reset={mode}")
    stalled(dev)
    dev.write("CTRL", HW["CTRL_RESET"])
    assert dev.read("STATUS") == ENABLED | BUSY | STALLED
    assert dev.read("SQ_BASE_LO") == SQ
    stall, event = fault_events(dev)
    assert stall["fault"] == "stall"
    assert (event["fault"], event["device"], event["path"]) == ("ignore-reset", "dg", PATH)
    assert "sq-index" not in event and "rule" not in event
    assert qom_get(dev, "stat-faults") == 2     # the stall, the ignored reset
    qom_set(dev, "fault-ignore-reset", "none")
    dev.write("CTRL", HW["CTRL_RESET"])
    assert dev.read("STATUS") == 0


def test_flr_ignored_keeps_config_space_and_engine(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine, "fault-ignore-reset=flr")
    stalled(dev)
    dev.function_level_reset()
    assert dev.read("STATUS") == ENABLED | BUSY | STALLED
    assert dev.pci.read32(0x10) == dev.bar0, "the FLR reset the BARs"
    assert dev.pci.read16(0x04) & 0x4, "the FLR turned bus mastering off"
    cap = dev.pci.capability(0x10)
    assert not dev.pci.read16(cap + 8) & 0x8000, "the FLR bit stayed set"
    assert [e["fault"] for e in fault_events(dev)] == ["stall", "ignore-reset"]
    dev.write("CTRL", HW["CTRL_RESET"])     # "flr" alone: a soft reset still works
    assert dev.read("STATUS") == 0


def test_a_transfer_runs_on_through_ignored_resets(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine, "fault-ignore-reset=both,latency-ns=5000000",
                 zero_delay=False)
    dev.submit(FILL, [(DATA, 8192)], param=9)
    step(dev, MS)
    dev.write("CTRL", HW["CTRL_RESET"])
    dev.function_level_reset()
    assert dev.read("STATUS") & BUSY
    (done,) = dev.wait()
    assert done.status == OK
    assert dev.qt.memread(DATA, 8192) == ref.fill_pattern(9, 0, 8192)


def test_a_system_reset_is_never_ignored(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine, "fault-ignore-reset=both")
    stalled(dev)
    dev.qt.qmp.cmd("system_reset")
    dev = Dmagate(dev.qt, SLOT)             # firmware's job after a reset: the BARs
    assert (dev.read("STATUS"), dev.read("SQ_BASE_LO")) == (0, 0)
    assert qom_get(dev, "fault-ignore-reset") == "both", "configuration, kept"


# -- Late write -----------------------------------------------------------------------------

def test_late_write_writes_the_data_again_after_the_completion(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine, "fault-rules=late-write:times=1,"
                 "fault-late-write-delay-ns=2000000")
    dev.submit(FILL, [(DATA, 8192)], param=5)
    (done,) = dev.wait()
    assert done.status == OK
    assert dev.read("STATUS") == ENABLED | BUSY, "busy until the late write"
    dev.qt.memset(DATA, 8192, 0)           # the program's own data, after completion
    step(dev, MS)
    assert dev.qt.memread(DATA, 8192) == bytes(8192), "wrote before its delay"
    step(dev, MS)
    assert dev.qt.memread(DATA, 8192) == ref.fill_pattern(5, 0, 8192)
    assert dev.read("STATUS") == ENABLED
    (event,) = fault_events(dev)
    assert (event["fault"], event["sq-index"], event["tag"], event["rule"]) == (
        "late-write", 0, dev.tag, 0)
    assert event["virtual-time-ns"] <= done.timestamp + 1000
    assert dev.read64("STAT_BYTES") == 8192, "a late write is no transfer"


def test_late_write_of_a_transform_undoes_it(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine, "fault-late-write=1,fault-late-write-delay-ns=1000000")
    data = bytes(range(256)) * 16
    dev.qt.memwrite(DATA, data)
    dev.submit(TRANSFORM, [(DATA, 4096)], param=0x1122334455667788)
    assert dev.wait()[0].status == OK
    assert dev.qt.memread(DATA, 4096) == ref.transform(data, 0x1122334455667788)
    step(dev, 2 * MS)
    assert dev.qt.memread(DATA, 4096) == data
    assert qom_get(dev, "fault-late-write") == 0


def test_a_reset_before_the_late_write_cancels_it(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine, "fault-late-write=1,fault-late-write-delay-ns=2000000")
    dev.submit(FILL, [(DATA, 4096)], param=5)
    dev.wait()
    dev.write("CTRL", HW["CTRL_RESET"])
    dev.qt.memset(DATA, 4096, 0)
    step(dev, 5 * MS)
    assert dev.qt.memread(DATA, 4096) == bytes(4096)


def test_late_write_never_hits_a_checksum(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine, "fault-rules=late-write")
    dev.submit(CHECKSUM, [(DATA, 4096)])
    dev.wait()
    assert dev.read("STATUS") == ENABLED
    (status,) = qom_get(dev, "fault-rule-status")
    assert (status["matched"], status["fired"]) == (0, 0)


# -- Stray write ----------------------------------------------------------------------------

def test_stray_write_lands_in_the_page_past_the_segment(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine, "fault-stray-write=1")
    dev.qt.memset(DATA, 3 * PAGE, 0xEE)
    dev.submit(FILL, [(DATA, 6000)], param=3)
    (done,) = dev.wait()
    assert done.status == OK, "a stray write is invisible in the completion"
    assert dev.qt.memread(DATA + 6000, 2 * PAGE - 6000) == b"\xee" * (2 * PAGE - 6000)
    stray = dev.qt.memread(DATA + 2 * PAGE, 128)
    assert stray[:64] == ref.fill_pattern(3, 6000, 64), "not the transfer's next bytes"
    assert stray[64:] == b"\xee" * 64, "more than 64 bytes"
    assert [e["fault"] for e in fault_events(dev)] == ["stray-write"]


def test_stray_write_only_into_guest_ram(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine, "fault-rules=stray-write")
    top = 512 * 1024 * 1024 - PAGE          # the last page of RAM: nothing past it
    dev.submit(FILL, [(top, PAGE)])
    assert dev.wait()[0].status == OK
    (status,) = qom_get(dev, "fault-rule-status")
    assert status["fired"] == 0
    assert qom_get(dev, "stat-faults") == 0


# -- Dead device ----------------------------------------------------------------------------

def test_a_dead_device_answers_nothing_until_cleared(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine, "latency-ns=2000000", zero_delay=False)
    msix(dev)
    dev.submit(FILL, [(DATA, 4096)], param=7)
    qom_set(dev, "fault-dead", True)
    assert [e["fault"] for e in fault_events(dev)] == ["dead"]
    assert dev.read("ID") == 0xFFFFFFFF and dev.read("STATUS") == 0xFFFFFFFF
    assert dev.pci.read32(0) == 0xFFFFFFFF, "config space still answers"
    dev.write("CTRL", HW["CTRL_RESET"])      # dropped
    dev.pci.write32(0x10, 0)                 # dropped
    step(dev, 10 * MS)
    assert dev.qt.memread(DATA, 4096) == bytes(4096), "a dead device did DMA"
    assert messages(dev) == (0, 0), "a dead device sent an interrupt"
    qom_set(dev, "fault-dead", False)
    assert dev.read("ID") == HW["ID_VALUE"]
    assert dev.pci.read32(0x10) == dev.bar0
    (done,) = dev.wait()
    assert done.status == OK and dev.qt.memread(DATA, 4096) == ref.fill_pattern(7, 0, 4096)
    assert messages(dev)[0] == 0xC0DE0000


def test_a_dead_device_holds_intx_low(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine)
    dev.qt.irq_intercept_in("ioapic")
    dev.submit(FILL, [(DATA, 4096)])
    dev.wait()
    (line,) = [n for what, n in dev.qt.take_irq_events() if what == "raise"]
    qom_set(dev, "fault-dead", True)
    assert ("lower", line) in dev.qt.take_irq_events()
    qom_set(dev, "fault-dead", False)
    assert ("raise", line) in dev.qt.take_irq_events(), "the latched cause was lost"
    assert dev.read("INT_STATUS") == COMPLETION


# -- Delayed interrupt ----------------------------------------------------------------------

def test_delayed_interrupt_comes_after_the_completion(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine, "fault-delayed-irq=1,fault-irq-delay-ns=5000000")
    msix(dev)
    dev.submit(FILL, [(DATA, 4096)])
    dev.submit(FILL, [(DATA + PAGE, 4096)])
    (first,) = dev.wait()
    assert dev.read("INT_STATUS") == 0 and messages(dev) == (0, 0)
    assert dev.read("STATUS") & BUSY, "the next descriptor went ahead of the interrupt"
    step(dev, 4 * MS)
    assert messages(dev) == (0, 0), "the interrupt came early"
    (second,) = dev.wait()
    assert messages(dev)[0] == 0xC0DE0000
    assert second.timestamp - first.timestamp >= 5 * MS
    (event,) = fault_events(dev)
    assert (event["fault"], event["sq-index"]) == ("delayed-irq", 0)


def test_delayed_interrupt_only_where_one_would_come(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine, "fault-rules=delayed-irq")
    dev.submit(FILL, [(DATA, 4096)], flags=0)
    dev.wait()
    (status,) = qom_get(dev, "fault-rule-status")
    assert status["matched"] == 0


# -- Interrupt storm ------------------------------------------------------------------------

def test_interrupt_storm_until_cleared(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine)
    msix(dev)
    qom_set(dev, "fault-irq-storm-ns", 10_000)
    step(dev, 100_000)
    sent = dev.read64("STAT_INTERRUPTS")
    assert 9 <= sent <= 11, sent
    assert dev.read("INT_STATUS") == COMPLETION and messages(dev)[0] == 0xC0DE0000
    dev.write("INT_ACK", COMPLETION)
    step(dev, 10_000)
    assert dev.read("INT_STATUS") == COMPLETION, "an acknowledge ended the storm"
    assert [e["fault"] for e in fault_events(dev)] == ["irq-storm"], "one event per storm"
    qom_set(dev, "fault-irq-storm-ns", 0)
    sent = dev.read64("STAT_INTERRUPTS")
    step(dev, 100_000)
    assert dev.read64("STAT_INTERRUPTS") == sent


def test_interrupt_storm_stops_with_the_device_disabled(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine, "fault-irq-storm-ns=10000")
    msix(dev)
    step(dev, 50_000)
    assert dev.read64("STAT_INTERRUPTS") >= 4
    dev.write("CTRL", HW["CTRL_RESET"])
    step(dev, 50_000)
    assert dev.read64("STAT_INTERRUPTS") == 0
    dev.setup(SQ, RING, CQ, RING, SG)
    step(dev, 50_000)
    assert dev.read64("STAT_INTERRUPTS") >= 4, "re-enabling did not restart it"


def test_interrupt_storm_gap_has_a_floor(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine)
    with pytest.raises(ExecuteError, match="out of range"):
        qom_set(dev, "fault-irq-storm-ns", 999)


# -- Out of order, wrong tag ----------------------------------------------------------------

def test_out_of_order_completion_comes_after_the_next(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine, "fault-rules=out-of-order:times=1")
    msix(dev)
    first = dev.post(dev.descriptor(FILL, dev.write_sg([(DATA, 4096)], SG), 1, 4096),
                     ring=False)
    second = dev.post(dev.descriptor(FILL, dev.write_sg([(DATA + PAGE, 4096)], SG + 64),
                                     1, 4096))
    records = dev.wait(2)
    assert [c.sq_index for c in records] == [second, first]
    assert [c.tag for c in records] == [dev.tag, dev.tag - 1]
    assert all(c.status == OK for c in records)
    (event,) = fault_events(dev)
    assert (event["fault"], event["sq-index"]) == ("out-of-order", first)


def test_out_of_order_needs_a_successor(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine, "fault-rules=out-of-order")
    dev.submit(FILL, [(DATA, 4096)])
    assert len(dev.wait()) == 1
    (status,) = qom_get(dev, "fault-rule-status")
    assert status["matched"] == 0


def test_wrong_tag_carries_the_previous_descriptors_tag(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine, "fault-rules=wrong-tag")
    dev.submit(FILL, [(DATA, 4096)], tag=0x100)
    (first,) = dev.wait()
    assert first.tag == 0x100, "the first descriptor since enable has no other tag to take"
    dev.submit(FILL, [(DATA, 4096)], tag=0x200)
    (second,) = dev.wait()
    assert (second.tag, second.sq_index) == (0x100, 1)
    (event,) = fault_events(dev)
    assert (event["fault"], event["tag"]) == ("wrong-tag", 0x200)


# -- Events and properties ------------------------------------------------------------------

def test_events_name_the_rule_or_the_property(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine,
                 "fault-dma-error=1,fault-rules=partial:times=1;dma-error:skip=1:times=1")
    stamps = []
    for _ in range(3):
        step(dev, 10_000)
        dev.submit(FILL, [(DATA, 8192)])
        stamps.append(dev.wait()[0].timestamp)
    events = fault_events(dev)
    assert [(e["fault"], e.get("rule"), e["sq-index"]) for e in events] == [
        ("dma-error", None, 0), ("dma-error", 1, 1), ("partial", 0, 2)]
    # Zero-delay: taken and completed at the same virtual time.
    assert [e["virtual-time-ns"] for e in events] == stamps


def test_mode_properties_refuse_bad_values(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine)
    with pytest.raises(ExecuteError, match="none, soft, flr or both"):
        qom_set(dev, "fault-ignore-reset", "sometimes")
    with pytest.raises(ExecuteError, match="out of range"):
        qom_set(dev, "fault-late-write-delay-ns", 60_000_000_001)
    assert qom_get(dev, "fault-ignore-reset") == "none"
    props = {p["name"] for p in dev.qt.qmp.cmd("qom-list-properties", typename="dmagate")}
    for name in ("late-write", "stray-write", "delayed-irq", "out-of-order", "wrong-tag"):
        assert f"fault-{name}" in props
    assert {"fault-ignore-reset", "fault-dead", "fault-irq-storm-ns",
            "fault-late-write-delay-ns", "fault-irq-delay-ns"} <= props


# -- Migration ------------------------------------------------------------------------------

def test_late_write_migrates(make_machine: Callable[..., QTestMachine], tmp_path: Path) -> None:
    src = device(make_machine, "fault-late-write=1,fault-late-write-delay-ns=3000000")
    src.submit(FILL, [(DATA, 4096)], param=4)
    src.wait()
    src.qt.memset(DATA, 4096, 0)
    state = tmp_path / "state"
    save_state(src.qt, state)
    dst_qt, status = load_state(make_machine, state, device="zero-delay=on")
    assert status == "completed"
    dst = Dmagate(dst_qt, SLOT, configure=False)
    dst.follow(src)
    assert qom_get(dst, "fault-late-write-delay-ns") == 3_000_000
    assert dst.read("STATUS") == ENABLED | BUSY
    step(dst, 4 * MS)
    assert dst.qt.memread(DATA, 4096) == ref.fill_pattern(4, 0, 4096)
    assert dst.read("STATUS") == ENABLED


def test_held_completion_migrates(make_machine: Callable[..., QTestMachine],
                                  tmp_path: Path) -> None:
    src = device(make_machine, "fault-out-of-order=1,latency-ns=5000000", zero_delay=False)
    src.submit(FILL, [(DATA, 4096)])
    src.submit(FILL, [(DATA + PAGE, 4096)])
    src.qt.clock_step(6 * MS)
    assert src.read("CQ_TAIL") == 0 and src.read("STATUS") & BUSY, "first record not held"
    state = tmp_path / "state"
    save_state(src.qt, state)
    assert MigrationStream.read(state).section("dmagate").read("held") == 1
    dst_qt, status = load_state(make_machine, state, device="latency-ns=5000000")
    assert status == "completed"
    dst = Dmagate(dst_qt, SLOT, configure=False)
    dst.follow(src)
    assert [c.sq_index for c in dst.wait(2)] == [1, 0]


@pytest.mark.parametrize(("field", "value"), [
    ("held", 3), ("held_causes", 4), ("ignore_reset", 4), ("storm_ns", 500),
])
def test_corrupt_rogue_state_is_refused(
    make_machine: Callable[..., QTestMachine], tmp_path: Path, field: str, value: int,
) -> None:
    src = device(make_machine)
    state = tmp_path / "state"
    save_state(src.qt, state)
    stream = MigrationStream.read(state)
    stream.section("dmagate").write(field, value)
    stream.save(state)
    target, status = load_state(make_machine, state, device="zero-delay=on")
    assert status == "failed"
    assert "migration stream refused" in target.stderr()
