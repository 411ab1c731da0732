"""The checked phase's descriptors: random ops, lengths, segments and
alignments with guard bytes, some deliberately broken, some with a segment
where DMA fails."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from .layout import (
    BAD_DESCRIPTOR,
    BAD_LENGTH,
    BAD_OPCODE,
    BAD_SG,
    BAR0,
    BAR2,
    CHECKSUM,
    DATA_AREA,
    DESC_F_INTERRUPT,
    MAX_SEGMENTS,
    MAX_XFER,
    OPS,
    RAM_END,
    SG_AREA,
    SG_LIST_BYTES,
    U64_MAX,
    unmapped,
)
from .model import FaultModel, Kind, Plan, Segment, Span


class PlanGenerator:
    """Descriptors with random ops, lengths, segment counts, sizes and
    alignments, guard bytes around every segment; some deliberately broken,
    some with a segment at nothing, at the device's BARs or off the end of RAM."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.cursor = DATA_AREA
        self.straddle_used = False
        self.breakers: dict[str, Callable[[Plan], int]] = {
            "opcode": self._bad_opcode, "flags": self._bad_flags,
            "reserved": self._bad_reserved, "length 0": self._bad_length0,
            "length > MAX_XFER": self._bad_length_max, "sg_count 0": self._bad_count0,
            "sg_count > MAX_SEGMENTS": self._bad_count_max, "list misaligned": self._bad_align,
            "list wraps": self._bad_wrap, "segments short of length": self._bad_short,
            "entry length 0": self._bad_entry_len0, "entry reserved": self._bad_entry_reserved,
            "entry wraps": self._bad_entry_wraps, "entry > MAX_XFER": self._bad_entry_long,
        }

    def new_batch(self) -> None:
        self.cursor = DATA_AREA
        self.straddle_used = False

    def lengths(self, count: int, large: bool) -> list[int]:
        rng = self.rng
        if large:
            lengths = [rng.randint(1 << 18, 1 << 20) for _ in range(rng.randint(1, 4))]
        elif count > 64:
            lengths = [rng.randint(1, 32) for _ in range(count)]
        elif count > 8:
            lengths = [int(2 ** rng.uniform(0, 12)) for _ in range(count)]  # 1 B .. 4 KiB
        else:
            lengths = [int(2 ** rng.uniform(0, 16)) for _ in range(count)]  # 1 B .. 64 KiB
        while sum(lengths) > (4 << 20 if large else 256 << 10):
            lengths = [max(1, n // 2) for n in lengths]
        return lengths

    def plan(self, index: int, slot: int, faults: FaultModel, large: bool = False) -> Plan:
        rng = self.rng
        op = rng.choice(OPS)
        count = rng.choice((1, 1, 1, 1, 2, 3, 4, 5, 8, 16, 37, 64))
        if rng.random() < 0.02:
            count = MAX_SEGMENTS
        lengths = self.lengths(count, large)
        kinds = [Kind.RAM] * len(lengths)
        # Faults that change limit or data make a DMA failure's effect ambiguous.
        may_fail = not (faults.armed("fault-dma-error") or faults.armed("fault-partial") or
                        (op != CHECKSUM and faults.armed("fault-corrupt")))
        if may_fail and rng.random() < 0.18:
            for _ in range(rng.choice((1, 1, 2))):
                choices = [Kind.UNMAPPED, Kind.UNMAPPED, Kind.BAR]
                if not self.straddle_used:  # one per batch: they share the end of RAM
                    choices.append(Kind.STRADDLE)
                kinds[rng.randrange(len(kinds))] = rng.choice(choices)
                self.straddle_used |= Kind.STRADDLE in kinds
        segments, spans = self.place(lengths, kinds)
        total = sum(lengths)
        length = total if rng.random() < 0.7 else rng.randint(1, total)
        if faults.armed("fault-corrupt") and length < 2 <= total:
            length = 2  # corrupt has an effect only if something is moved
        sg_at = SG_AREA + slot * SG_LIST_BYTES
        plan = Plan(index, op, rng.choice((DESC_F_INTERRUPT, DESC_F_INTERRUPT, 0)),
                    rng.getrandbits(32), 0 if op == CHECKSUM else rng.getrandbits(64), length,
                    segments, spans, sg_at, sg_at, len(segments),
                    b"".join(struct.pack("<QII", s.addr, s.length, 0) for s in segments))
        if rng.random() < 0.08:
            plan.broken_how = rng.choice(list(self.breakers))
            plan.broken = self.breakers[plan.broken_how](plan)
        return plan

    def place(self, lengths: list[int], kinds: list[Kind]) -> tuple[list[Segment], list[Span]]:
        """RAM segments in one span, in shuffled order, each at a random
        alignment with guard bytes either side; the others where they fail."""
        rng = self.rng
        order = list(range(len(lengths)))
        rng.shuffle(order)
        addrs: dict[int, int] = {}
        start = self.cursor + rng.randrange(64)
        at = start + rng.randint(8, 64)
        for i in order:
            if kinds[i] is Kind.RAM:
                at += rng.choice((0, 1, 3, 8, 15, rng.randrange(64)))
                addrs[i] = at
                at += lengths[i] + rng.randint(1, 48)
        end = at + rng.randint(8, 64)
        spans = [Span(start, rng.randbytes(end - start))]
        self.cursor = (end + 0xFFF) & ~0xFFF
        segments = []
        for i, (n, kind) in enumerate(zip(lengths, kinds, strict=True)):
            if kind is Kind.STRADDLE and n > 1:
                ram = rng.randint(1, min(n - 1, 0xFFFF))
                spans.append(Span(RAM_END - ram - 64, rng.randbytes(64 + ram)))
                segments.append(Segment(RAM_END - ram, n, kind))
            elif kind is Kind.BAR:
                addr = rng.choice((BAR0, BAR2)) + rng.randrange(4096 - min(n, 4095))
                segments.append(Segment(addr, n, kind))
            elif kind is not Kind.RAM:
                segments.append(Segment(unmapped(rng, n), n, Kind.UNMAPPED))
            else:
                segments.append(Segment(addrs[i], n, kind))
        return segments, spans

    # One defect each, so that the status is the one for it (datasheet §5).

    def _bad_opcode(self, plan: Plan) -> int:
        plan.op = self.rng.choice((0, 4, 5, 0x80, 0xFF))
        return BAD_OPCODE

    def _bad_flags(self, plan: Plan) -> int:
        plan.flags |= 1 << self.rng.randrange(1, 8)
        return BAD_DESCRIPTOR

    def _bad_reserved(self, plan: Plan) -> int:
        plan.reserved = self.rng.randrange(1, 1 << 16)
        return BAD_DESCRIPTOR

    def _bad_length0(self, plan: Plan) -> int:
        plan.length = 0
        return BAD_LENGTH

    def _bad_length_max(self, plan: Plan) -> int:
        plan.length = self.rng.randrange(MAX_XFER + 1, 1 << 32)
        return BAD_LENGTH

    def _bad_count0(self, plan: Plan) -> int:
        plan.sg_count = 0
        return BAD_SG

    def _bad_count_max(self, plan: Plan) -> int:
        plan.sg_count = self.rng.randrange(MAX_SEGMENTS + 1, 1 << 32)
        return BAD_SG

    def _bad_align(self, plan: Plan) -> int:
        plan.sg_addr += self.rng.randrange(1, 16)
        return BAD_SG

    def _bad_wrap(self, plan: Plan) -> int:
        plan.sg_addr, plan.sg_count = U64_MAX + 1 - 16 * self.rng.randint(1, 3), 4
        return BAD_SG

    def _bad_short(self, plan: Plan) -> int:
        plan.length = sum(s.length for s in plan.segments) + self.rng.randint(1, 4096)
        return BAD_SG

    def _read_entry(self, plan: Plan) -> int:
        """An entry the device reads: one before the segments cover length."""
        covered, last = 0, 0
        for i, seg in enumerate(plan.segments):
            last = i
            covered += seg.length
            if covered >= plan.length:
                break
        return self.rng.randint(0, last)

    def _patch(self, plan: Plan, offset: int, fmt: str, value: int) -> int:
        entries = bytearray(plan.sg_raw)
        struct.pack_into(fmt, entries, offset, value)
        plan.sg_raw = bytes(entries)
        return BAD_SG

    def _bad_entry_len0(self, plan: Plan) -> int:
        return self._patch(plan, 16 * self._read_entry(plan) + 8, "<I", 0)

    def _bad_entry_reserved(self, plan: Plan) -> int:
        return self._patch(plan, 16 * self._read_entry(plan) + 12, "<I",
                           self.rng.randrange(1, 1 << 32))

    def _bad_entry_long(self, plan: Plan) -> int:
        return self._patch(plan, 16 * self._read_entry(plan) + 8, "<I",
                           self.rng.randrange(MAX_XFER + 1, 1 << 32))

    def _bad_entry_wraps(self, plan: Plan) -> int:
        i = self._read_entry(plan)
        n = max(2, plan.segments[i].length)
        self._patch(plan, 16 * i + 8, "<I", n)
        return self._patch(plan, 16 * i, "<Q", U64_MAX - self.rng.randrange(n - 1))
