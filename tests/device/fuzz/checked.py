"""The checked phase's batches: descriptors the model predicts, posted, and
every completion, interrupt, statistic and byte of memory checked."""

from __future__ import annotations

import collections
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from dmagate.devdriver import Dmagate
from dmagate.hwregs import HW
from dmagate.qtest import QTestMachine

from .board import Board
from .context import FuzzContext
from .layout import (
    ALWAYS,
    BAR0,
    BAR2,
    BUSY,
    CHUNK,
    CQ_AREA,
    CTRL_ENABLE,
    DMA_ERROR,
    ENABLED,
    INT_ALL,
    INT_COMPLETION,
    INT_ERROR,
    MAX_BANDWIDTH_MBPS,
    MAX_BATCH,
    MSG_AREA,
    MSIX_PBA,
    OK,
    PCI_PM_CTRL,
    PCI_PM_D3HOT,
    QOM,
    REG,
    SQ_AREA,
    U32_MAX,
    clock_step,
)
from .model import FAULT_KNOBS, FaultModel, Model, Plan, expected_outcome, explain_difference
from .plans import PlanGenerator


@dataclass
class Setup:
    sq_size: int
    cq_size: int
    mode: str  # "msix", "msi" or "intx"
    int_mask: int
    vector_mask: int  # MSI-X vectors masked in the table
    zero_delay: bool
    latency: int
    bandwidth: int
    extra: int
    lazy: bool  # let the CQ fill up before consuming
    doorbell_each: bool
    faults: dict[str, int] = field(default_factory=dict)

    def waits(self) -> bool:
        """A descriptor that was taken waits for virtual time before it completes."""
        return self.extra > 0 or (not self.zero_delay and self.latency > 0)


@dataclass(frozen=True)
class Counters:
    interrupts: int  # STAT_INTERRUPTS
    raises: int  # INTx assertions seen


MSIX_DATA = (0xD0C0_0000, 0xD0C0_0001)
MSI_DATA = 0x4D53
STAT_NAMES = ("DESCRIPTORS", "BYTES", "INTERRUPTS", "ERRORS", "FAULTS")


