"""The checked phase as the run drives it: batches (checked.py) with probes
of the v1.1 register and fault rules between them, and at its end a stall,
or DMA and interrupt messages with which the device resets or unplugs itself."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from dmagate import reference as ref
from dmagate.devdriver import PCI_EXP_DEVCTL_BCR_FLR

from .aims import CPL_BYTES_DONE, completion_placements
from .checked import CheckedBatches
from .layout import (
    BAD_ACCESS,
    BAD_INDEX,
    CQ_AREA,
    CTRL_ENABLE,
    CTRL_RESET,
    DATA_AREA,
    DESC_F_INTERRUPT,
    DEV_BUS,
    ENABLED,
    FILL,
    INT_COMPLETION,
    QOM,
    REG,
    REG_LOCKED,
    REGISTER_OFFSETS,
    SG_AREA,
    SQ_AREA,
    STALLED,
    TRANSFORM,
    U64_MAX,
    bar_read,
    bar_write,
    clock_step,
)
from .model import FAULT_KNOBS, Span


class CheckedPhase(CheckedBatches):
    """Descriptors the model predicts, checked on every completion and at
    the end of every batch; probes of the v1.1 register and fault rules
    between batches."""

    # -- the phase -------------------------------------------------------------------

    def run(self, budget: int, migrate_batch: int | None, allow_large: bool) -> None:
        end = self.rep.op + budget
        self.configure()
        large = allow_large and self.rng.random() < 0.1
        batches = 0
        while True:
            self.batch(migrate=migrate_batch == batches, large=large)
            large = False
            batches += 1
            if self.rep.op >= end:
                break
            roll = self.rng.random()
            if roll < 0.07:
                self.probe()
            elif roll < 0.11:
                self.spurious_now()
        self.check_fault_counts()
        roll = self.rng.random()
        if roll < 0.08:
            self.stall()
        elif roll < 0.2:
            self.self_inflicted(self.rng.choice(("FLR by data", "FLR by completion",
                                                 "FLR by MSI-X", "unplug by data")))

    # -- between batches ------------------------------------------------------------------

    def probe(self) -> None:
        """v1.1 item 6 on the idle device: odd-sized and misaligned accesses,
        reserved CTRL bits, BAD_INDEX and REG_LOCKED."""
        what = self.rng.choice(("read", "write", "ctrl", "index", "locked"))
        self.rep.log(f"probe: {what}")
        self.stats_cache = None
        getattr(self, f"probe_{what}")()
        self.rep.tick(3)

    def odd_access(self) -> tuple[int, int]:
        size = self.rng.choice((1, 2, 8, 4))
        return size, self.rng.randrange(1, 4) if size == 4 else 0

    def probe_read(self) -> None:
        size, misalign = self.odd_access()
        offset = min(self.rng.choice(REGISTER_OFFSETS[:24]), 0x1F0) + misalign
        self.rep.expect("bad-access-read", bar_read(self.qt, offset, size), (1 << 8 * size) - 1,
                        f"a {size}-byte read at BAR0+{offset:#x} (v1.1 item 6: all ones)")

    def probe_write(self) -> None:
        size, misalign = self.odd_access()
        offset = REG["INT_MASK"] + misalign
        if size == 8 and self.rng.random() < 0.5:
            offset = REG["INT_STATUS"]
        bar_write(self.qt, offset, size, U64_MAX)
        self.rep.expect("bad-access-write", self.dev.read("INT_MASK"), self.setup.int_mask,
                        f"INT_MASK after a {size}-byte write at BAR0+{offset:#x} (dropped)")
        self.expect_error(BAD_ACCESS, (offset, offset & ~3), f"a {size}-byte write at {offset:#x}")

    def probe_ctrl(self) -> None:
        self.dev.write("CTRL", CTRL_ENABLE | 1 << self.rng.randrange(2, 32))
        self.rep.expect("bad-access-write", (self.dev.read("CTRL"), self.dev.read("STATUS")),
                        (CTRL_ENABLE, ENABLED), "CTRL, STATUS after reserved CTRL bits")
        self.expect_error(BAD_ACCESS, (REG["CTRL"],), "reserved CTRL bits")

    def probe_index(self) -> None:
        reg, size = self.rng.choice((("SQ_TAIL", self.setup.sq_size),
                                     ("CQ_HEAD", self.setup.cq_size)))
        self.dev.write(reg, size + self.rng.randrange(1 << 20))
        self.expect_error(BAD_INDEX, (REG[reg],), f"{reg} out of range")

    def probe_locked(self) -> None:
        reg = self.rng.choice(("SQ_SIZE", "CQ_SIZE", "SQ_BASE_LO", "CQ_BASE_HI"))
        value = self.dev.read(reg)
        self.dev.write(reg, value ^ 0x40)
        self.rep.expect("reg-locked", self.dev.read(reg), value, f"{reg} written while enabled")
        self.expect_error(REG_LOCKED, (REG[reg],), f"{reg} written while enabled")

    def expect_error(self, code: int, addrs: tuple[int, ...], what: str) -> None:
        error, addr = self.dev.read("ERROR"), self.dev.read64("ERROR_ADDR_LO")
        if error != code or addr not in addrs:
            self.rep.violation("error-register", f"{what}: ERROR={error} ERROR_ADDR={addr:#x}, "
                               f"expected {code} at {' or '.join(map(hex, addrs))} (v1.1 item 6)")

    def spurious_now(self) -> None:
        """fault-spurious-irq while enabled fires at once (datasheet §8, v1.1 item 10)."""
        count = self.rng.randint(1, 3)
        self.stats_cache = None
        before, faults = self.counters(), self.stat("FAULTS")
        self.rep.log(f"fault-spurious-irq {count}")
        self.fuzz.props.set("fault-spurious-irq", count)
        after = self.counters()
        self.rep.expect("spurious", self.stat("FAULTS") - faults, count,
                        "STAT_FAULTS after fault-spurious-irq")
        self.rep.expect("spurious", self.dev.read("INT_STATUS") & INT_COMPLETION, INT_COMPLETION,
                        "INT_STATUS.COMPLETION after fault-spurious-irq")
        if self.setup.mode == "msix" and not (self.setup.int_mask | self.setup.vector_mask) & 1:
            self.rep.expect("spurious", after.interrupts - before.interrupts, count,
                            "MSI-X messages for fault-spurious-irq")
        self.ack()
        self.rep.tick(4)

    # -- at the end of the phase ----------------------------------------------------

    def check_fault_counts(self) -> None:
        qmp = self.board.qt.qmp
        got = {name: qmp.cmd("qom-get", path=QOM, property=name) for name in FAULT_KNOBS}
        self.rep.expect("fault-count", got, self.faults.counts,
                        "fault counts at the end of the phase (datasheet §8, v1.1 item 14)")
        self.rep.tick(len(FAULT_KNOBS))

    def stall(self) -> None:
        """v1.1 item 9: a stall outlives CTRL.ENABLE=0, and a stalled device takes nothing."""
        rep, dev, s = self.rep, self.dev, self.setup
        rep.log("stall probe")
        self.fuzz.props.set("fault-stall", 1)
        data = DATA_AREA + 0x10_0000
        count = min(2, s.sq_size - 1)
        for index in range(count):
            slot = (self.sq_tail + index) % s.sq_size
            self.qt.memwrite(SG_AREA + 16 * index, struct.pack("<QII", data, 64, 0))
            self.qt.memwrite(SQ_AREA + 32 * slot, struct.pack(
                "<BBHIQIIQ", FILL, DESC_F_INTERRUPT, 0, index, SG_AREA + 16 * index, 1, 64, 1))
        dev.write("SQ_TAIL", (self.sq_tail + count) % s.sq_size)
        waited = s.latency + s.extra + 1_000_000
        for _ in range(3):
            self.qt.clock_step(waited)
        rep.expect("stall", (dev.read("STATUS") & STALLED, dev.read("CQ_TAIL")),
                   (STALLED, self.cq_seen), "STATUS.STALLED and no completion")
        dev.write("CTRL", 0)
        rep.expect("stall", dev.read("STATUS"), STALLED,
                   "STATUS after clearing CTRL.ENABLE on a stalled device (v1.1 item 9)")
        dev.write("CTRL", CTRL_ENABLE)
        dev.write("SQ_TAIL", 1)
        self.qt.clock_step(waited)
        rep.expect("stall", (dev.read("SQ_HEAD"), dev.read("CQ_TAIL")), (0, 0),
                   "a stalled device enabled again takes nothing (v1.1 item 9)")
        dev.write("CTRL", CTRL_RESET)
        rep.expect("stall", dev.read("STATUS"), 0, "STATUS after CTRL.RESET")
        rep.tick(10)

    # -- the device hits itself -------------------------------------------------------

    def self_inflicted(self, how: str) -> None:
        """Datasheet 1.1 §9, v1.1 item 1: DMA or an interrupt message that
        lands on the device's own Device Control (FLR) or its root port's
        Slot Control (power off) resets or unplugs it at once, and nothing
        after that access is written."""
        rep, dev, rng = self.rep, self.dev, self.rng
        rep.log(f"self-inflicted: {how}")
        rep.notes[f"checked {how}"] += 1
        for name in FAULT_KNOBS:
            self.fuzz.props.set(name, 0)
        before, after = rng.randint(1, 5000), rng.randint(1, 5000)
        span = Span(DATA_AREA + 0x20_0000, rng.randbytes(before + after + 128))
        first, second = span.addr + 32, span.addr + 96 + before
        self.qt.memwrite(span.addr, span.initial)
        cq = self.qt.memread(CQ_AREA, 32 * self.setup.cq_size)
        key = rng.getrandbits(64)
        if how == "FLR by completion":
            devctl = next(a for a in self.fuzz.aims if a.name == "dev.DevCtl")
            base = next(p[0] for p in completion_placements(devctl)
                        if p[1] == 0 and p[2] == CPL_BYTES_DONE)
            dev.write("CTRL", 0)
            dev.write("CQ_BASE_LO", base & 0xFFFFFFFF)
            dev.write("CQ_BASE_HI", base >> 32)
            dev.write("CTRL", CTRL_ENABLE)
            self.sq_tail, length = 0, PCI_EXP_DEVCTL_BCR_FLR  # bytes_done lands on DevCtl
            segments = [(first, length)]
            span = Span(span.addr, rng.randbytes(length + 128))
            self.qt.memwrite(span.addr, span.initial)
        elif how == "FLR by MSI-X":
            devctl = next(a for a in self.fuzz.aims if a.name == "dev.DevCtl")
            dev.enable_msix(devctl.addr & ~3, (PCI_EXP_DEVCTL_BCR_FLR, PCI_EXP_DEVCTL_BCR_FLR))
            self.mask_vectors(0)
            dev.write("INT_MASK", 0)
            segments = [(first, before)]  # its interrupt resets the device
        else:
            target = next(a for a in self.fuzz.aims
                          if a.name == ("dev.DevCtl" if how == "FLR by data" else "port.SltCtl"))
            config = self.board.cfg if target.bus == DEV_BUS else self.board.port
            want = PCI_EXP_DEVCTL_BCR_FLR if target.bus == DEV_BUS else 0x7C0
            mask = (config.read16(target.offset) ^ want) & 0xFFFF
            key &= ~(0xFFFF << 8 * (before % 8)) & U64_MAX
            key |= ((mask & 0xFF) << 8 * (before % 8)) | ((mask >> 8) << 8 * ((before + 1) % 8))
            segments = [(first, before), (target.addr, 2), (second, after)]
        self._post_raw(segments, TRANSFORM if how.endswith("data") else FILL, key)
        if how == "FLR by MSI-X":  # a second descriptor the reset must cancel
            self._post_raw([(second, after)], FILL, key)
        for _ in range(4):
            clock_step(self.qt, self.quantum())
        self.check_self_inflicted(how, span, segments, key, cq)

    def _post_raw(self, segments: Sequence[tuple[int, int]], op: int, param: int) -> None:
        at = SG_AREA + (self.sq_tail % 8) * 0x100
        self.qt.memwrite(at, b"".join(struct.pack("<QII", a, n, 0) for a, n in segments))
        self.qt.memwrite(SQ_AREA + 32 * self.sq_tail, struct.pack(
            "<BBHIQIIQ", op, DESC_F_INTERRUPT, 0, 0x5E1F, at, len(segments),
            sum(n for _, n in segments), param))
        self.sq_tail = (self.sq_tail + 1) % self.setup.sq_size
        self.dev.write("SQ_TAIL", self.sq_tail)

    def check_self_inflicted(self, how: str, span: Span, segments: Sequence[tuple[int, int]],
                             key: int, cq: bytes) -> None:
        rep, board, first = self.rep, self.board, segments[0]
        want = bytearray(span.initial)
        at, n = first[0] - span.addr, first[1]
        if how.endswith("data"):
            want[at:at + n] = ref.transform(bytes(want[at:at + n]), key)
        else:
            want[at:at + n] = ref.fill_pattern(key, 0, n)
        got = self.qt.memread(span.addr, len(want))
        if got != bytes(want):
            first_bad = next(i for i in range(len(got)) if got[i] != want[i])
            rep.violation("self-inflicted", f"{how}: memory wrong at {span.addr + first_bad:#x} "
                          f"(the first segment is {first[0]:#x}+{n}; after the access that "
                          "reset or unplugged the device nothing may be written)")
        records = self.qt.memread(CQ_AREA, 32 * self.setup.cq_size)
        wrote = sum(records[i:i + 32] != cq[i:i + 32] for i in range(0, len(cq), 32))
        rep.expect("self-inflicted", wrote, 1 if how == "FLR by MSI-X" else 0,
                   f"{how}: completion records written to the CQ")
        if how == "unplug by data" and not board.device_exists():
            return
        # Powering the slot off without an unplug (QEMU unplugs only a slot
        # whose power goes off while it reads as populated) still removes
        # the function's power, and that resets it.
        board.program()
        rep.expect("self-inflicted", (self.dev.read("STATUS"), self.dev.read("CTRL"),
                                      self.dev.read("SQ_SIZE")), (0, 0, 0),
                   f"{how}: the device is reset (STATUS, CTRL, SQ_SIZE)")
