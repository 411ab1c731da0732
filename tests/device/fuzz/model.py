"""The checked phase's model: a descriptor's plan (segments, guard spans),
the fault knobs as the device should count them, and what the device must
report and leave in memory (datasheet §4-§8)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from dmagate import reference as ref

from .layout import (
    ALWAYS,
    CHECKSUM,
    DESC_F_INTERRUPT,
    DMA_ERROR,
    FILL,
    INT_COMPLETION,
    INT_ERROR,
    OK,
    OP_NAMES,
    RAM_END,
    SHORT,
    TRANSFORM,
    crc32,
    half,
)


class Kind(Enum):
    RAM = "ram"
    UNMAPPED = "unmapped"
    BAR = "own BAR"
    STRADDLE = "off the end of RAM"


@dataclass(frozen=True)
class Segment:
    addr: int
    length: int
    kind: Kind

    @property
    def ram_length(self) -> int:
        """The segment's bytes that are RAM, from its start."""
        if self.kind is Kind.RAM:
            return self.length
        if self.kind is Kind.STRADDLE:
            return RAM_END - self.addr
        return 0


@dataclass(frozen=True)
class Span:
    """Guest memory around segments: guards and segments, random before,
    read back after."""

    addr: int
    initial: bytes

    @property
    def end(self) -> int:
        return self.addr + len(self.initial)


@dataclass
class Plan:
    """One checked descriptor: what is written, and what the model says
    comes back."""

    index: int
    op: int
    flags: int
    tag: int
    param: int
    length: int
    segments: list[Segment]
    spans: list[Span]
    sg_at: int  # where the entries are written
    sg_addr: int  # what the descriptor says
    sg_count: int
    sg_raw: bytes
    reserved: int = 0
    broken: int | None = None  # the BAD_* status a deliberately broken descriptor gets
    broken_how: str = ""
    # the prediction
    status: int = OK
    done_min: int = 0
    done_max: int = 0
    corrupt: bool = False
    drop: bool = False
    duplicate: bool = False
    causes: int = 0
    faults: int = 0  # faults fired on it
    done: int = 0  # bytes_done as reported

    def raw(self) -> bytes:
        return struct.pack("<BBHIQIIQ", self.op, self.flags, self.reserved, self.tag,
                           self.sg_addr, self.sg_count, self.length, self.param)

    def describe(self) -> str:
        kinds = ",".join(f"{s.kind.value}:{s.length}" for s in self.segments[:6])
        more = f"+{len(self.segments) - 6} more" if len(self.segments) > 6 else ""
        broken = f" broken({self.broken_how})" if self.broken is not None else ""
        faults = "".join(c for c, on in (("C", self.corrupt), ("D", self.drop),
                                         ("2", self.duplicate)) if on)
        return (f"sq[{self.index}] {OP_NAMES.get(self.op, self.op)} tag={self.tag:#x} "
                f"len={self.length} flags={self.flags:#x} segs=[{kinds}{more}]{broken}"
                f"{' faults ' + faults if faults else ''}")


FAULT_KNOBS = ("fault-dma-error", "fault-partial", "fault-corrupt", "fault-drop-irq",
               "fault-duplicate-completion")