class CheckedBatches:
    """Descriptors the model predicts, checked on every completion and at
    the end of every batch (the phase around them: checked_probes.CheckedPhase)."""

    def __init__(self, fuzz: FuzzContext) -> None:
        self.fuzz, self.rng, self.rep = fuzz, fuzz.rng, fuzz.rep
        self.gen = PlanGenerator(fuzz.rng)
        self.setup = self.choose()
        self.faults = FaultModel(self.setup.faults)
        self.model = Model(self.faults)
        self.sq_tail = 0
        self.cq_seen = 0  # entries read: the device's CQ_TAIL as far as we know
        self.cq_head = 0  # entries consumed: what CQ_HEAD was written
        self.phase_bit = 1
        self.prev_ts = 0
        self.stats_cache: dict[str, int] | None = None  # STAT_* as the last batch left them

    @property
    def board(self) -> Board:
        return self.fuzz.board

    @property
    def dev(self) -> Dmagate:
        return self.fuzz.board.dev

    @property
    def qt(self) -> QTestMachine:
        return self.fuzz.board.qt

    def choose(self) -> Setup:
        rng = self.rng
        counts = {name: rng.choice((0, 0, 0, 0, 1, 2, ALWAYS)) for name in FAULT_KNOBS}
        if rng.random() < 0.3:
            counts = dict.fromkeys(FAULT_KNOBS, 0)
        mode = rng.choice(("msix", "msix", "msix", "msi", "intx", "intx"))
        return Setup(
            sq_size=rng.choice((2, 4, 8, 16, 64, 256, 4096)),
            cq_size=rng.choice((2, 4, 8, 16, 64, 4096)),
            mode=mode,
            int_mask=rng.choice((0, 0, 0, INT_COMPLETION, INT_ERROR, INT_ALL)),
            vector_mask=rng.choice((0, 0, 0, 0, 1, 2, 3)) if mode == "msix" else 0,
            zero_delay=rng.random() < 0.45,
            latency=rng.choice((0, 1, 1000, 50_000, 1_000_000, rng.randrange(1, 3_000_000))),
            bandwidth=rng.choice((0, 0, 10, 1000, MAX_BANDWIDTH_MBPS, rng.randrange(10, 10**6))),
            extra=rng.choice((0, 0, 0, 0, 1, 1000, 2_000_000)),
            lazy=rng.random() < 0.4,
            doorbell_each=rng.random() < 0.3,
            faults=counts,
        )

    # -- setting up ---------------------------------------------------------------

    def configure(self) -> None:
        s, props, dev = self.setup, self.fuzz.props, self.dev
        self.rep.log(f"checked phase: {s}")
        props.set("zero-delay", s.zero_delay)
        props.set("latency-ns", s.latency)
        props.set("bandwidth-mbps", s.bandwidth)
        props.set("fault-extra-delay-ns", s.extra)
        for name in (*FAULT_KNOBS, "fault-stall", "fault-spurious-irq"):
            props.set(name, s.faults.get(name, 0))
        if s.mode == "msix":
            dev.enable_msix(MSG_AREA, MSIX_DATA)
            self.mask_vectors(s.vector_mask)
        elif s.mode == "msi":
            dev.enable_msi(MSG_AREA, MSI_DATA)
        dev.write("INT_MASK", s.int_mask)
        self.qt.memset(CQ_AREA, 32 * s.cq_size, 0)
        for reg, base, size in (("SQ", SQ_AREA, s.sq_size), ("CQ", CQ_AREA, s.cq_size)):
            dev.write(f"{reg}_BASE_LO", base)
            dev.write(f"{reg}_BASE_HI", 0)
            dev.write(f"{reg}_SIZE", size)
        if self.rng.random() < 0.12:
            props.set("fault-spurious-irq", self.rng.randint(1, 3))
            self.check_spurious_held()
        else:
            dev.write("CTRL", CTRL_ENABLE)
        self.rep.expect("enable", dev.read("STATUS"), ENABLED, "STATUS after enabling")
        self.ack()
        self.rep.tick(12)

    def mask_vectors(self, mask: int) -> None:
        for vector in range(2):
            self.qt.writel(BAR2 + 16 * vector + 12, mask >> vector & 1)

    # -- interrupts --------------------------------------------------------------------

    def stat(self, name: str) -> int:
        """The low half: a phase (statistics reset with it) never moves 4 G."""
        return self.dev.read(f"STAT_{name}")

    def stats(self) -> dict[str, int]:
        if self.stats_cache is None:
            self.stats_cache = {name: self.stat(name) for name in STAT_NAMES}
        stats, self.stats_cache = self.stats_cache, None
        return stats

    def counters(self) -> Counters:
        interrupts = self.stat("INTERRUPTS")
        self.board.sync_irqs()
        return Counters(interrupts, self.board.line.raises)

    def messages(self) -> list[int]:
        return list(struct.unpack("<2I", self.qt.memread(MSG_AREA, 8)))

    def clear_messages(self) -> None:
        self.qt.memwrite(MSG_AREA, bytes(8))

    def pba(self) -> int:
        return self.qt.readl(BAR2 + MSIX_PBA) & 3

    def ack(self) -> None:
        self.dev.write("INT_ACK", INT_ALL)
        self.clear_messages()
        self.dev.read("INT_STATUS")
        self.board.sync_irqs()
        if not self.board.line.level:
            self.board.line.trusted = True

    def check_delivery(self, causes: int, before: Counters, what: str) -> None:
        """The messages for ``causes``, newly signalled since ``before``
        (datasheet §6; STAT_INTERRUPTS counts what was sent, v1.1 item 13)."""
        s, rep = self.setup, self.rep
        after = self.counters()
        sent = (after.interrupts - before.interrupts) & U32_MAX
        if s.mode == "msix":
            words = [MSIX_DATA[v] if causes >> v & 1 and not s.vector_mask >> v & 1 else 0
                     for v in range(2)]
            rep.expect("interrupt-delivery", self.messages(), words, f"{what}: MSI-X messages")
            rep.expect("stat-interrupts", sent, sum(map(bool, words)),
                       f"{what}: STAT_INTERRUPTS (MSI-X messages sent)")
        elif s.mode == "msi":
            rep.expect("interrupt-delivery", self.messages(), [MSI_DATA if causes else 0, 0],
                       f"{what}: MSI message")
            if not (1 <= sent <= 2 if causes else sent == 0):
                rep.violation("stat-interrupts", f"{what}: STAT_INTERRUPTS went up by {sent} "
                              f"for causes {causes:#x} (MSI)")
        elif self.board.line.usable():
            rep.expect("stat-interrupts", sent, after.raises - before.raises,
                       f"{what}: STAT_INTERRUPTS against the INTx assertions seen")

    def check_intx(self, latched: int, mask: int, what: str) -> None:
        if self.setup.mode != "intx" or not self.board.line.usable():
            return
        self.board.sync_irqs()
        self.rep.expect("intx-level", self.board.line.level, bool(latched & ~mask & INT_ALL),
                        f"{what}: INTA (INT_STATUS & ~INT_MASK)")

    def interrupts_after(self, plans: Sequence[Plan], before: Counters) -> None:
        """Datasheet §5/§6 and v1.1 item 13, at the end of a batch."""
        s, rep, dev = self.setup, self.rep, self.dev
        latched = 0
        for plan in plans:
            if not plan.drop:
                latched |= plan.causes
        rep.expect("int-status", dev.read("INT_STATUS"), latched, "INT_STATUS after the batch "
                   f"of {'; '.join(p.describe() for p in plans)}")
        self.check_delivery(latched & ~s.int_mask, before, "the batch")
        self.check_intx(latched, s.int_mask, "the batch")
        if s.mode == "msix":
            rep.expect("msix-pba", self.pba(), latched & ~s.int_mask & s.vector_mask,
                       "MSI-X PBA: a masked vector's message is pending")
        before = self.counters()
        self.clear_messages()
        if s.int_mask:
            dev.write("INT_MASK", 0)
            self.check_delivery(latched & s.int_mask, before,
                                "clearing INT_MASK (causes latched while masked)")
        elif latched and self.rng.random() < 0.3:
            dev.write("INT_MASK", INT_ALL)
            dev.write("INT_MASK", 0)
            self.check_delivery(0, before, "INT_MASK set and cleared: causes signalled "
                                "already do not signal again (v1.1 item 13)")
        self.check_intx(latched, 0, "INT_MASK cleared")
        dev.write("INT_ACK", INT_ALL)
        rep.expect("int-status", dev.read("INT_STATUS"), 0, "INT_STATUS after INT_ACK")
        self.check_intx(0, 0, "INT_ACK")
        if s.mode == "msix" and s.vector_mask:
            rep.expect("msix-pba", self.pba(), 0, "MSI-X PBA after INT_ACK (v1.1 item 13)")
            before = self.counters()
            self.clear_messages()
            self.mask_vectors(0)
            self.check_delivery(0, before, "unmasking the MSI-X vectors after INT_ACK")
            self.mask_vectors(s.vector_mask)
        dev.write("INT_MASK", s.int_mask)
        self.ack()

    # -- a batch ------------------------------------------------------------------------

    def batch(self, *, migrate: bool, large: bool) -> None:
        s = self.setup
        self.gen.new_batch()
        count = min(self.rng.choice((1, 1, 1, 2, 2, 3, 4, 6, 8, MAX_BATCH)), s.sq_size - 1)
        plans = []
        for slot in range(count):
            plan = self.gen.plan(self.sq_tail, slot, self.faults, large and slot == 0)
            self.sq_tail = (self.sq_tail + 1) % s.sq_size
            self.model.predict(plan)
            plans.append(plan)
        before, stats = self.counters(), self.stats()
        start = self.dev.read64("TIME_LO")
        for plan in plans:
            self.rep.log(plan.describe())
            for span in plan.spans:
                self.qt.memwrite(span.addr, span.initial)
            self.qt.memwrite(plan.sg_at, plan.sg_raw)
            self.qt.memwrite(SQ_AREA + 32 * plan.index, plan.raw())
            if s.doorbell_each:
                self.dev.write("SQ_TAIL", (plan.index + 1) % s.sq_size)
        if not s.doorbell_each:
            self.dev.write("SQ_TAIL", self.sq_tail)
        self.rep.tick(4 * count)
        self.check_taken(plans[0])
        self.maybe_d3hot(plans[0])
        if migrate:
            self.migrate_mid()
        self.collect(plans, start)
        self.after_batch(plans, before, stats)

    def check_taken(self, first: Plan) -> None:
        """v1.1 item 8: SQ_HEAD moves on when the device takes a descriptor."""
        if not self.setup.waits() or first.broken is not None:
            return
        want = (first.index + 1) % self.setup.sq_size
        for _ in range(4):
            head = self.dev.read("SQ_HEAD")
            if head == want:
                return
        self.rep.violation("sq-head-timing", f"SQ_HEAD={head} while {first.describe()} "
                           f"waits for its latency; v1.1 item 8 says {want}")

    def maybe_d3hot(self, first: Plan) -> None:
        """v1.1 item 5: in D3hot the BARs do not decode and the engine pauses."""
        pm, s = self.board.topo.pm, self.setup
        if not pm or not s.waits() or first.broken is not None or self.rng.random() > 0.15:
            return
        self.rep.log("D3hot mid-transfer")
        self.rep.notes["checked D3hot mid-transfer"] += 1
        self.board.cfg.write16(pm + PCI_PM_CTRL, PCI_PM_D3HOT)
        cq_before = self.qt.memread(CQ_AREA, 32 * s.cq_size)
        if self.qt.readl(BAR0 + REG["ID"]) == HW["ID_VALUE"]:
            self.rep.violation("d3hot", "BAR0 still decodes in D3hot")
        for _ in range(3):
            self.qt.clock_step(s.latency + s.extra + 10_000_000)
        self.rep.expect("d3hot", self.qt.memread(CQ_AREA, 32 * s.cq_size) == cq_before, True,
                        "no completion written in D3hot (the engine pauses)")
        for span in first.spans if not s.zero_delay and s.latency else ():
            self.rep.expect("d3hot", self.qt.memread(span.addr, len(span.initial)) ==
                            span.initial, True, f"no data moved in D3hot ({first.describe()})")
        self.board.cfg.write16(pm + PCI_PM_CTRL, 0)
        self.rep.expect("d3hot", self.dev.read("ID"), HW["ID_VALUE"], "ID back in D0")
        self.rep.tick(6)

    def migrate_mid(self) -> None:
        if not self.setup.zero_delay:
            self.qt.clock_step(self.rng.choice((1, 1000, self.setup.latency + 1)))
        self.rep.log("migration mid-transfer")
        self.rep.notes["checked migration mid-transfer"] += 1
        self.board.migrate()

    def collect(self, plans: Sequence[Plan], start: int) -> None:
        """Read the completions as they come and check each; consume them at
        once, or lazily so that the device finds the CQ full."""
        expected: collections.deque[tuple[Plan, bool]] = collections.deque()
        for plan in plans:
            expected.append((plan, False))
            if plan.duplicate:
                expected.append((plan, True))
        firsts: dict[int, bytes] = {}
        self.prev_ts = start
        idle = 0
        for _ in range(5000):
            tail = self.dev.read("CQ_TAIL")
            progress = tail != self.cq_seen
            while self.cq_seen != tail and expected:
                ready = (tail if tail > self.cq_seen else self.setup.cq_size) - self.cq_seen
                records = self.qt.memread(CQ_AREA + 32 * self.cq_seen, 32 * ready)
                for i in range(min(ready, len(expected))):
                    plan, dup = expected.popleft()
                    self.check_record(plan, dup, records[32 * i:32 * i + 32], firsts)
                    self.cq_seen = (self.cq_seen + 1) % self.setup.cq_size
                    self.phase_bit ^= self.cq_seen == 0
            if tail != self.cq_seen:
                self.rep.violation("extra-completion", f"CQ_TAIL={tail}: more completions than "
                                   f"the batch has: {[p.describe() for p in plans]}")
            if not expected:
                break
            idle = 0 if progress else idle + 1
            if self.cq_head != self.cq_seen and (not self.setup.lazy or idle):
                self.cq_head = self.cq_seen
                self.dev.write("CQ_HEAD", self.cq_head)
            elif not progress:
                self.advance(idle, expected[0][0])
        else:
            self.rep.violation("missing-completion", f"no record for "
                               f"{expected[0][0].describe()}{' (duplicate)' * expected[0][1]} "
                               f"after 5000 clock steps; {self.registers()}")
        if self.cq_head != self.cq_seen:
            self.cq_head = self.cq_seen
            self.dev.write("CQ_HEAD", self.cq_head)

    def registers(self) -> str:
        names = ("STATUS", "ERROR", "SQ_HEAD", "SQ_TAIL", "CQ_HEAD", "CQ_TAIL", "INT_STATUS")
        return " ".join(f"{name}={self.dev.read(name):#x}" for name in names)

    def advance(self, idle: int, waiting: Plan) -> None:
        if idle > 12 and not self.dev.read("STATUS") & BUSY:
            self.rep.violation("missing-completion", f"the device is idle and the record of "
                               f"{waiting.describe()} never came; {self.registers()}")
        clock_step(self.qt, self.quantum())

    def quantum(self) -> int | None:
        """A clock step that takes a descriptor through latency, a chunk and
        the extra delay at once (timers that fire within one step run at its
        end, so timestamps come later, never earlier, than the model's bounds)."""
        s = self.setup
        if s.zero_delay:
            return s.extra + 1 if s.extra else None
        transfer = CHUNK * 1000 // s.bandwidth if s.bandwidth else 0
        return s.latency + transfer + s.extra + 1

    def check_record(self, plan: Plan, dup: bool, raw: bytes, firsts: dict[int, bytes]) -> None:
        """Datasheet §3-§5 (and v1.1 item 4) on one completion record."""
        rep = self.rep
        tag, status, flags, done, crc, ts, index, reserved = struct.unpack("<IHHIIQII", raw)
        what = plan.describe() + (" (the duplicate)" if dup else "")
        rep.expect("completion-tag", (tag, index), (plan.tag, plan.index), f"{what}: tag, sq_index")
        rep.expect("completion-phase", (flags, reserved), (self.phase_bit, 0),
                   f"{what}: flags (phase bit) and reserved")
        if dup:
            first = firsts[plan.index]
            rep.expect("duplicate", raw[:6] + raw[8:], first[:6] + first[8:],
                       f"{what}: the second record repeats the first")
            return
        firsts[plan.index] = raw
        plan.done = done
        rep.expect("completion-status", status, plan.status, f"{what}: status")
        if not plan.done_min <= done <= plan.done_max:
            wanted = (str(plan.done_min) if plan.done_min == plan.done_max
                      else f"{plan.done_min}..{plan.done_max}")
            rep.violation("bytes-done", f"{what}: bytes_done={done}, expected {wanted}")
        outcome = expected_outcome(plan, done)
        on_error = "-on-dma-error" if status == DMA_ERROR else ""
        rep.expect(f"crc{on_error}", crc, outcome.crc,
                   f"{what}: status {status}, crc of the first bytes_done={done} bytes")
        self.check_time(plan, ts, done)
        for addr, want in outcome.memory:
            got = self.qt.memread(addr, len(want))
            if got != want:
                rep.violation(f"memory{on_error}",
                              f"{what}: {explain_difference(plan, addr, got, want, done)}")

    def check_time(self, plan: Plan, ts: int, done: int) -> None:
        """Timestamps never go back, and a descriptor takes at least its
        latency, its transfer time and the extra delay (datasheet §7, v1.1 item 7)."""
        s = self.setup
        low = self.prev_ts
        if plan.broken is None:
            low += s.extra
            if not s.zero_delay:
                low += s.latency
                if s.bandwidth:
                    slack = len(plan.segments) + done // CHUNK + 2
                    low += max(0, done * 1000 // s.bandwidth - slack)
        if ts < low:
            self.rep.violation("timestamp", f"{plan.describe()}: timestamp {ts} < {low} "
                               f"(previous {self.prev_ts}, latency {s.latency}, extra {s.extra}, "
                               f"bandwidth {s.bandwidth}, zero-delay {s.zero_delay})")
        self.prev_ts = max(ts, self.prev_ts)

    def after_batch(self, plans: Sequence[Plan], before: Counters,
                    stats_before: dict[str, int]) -> None:
        rep, dev = self.rep, self.dev
        clock_step(self.qt)
        rep.expect("extra-completion", dev.read("CQ_TAIL"), self.cq_seen, "CQ_TAIL after the batch")
        rep.expect("status", dev.read("STATUS"), ENABLED, "STATUS after the batch (idle)")
        rep.expect("sq-head", dev.read("SQ_HEAD"), self.sq_tail, "SQ_HEAD after the batch")
        now = dev.read64("TIME_LO")
        rep.expect("timestamp", self.prev_ts <= now, True, f"timestamps <= TIME ({now})")
        errors = [p for p in plans if p.status != OK]
        if errors:
            rep.expect("error-register", (dev.read("ERROR"), dev.read("ERROR_INDEX")),
                       (errors[-1].status, errors[-1].index), "ERROR, ERROR_INDEX: the last error")
        stats = self.stats()
        got = {k: (stats[k] - stats_before[k]) & U32_MAX
               for k in ("DESCRIPTORS", "BYTES", "ERRORS")}
        rep.expect("stats", got, {"DESCRIPTORS": len(plans), "BYTES": sum(p.done for p in plans),
                                  "ERRORS": len(errors)}, "STAT_* over the batch")
        rep.expect("stat-faults", (stats["FAULTS"] - stats_before["FAULTS"]) & U32_MAX,
                   sum(p.faults for p in plans), "STAT_FAULTS over the batch (v1.1 item 14) "
                   f"of {'; '.join(p.describe() for p in plans)}")
        self.interrupts_after(plans, before)
        if self.setup.mode != "intx":  # INTx counts INT_MASK toggles; MSI-X and MSI do not
            stats["INTERRUPTS"] = self.stat("INTERRUPTS")
            self.stats_cache = stats
        rep.tick(3)

    def check_spurious_held(self) -> None:
        """v1.1 item 10: set while disabled, it is held until the device is enabled."""
        rep, dev, qmp = self.rep, self.dev, self.board.qt.qmp
        held = qmp.cmd("qom-get", path=QOM, property="fault-spurious-irq")
        rep.expect("spurious-held", (self.stat("FAULTS"), dev.read("INT_STATUS")), (0, 0),
                   "fault-spurious-irq set while disabled: fired at once")
        dev.write("CTRL", CTRL_ENABLE)
        rep.expect("spurious-held", self.stat("FAULTS"), held,
                   "STAT_FAULTS once enabled: the held spurious interrupts fired")
        rep.expect("spurious-held", qmp.cmd("qom-get", path=QOM, property="fault-spurious-irq"),
                   0, "fault-spurious-irq once it fired")
