"""The ownership check's logic (dmagate.ownership) on hand-made records; the
VM suite runs it for real after every test."""

from __future__ import annotations

import random

from dmagate.ownership import (
    TIME_UNKNOWN,
    DmaAccess,
    OwnershipLedger,
    TraceEvent,
    Window,
    WindowIndex,
    parse_trace,
)

DEV = "0000:00:02.0"
BUF = 0x100000  # bus address of session 1's one 64 KiB chunk
CQ = 0x200000

TRACE = """\
 dmagatectl-91 [001] ..... 12.5: dmagate_dma_map: epoch=0000abcd seq=1 dev=0000:00:02.0 \
what=cq sess=0 xfer=0 offset=0x0 bus=0x200000 len=0x800 time=100
 dmagatectl-91 [001] ..... 12.6: dmagate_dma_map: epoch=0000abcd seq=2 dev=0000:00:02.0 \
what=buffer sess=1 xfer=0 offset=0x0 bus=0x100000 len=0x10000 time=200
 dmagatectl-91 [000] ..... 12.7: dmagate_owner: epoch=0000abcd seq=3 dev=0000:00:02.0 \
sess=1 xfer=1 offset=0x0 len=0x2000 to=device time=300
 irq/30-dmagate-88 [000] ..... 12.8: dmagate_owner: epoch=0000abcd seq=4 dev=0000:00:02.0 \
sess=1 xfer=1 offset=0x0 len=0x2000 to=program time=400
"""


def access(addr: int, time: int, kind: str = "data", length: int = 4096,
           ok: bool = True) -> DmaAccess:
    return DmaAccess(seq=1, kind=kind, dir="write", addr=addr, length=length, ok=ok,
                     time=time, sq_index=0)


def ledger(text: str = TRACE) -> OwnershipLedger:
    book = OwnershipLedger()
    book.feed(parse_trace(text))
    return book


def reasons(book: OwnershipLedger, *accesses: DmaAccess) -> list[str]:
    return [v.reason for v in book.check(DEV, accesses)]


def test_parse_reads_every_field() -> None:
    events = parse_trace(TRACE)
    assert [e.name for e in events] == ["map", "map", "owner", "owner"]
    owner = events[2]
    assert (owner.sess, owner.xfer, owner.offset, owner.length, owner.to_device,
            owner.time) == (1, 1, 0, 0x2000, True, 300)
    assert (events[1].what, events[1].bus, events[1].length) == ("buffer", BUF, 0x10000)


def test_data_inside_its_window_is_fine() -> None:
    assert reasons(ledger(), access(BUF, 350), access(BUF + 0x1000, 400)) == []


def test_data_after_the_window_closed_names_the_window() -> None:
    [reason] = reasons(ledger(), access(BUF, 401))
    assert "page at offset 0x0 belongs to the program" in reason
    assert "transfer 1 owned it from 300 ns to 400 ns" in reason


def test_data_before_the_window_opened() -> None:
    [reason] = reasons(ledger(), access(BUF, 250))
    assert "belongs to the program" in reason and "never owned" in reason


def test_a_page_outside_the_transfer_is_the_program_s() -> None:
    # The window is 8 KiB: a stray write at 8 KiB is not in it.
    [reason] = reasons(ledger(), access(BUF + 0x2000, 350, length=64))
    assert "offset 0x2000 belongs to the program" in reason


def test_refused_accesses_and_interrupts_are_not_judged() -> None:
    assert reasons(ledger(), access(BUF, 999, ok=False), access(0xfee00000, 999,
                                                                 kind="interrupt")) == []


def test_rings_take_their_own_kind_only() -> None:
    book = ledger()
    assert reasons(book, access(CQ, 150, kind="completion", length=32)) == []
    [reason] = reasons(book, access(CQ, 150, kind="data", length=32))
    assert "the completion ring" in reason and "not memory for this access" in reason


def test_memory_taken_back_is_named() -> None:
    freed = TRACE + (" x-1 [000] ..... 13.0: dmagate_dma_unmap: epoch=0000abcd seq=5 "
                     "dev=0000:00:02.0 what=cq sess=0 xfer=0 offset=0x0 bus=0x200000 "
                     "len=0x800 time=500\n")
    [reason] = reasons(ledger(freed), access(CQ, 600, kind="completion", length=32))
    assert "the completion ring (bus 0x200000+0x800) was taken back at device time 500" \
        in reason


def test_memory_never_given_once_the_rings_are_known() -> None:
    [reason] = reasons(ledger(), access(0x900000, 350))
    assert reason == "memory the driver never gave the device"


def test_a_close_the_device_could_not_stamp_waits_for_the_next_time() -> None:
    book = OwnershipLedger()
    events = parse_trace(TRACE)
    # The give-back read all ones (the device off the bus); the next event
    # the driver stamps fixes it.
    events[3] = TraceEvent(**{**events[3].__dict__, "time": TIME_UNKNOWN})
    book.feed(events)
    assert reasons(book, access(BUF, 10_000)) == []
    book.feed([TraceEvent("owner", "0000abcd", 6, DEV, 20_000, sess=2, xfer=1,
                          to_device=True)])
    [reason] = reasons(book, access(BUF, 20_001))
    assert "transfer 1 owned it from 300 ns to 20000 ns" in reason


def test_a_module_reload_leaves_a_gap_that_is_not_judged() -> None:
    book = ledger()
    reloaded = TraceEvent("map", "00001234", 1, DEV, 5_000, what="cq", bus=0x300000,
                          length=0x800)
    book.feed([reloaded])
    # Between the old record's last event (400) and the new one's first
    # (5000) nothing is known; after it the old buffer is gone.
    assert reasons(book, access(BUF, 1_000)) == []
    assert book.unjudged == 1
    [reason] = reasons(book, access(BUF, 6_000))
    assert "was taken back at device time 400" in reason


def test_accesses_before_the_record_began_are_not_judged() -> None:
    book = ledger()
    assert reasons(book, access(0x900000, 50)) == []
    assert book.unjudged == 1


def test_the_window_index_answers_as_going_through_every_window() -> None:
    rng = random.Random(7)
    for _ in range(200):
        windows = []
        for _ in range(rng.randrange(1, 30)):
            start = rng.choice([rng.randrange(1000), TIME_UNKNOWN])
            end = rng.choice([None, start + rng.randrange(200)])
            windows.append(Window(1, rng.randrange(9), rng.randrange(8) * 4096,
                                  rng.randrange(1, 4) * 4096, start, end))
        index = WindowIndex.of(windows)
        for _ in range(50):
            offset, time = rng.randrange(12) * 4096, rng.randrange(1300)
            assert index.covers(offset, time) == any(w.covers(offset, time) for w in windows)