class FaultModel:
    """The fault counts as the device should hold them (datasheet §8, v1.1 item 14)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = dict(counts)
        self.fired = 0

    def armed(self, name: str) -> bool:
        return self.counts.get(name, 0) > 0

    def fire(self, name: str) -> bool:
        if not self.counts.get(name, 0):
            return False
        if self.counts[name] != ALWAYS:
            self.counts[name] -= 1
        self.fired += 1
        return True


class Model:
    """Predicts each descriptor's completion, in the order the device takes them."""

    def __init__(self, faults: FaultModel) -> None:
        self.faults = faults

    def predict(self, plan: Plan) -> None:
        fired_before = self.faults.fired
        if plan.broken is not None:
            # Status 1-4: no memory touched, no fault fires (v1.1 item 14).
            plan.status, plan.done_min, plan.done_max = plan.broken, 0, 0
        else:
            self._valid(plan)
        plan.causes = (INT_ERROR if plan.status != OK else 0) | \
            (INT_COMPLETION if plan.flags & DESC_F_INTERRUPT else 0)
        if plan.broken is None:
            plan.drop = bool(plan.causes) and self.faults.fire("fault-drop-irq")
        plan.faults = self.faults.fired - fired_before

    def _valid(self, plan: Plan) -> None:
        limit, status = plan.length, OK
        if self.faults.fire("fault-dma-error"):
            limit, status = half(plan.length), DMA_ERROR
        elif self.faults.fire("fault-partial"):
            limit, status = half(plan.length), SHORT
        plan.corrupt = plan.op != CHECKSUM and self.faults.fire("fault-corrupt")
        plan.duplicate = self.faults.fire("fault-duplicate-completion")
        done_min = done_max = limit
        offset = 0
        for seg in plan.segments:
            if offset >= limit:
                break
            if seg.kind is not Kind.RAM and offset + seg.ram_length < limit:
                # DMA goes in pieces, one memory region each; the one with
                # nothing there fails before it is touched (datasheet 1.1 §5,
                # v1.1 item 4): a segment off the end of RAM stops right there.
                status = DMA_ERROR
                done_min = done_max = offset + seg.ram_length
                break
            offset += seg.length
        plan.status, plan.done_min, plan.done_max = status, done_min, done_max


@dataclass(frozen=True)
class Outcome:
    crc: int
    memory: list[tuple[int, bytes]]  # (address, expected content) for each span


def expected_outcome(plan: Plan, done: int) -> Outcome:
    """CRC and memory after ``done`` bytes were processed (datasheet §4, §8)."""
    spans = [bytearray(s.initial) for s in plan.spans]
    correct: list[bytes] = []
    offset = 0
    for seg in plan.segments:
        n = min(seg.ram_length, done - offset)
        if n <= 0:
            break
        index, at = _locate(plan.spans, seg.addr)
        old = bytes(spans[index][at:at + n])
        if plan.op == FILL:
            new = ref.fill_pattern(plan.param, offset, n)
        elif plan.op == TRANSFORM:
            new = ref.transform(old, plan.param, offset)
        else:
            new = old
        correct.append(new)
        if plan.op != CHECKSUM:
            written = bytearray(new)
            if plan.corrupt:  # byte 0 of every 4 KiB of the transfer
                for pos in range(-offset % 4096, n, 4096):
                    written[pos] ^= 0xFF
            spans[index][at:at + n] = written
        offset += seg.length
    return Outcome(crc32(b"".join(correct)),
                   [(s.addr, bytes(b)) for s, b in zip(plan.spans, spans, strict=True)])


def _locate(spans: Sequence[Span], addr: int) -> tuple[int, int]:
    for index, span in enumerate(spans):
        if span.addr <= addr < span.end:
            return index, addr - span.addr
    raise LookupError(f"no span holds {addr:#x}")


def explain_difference(plan: Plan, span_addr: int, got: bytes, want: bytes, done: int) -> str:
    """Where the first wrong byte is: segment and transfer offset, or a guard."""
    first = next(i for i in range(len(got)) if got[i] != want[i])
    wrong = sum(a != b for a, b in zip(got, want, strict=True))
    addr = span_addr + first
    offset = 0
    where = "a guard byte (before, between or after the segments)"
    for number, seg in enumerate(plan.segments):
        if seg.addr <= addr < seg.addr + seg.ram_length:
            at = offset + addr - seg.addr
            where = (f"segment {number} ({seg.kind.value}), transfer offset {at}, "
                     f"{'before' if at < done else 'at or past'} bytes_done={done}")
            break
        offset += seg.length
    return (f"{wrong} wrong bytes; the first at {addr:#x}, {where}: "
            f"{got[first]:#04x}, expected {want[first]:#04x}")
