"""The DMA access log (datasheet §8, "DMA access log"): every bus access the
device makes, by bus address (an IOVA behind intel-iommu), with its kind,
direction, length, outcome, SQ index and device time; bounded, with the
overwritten count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dmagate.devdriver import Dmagate
from dmagate.hwregs import HW
from dmagate.qtest import QTestMachine

from .conftest import CQ, DATA, MSG, RING, SG, SLOT, SQ
from .test_iommu import IOVA_DATA, PAGE, PTE_R, PTE_W, enable_translation, translating_machine

PATH = "/machine/peripheral/dg"
FILL, CHECKSUM, TRANSFORM = HW["OP_FILL"], HW["OP_CHECKSUM"], HW["OP_TRANSFORM"]
ENTRIES = 8192


def dma_log(dev: Dmagate) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = dev.qt.qmp.cmd("qom-get", path=PATH, property="dma-log")
    return log


def device(make_machine: Callable[..., QTestMachine], options: str = "zero-delay=on",
           ) -> Dmagate:
    dev = Dmagate(make_machine(options), SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    return dev


def covered(entries: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """The address ranges the entries cover, merged where they touch."""
    spans: list[tuple[int, int]] = []
    for start, end in sorted((e["addr"], e["addr"] + e["len"]) for e in entries):
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def test_one_fill_logs_every_access_it_made(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine)
    dev.qt.memset(MSG, 8, 0)
    dev.enable_msix(MSG, [1, 2])
    segments = [(DATA, 3 * PAGE), (DATA + 8 * PAGE, 5000)]
    index = dev.submit(FILL, segments)
    (done,) = dev.wait()
    log = dma_log(dev)
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    times = [e["time-ns"] for e in log]
    assert times == sorted(times)
    kinds = [e["kind"] for e in log]
    assert kinds[0] == "descriptor" and kinds[1:3] == ["sg-list", "sg-list"]
    assert kinds[-2:] == ["completion", "interrupt"]
    desc, sg0, sg1 = log[:3]
    assert (desc["addr"], desc["len"], desc["dir"], desc["sq-index"]) == (
        SQ + index * HW["DESC_SIZE"], HW["DESC_SIZE"], "read", index)
    assert (sg0["addr"], sg1["addr"], sg0["len"]) == (SG, SG + HW["SG_SIZE"], HW["SG_SIZE"])
    data = [e for e in log if e["kind"] == "data"]
    assert {(e["dir"], e["ok"], e["sq-index"]) for e in data} == {("write", True, index)}
    assert covered(data) == [(a, a + n) for a, n in segments]
    cpl, irq = log[-2:]
    assert (cpl["addr"], cpl["len"], cpl["dir"], cpl["sq-index"]) == (
        CQ, HW["CPL_SIZE"], "write", index)
    assert cpl["time-ns"] == done.timestamp
    assert (irq["addr"], irq["dir"]) == (MSG, "write") and "sq-index" not in irq


def test_direction_follows_the_operation(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine)
    for op, want in ((CHECKSUM, "read"), (TRANSFORM, "read-write"), (FILL, "write")):
        dev.submit(op, [(DATA, PAGE)])
        dev.wait()
        data = [e for e in dma_log(dev) if e["kind"] == "data"]
        assert data[-1]["dir"] == want


def test_refused_access_is_logged_as_not_ok(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine)
    nowhere = 0x40_0000_0000                 # no RAM, no device
    dev.submit(FILL, [(nowhere, PAGE)])
    assert dev.wait()[0].status == HW["ST_DMA_ERROR"]
    (attempt,) = [e for e in dma_log(dev) if e["kind"] == "data"]
    assert (attempt["addr"], attempt["ok"]) == (nowhere, False)


def test_rogue_writes_show_where_they_went(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine, "zero-delay=on,fault-stray-write=1,fault-late-write=1,"
                               "fault-late-write-delay-ns=1000000")
    dev.submit(FILL, [(DATA, 6000)])
    (done,) = dev.wait()
    dev.qt.clock_step(2_000_000)
    log = dma_log(dev)
    writes = [e for e in log if e["kind"] == "data"]
    stray = [e for e in writes if e["addr"] == DATA + 2 * PAGE]
    assert [(e["len"], e["ok"]) for e in stray] == [(64, True)]
    late = [e for e in writes if e["time-ns"] > done.timestamp]
    assert covered(late) == [(DATA, DATA + 6000)], "the late write, after the completion"


def test_the_ring_keeps_the_last_entries(make_machine: Callable[..., QTestMachine]) -> None:
    dev = device(make_machine)
    # Each FILL of one 4 KiB segment: descriptor, SG entry, data, completion (4 accesses).
    for _ in range(ENTRIES // 4 + 10):
        dev.submit(FILL, [(DATA, PAGE)], flags=0)
        dev.wait()
    log = dma_log(dev)
    lost = dev.qt.qmp.cmd("qom-get", path=PATH, property="dma-log-lost")
    assert len(log) == ENTRIES
    assert lost == log[0]["seq"] - 1 > 0
    assert [e["seq"] for e in log] == list(range(lost + 1, lost + ENTRIES + 1))


def test_bus_addresses_are_logged_before_the_iommu(
    make_machine: Callable[..., QTestMachine],
) -> None:
    qt, slpt, aw = translating_machine(make_machine)
    for n in range(2):
        slpt.map(IOVA_DATA + n * PAGE, DATA + n * PAGE, PTE_R | PTE_W)
    dev = Dmagate(qt, SLOT)
    enable_translation(qt, slpt, SLOT << 3, aw)
    dev.setup(SQ, RING, CQ, RING, SG)
    dev.submit(FILL, [(IOVA_DATA, 2 * PAGE)])
    assert dev.wait()[0].status == HW["ST_OK"]
    data = [e for e in dma_log(dev) if e["kind"] == "data"]
    assert covered(data) == [(IOVA_DATA, IOVA_DATA + 2 * PAGE)]
