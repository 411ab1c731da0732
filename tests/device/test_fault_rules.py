"""Fault rules (datasheet §8): filters, skip, every Nth, probability from a
recorded seed that replays, times; on -device and at runtime; their counts
in fault-rule-status; kept across migration, refused when corrupt."""

from __future__ import annotations

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

from .conftest import CQ, DATA, RING, SG, SLOT, SQ, load_state, save_state

FILL, CHECKSUM, TRANSFORM = HW["OP_FILL"], HW["OP_CHECKSUM"], HW["OP_TRANSFORM"]
PATH = "/machine/peripheral/dg"
OK, DMA_ERROR, SHORT = HW["ST_OK"], HW["ST_DMA_ERROR"], HW["ST_SHORT"]


def qom_set(dev: Dmagate, prop: str, value: Any) -> None:
    dev.qt.qmp.cmd("qom-set", path=PATH, property=prop, value=value)


def qom_get(dev: Dmagate, prop: str) -> Any:
    return dev.qt.qmp.cmd("qom-get", path=PATH, property=prop)


def device(make_machine: Callable[..., QTestMachine], options: str = "") -> Dmagate:
    dev = Dmagate(make_machine(",".join(filter(None, ("zero-delay=on", options)))), SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    return dev


def run(dev: Dmagate, op: int = FILL, length: int = 8192, param: int = 1) -> int:
    dev.submit(op, [(DATA, length)], param=param)
    return dev.wait()[0].status


def corrupted(dev: Dmagate, count: int) -> list[bool]:
    """Run ``count`` FILLs; which of them came back with wrong data."""
    hits = []
    for i in range(count):
        dev.submit(FILL, [(DATA, 4096)], param=i)
        (done,) = dev.wait()
        assert done.status == OK
        hits.append(dev.qt.memread(DATA, 4096) != ref.fill_pattern(i, 0, 4096))
    return hits


def test_every_nth_matching_descriptor(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine)
    qom_set(dev, "fault-rules", "dma-error:op=fill:every=3")
    got = []
    for _ in range(9):
        got.append(run(dev, FILL))
        assert run(dev, CHECKSUM) == OK, "the op filter let a CHECKSUM match"
    assert got == [OK, OK, DMA_ERROR] * 3
    (status,) = qom_get(dev, "fault-rule-status")
    assert (status["fault"], status["matched"], status["fired"]) == ("dma-error", 9, 3)
    assert qom_get(dev, "stat-faults") == 3


def test_skip_then_times(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine, "fault-rules=partial:skip=2:times=2")
    assert [run(dev) for _ in range(6)] == [OK, OK, SHORT, SHORT, OK, OK]
    (status,) = qom_get(dev, "fault-rule-status")
    assert (status["matched"], status["fired"]) == (6, 2)


def test_length_and_index_filters(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine, "fault-rules=dma-error:length=8192;partial:sq-index=5")
    statuses = [run(dev, FILL, length) for length in (4096, 8192, 12288, 8192, 4096, 4096)]
    assert statuses == [OK, DMA_ERROR, OK, DMA_ERROR, OK, SHORT]


def test_probability_replays_from_its_seed(make_machine: Callable[..., QTestMachine]) -> None:
    first = device(make_machine, "fault-rules=corrupt:probability=0.5:seed=42")
    pattern = corrupted(first, 40)
    assert 0 < sum(pattern) < 40
    again = device(make_machine, "fault-rules=corrupt:probability=0.5:seed=42")
    assert corrupted(again, 40) == pattern
    other = device(make_machine, "fault-rules=corrupt:probability=0.5:seed=43")
    assert corrupted(other, 40) != pattern


def test_an_unseeded_rule_records_the_seed_it_drew(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine)
    qom_set(dev, "fault-rules", "corrupt:probability=0.3")
    recorded = qom_get(dev, "fault-rules")
    assert ":seed=" in recorded
    pattern = corrupted(dev, 30)
    replay = device(make_machine)
    qom_set(replay, "fault-rules", recorded)
    assert corrupted(replay, 30) == pattern


def test_rules_and_count_properties_work_together(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine, "fault-dma-error=1,fault-rules=dma-error:skip=2:times=1")
    assert [run(dev) for _ in range(4)] == [DMA_ERROR, OK, DMA_ERROR, OK]
    assert qom_get(dev, "fault-dma-error") == 0
    qom_set(dev, "fault-rules", "")
    assert qom_get(dev, "fault-rule-status") == []
    assert run(dev) == OK


def test_no_rule_fires_where_the_fault_has_no_effect(
    make_machine: Callable[..., QTestMachine],
) -> None:
    dev = device(make_machine, "fault-rules=corrupt;drop-irq")
    assert run(dev, CHECKSUM) == OK
    dev.submit(TRANSFORM, [(DATA, 4096)], flags=0)
    dev.wait()
    statuses = {s["fault"]: s for s in qom_get(dev, "fault-rule-status")}
    assert statuses["corrupt"]["matched"] == 1, "CHECKSUM counted for corrupt"
    assert statuses["drop-irq"]["matched"] == 1, "a completion without interrupt counted"


@pytest.mark.parametrize(("text", "message"), [
    ("nope", "is not a fault"),
    ("spurious-irq", "is not a fault"),
    ("stall:every=0", "at least 1"),
    ("stall:foo=1", "unknown parameter 'foo'"),
    ("stall:skip", "needs a value"),
    ("stall:op=", "'op' needs a value"),        # found by the fuzz: taken as "any op"
    ("stall:length=", "'length' needs a value"),
    ("late-write:op=checksum:every=0", "at least 1"),
    ("ignore-reset", "is not a fault"),
    ("dead:times=1", "is not a fault"),
    ("partial:probability=2", "from 0 to 1"),
    ("stall:every=2:probability=0.5", "do not go together"),
    ("stall:length=9-3", "is empty"),
    ("stall:sq-index=4294967296", "out of range"),
    ("stall:op=read", "'read' is not fill"),
    (";".join(["stall"] * 17), "at most 16 rules"),
])
def test_a_bad_rule_is_refused_and_the_old_set_stays(
    make_machine: Callable[..., QTestMachine], text: str, message: str
) -> None:
    dev = device(make_machine, "fault-rules=partial:every=2")
    with pytest.raises(ExecuteError, match=message):
        qom_set(dev, "fault-rules", text)
    assert qom_get(dev, "fault-rules") == "partial:skip=0:every=2"


def test_rule_state_migrates(make_machine: Callable[..., QTestMachine], tmp_path: Path) -> None:
    rule = "corrupt:probability=0.5:seed=7"
    whole = corrupted(device(make_machine, f"fault-rules={rule}"), 24)
    source = device(make_machine, f"fault-rules={rule}")
    head = corrupted(source, 12)
    state = tmp_path / "state"
    save_state(source.qt, state)
    target, status = load_state(make_machine, state, device=f"zero-delay=on,fault-rules={rule}")
    assert status == "completed"
    moved = Dmagate(target, SLOT, configure=False)
    moved.follow(source)
    assert head + corrupted(moved, 12) == whole
    assert qom_get(moved, "fault-rule-status")[0]["matched"] == 24


@pytest.mark.parametrize(("field", "value"), [
    ("rules.count", 17),
    ("fault", 2),  # spurious-irq has no rules
    ("every", 0),
    ("ops", 0x80),
])
def test_a_corrupted_rule_in_a_stream_is_refused(
    make_machine: Callable[..., QTestMachine], tmp_path: Path, field: str, value: int
) -> None:
    source = device(make_machine, "fault-rules=partial:every=2")
    state = tmp_path / "state"
    save_state(source.qt, state)
    stream = MigrationStream.read(state)
    section = stream.section("dmagate")
    section.write(field if field == "rules.count" else f"rules.rule[0].{field}", value)
    stream.save(state)
    target, status = load_state(make_machine, state, device="zero-delay=on")
    assert status == "failed"
    assert target.alive()
    assert "dmagate" in target.stderr()
