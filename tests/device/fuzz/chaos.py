"""The chaos phase: operations a hostile guest may do, drawn at random,
with nothing predicted but that QEMU lives, properties obey their ranges
and the device comes back clean."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from dmagate.devdriver import (
    PCI_COMMAND,
    PCI_EXP_DEVCTL,
    PCI_EXP_DEVCTL_BCR_FLR,
    PCI_EXP_SLTCTL,
    PciFunction,
)
from dmagate.qmp import ExecuteError
from dmagate.qtest import QTestMachine

from ..conftest import PORT_SLOT
from .aims import CPL_TAG, Aim, completion_placements
from .board import Board
from .context import FuzzContext
from .layout import (
    BAR0,
    BAR2,
    CHAOS_CQ,
    CHAOS_DATA,
    CHAOS_DATA_END,
    CHAOS_SG,
    CHAOS_SQ,
    CHECKSUM,
    CTRL_ENABLE,
    CTRL_RESET,
    DESC_F_INTERRUPT,
    DEV_BUS,
    DEV_SLOT,
    FILL,
    INT_ALL,
    MAX_HOTPLUGS,
    MAX_SEGMENTS,
    MAX_XFER,
    MSG_AREA,
    MSIX_ENABLE,
    MSIX_MASKALL,
    OPS,
    PCI_BRIDGE_CONTROL,
    PCI_BRIDGE_CTL_BUS_RESET,
    PCI_EXP_SLTCTL_PCC,
    PCI_PM_CTRL,
    PCI_PM_D3HOT,
    QOM,
    RAM_END,
    REG,
    REGISTER_OFFSETS,
    TRANSFORM,
    U32_MAX,
    U64_MAX,
    bar_read,
    bar_write,
    clock_step,
    mmcfg,
    unmapped,
)
from .rules import random_rules


@dataclass
class ChaosRing:
    base: int
    size: int
    tail: int = 0

    def valid(self) -> bool:
        return 2 <= self.size <= 4096 and not self.size & (self.size - 1)


class Chaos:
    """Operations a hostile guest may do, drawn at random. Nothing is
    predicted: properties are checked against their ranges, and the phase
    must end with QEMU alive and the device coming back clean."""

    WEIGHTS: ClassVar[dict[str, float]] = {
        "reg_write": 24, "reg_read": 4, "post": 14, "doorbell": 5, "consume": 4,
        "clock": 12, "rings": 4, "aimed": 6, "config": 6, "vectors": 2, "qom": 5, "rules": 2,
        "mem": 2,
        "system_reset": 0.3, "hotplug": 0.4,
    }
    INTERESTING: ClassVar[tuple[int, ...]] = (
        0, 1, 2, 3, 4, 0xFF, 0x100, 0x1000, 0x8000, 0xFFFF, 0x10000, 0x8000_0000, 0xFFFF_FFFF,
        4096, 4097, CHAOS_SQ, CHAOS_CQ, CHAOS_SG, BAR0, BAR2, MAX_XFER, MAX_XFER + 1,
    )
    LENGTHS: ClassVar[tuple[int, ...]] = (
        1, 2, 3, 4, 8, 16, 64, 0x7C0, 4096, 0x8000, 0x8001, 0x10000, 0x40000,
    )
    TECHNIQUES: ClassVar[tuple[str, ...]] = (
        "completion", "transform", "transform", "fill", "checksum", "msix", "msi",
    )
    RECIPES: ClassVar[tuple[str, ...]] = (
        "as_is", "as_is", "shrunk_sq", "shrunk_cq", "halted", "stalled", "busy", "masked",
    )

    def __init__(self, fuzz: FuzzContext) -> None:
        self.fuzz, self.rng, self.rep = fuzz, fuzz.rng, fuzz.rep
        self.sq = ChaosRing(CHAOS_SQ, 64)
        self.cq = ChaosRing(CHAOS_CQ, 64)
        self.names = list(self.WEIGHTS)
        self.weights = list(self.WEIGHTS.values())

    @property
    def board(self) -> Board:
        return self.fuzz.board

    @property
    def qt(self) -> QTestMachine:
        return self.fuzz.board.qt

    def run(self, budget: int, migrate_at: int | None) -> None:
        end = self.rep.op + budget
        migrate_op = None if migrate_at is None else self.rep.op + migrate_at
        while self.rep.op < end:
            if migrate_op is not None and self.rep.op >= migrate_op:
                migrate_op = None
                self.migrate()
            name = self.rng.choices(self.names, self.weights)[0]
            try:
                getattr(self, f"op_{name}")()
            except ExecuteError:
                # The main loop runs under every QMP command, and with it work
                # chaos left queued: DMA aimed at the slot's power control
                # unplugs the device between two commands of one operation.
                if self.board.device_exists():
                    raise
                self.rep.notes["device unplugged by its own DMA mid-operation"] += 1
            self.rep.tick()

    # -- registers ---------------------------------------------------------------

    def value(self, size: int = 4) -> int:
        roll = self.rng.random()
        if roll < 0.5:
            return self.rng.choice(self.INTERESTING) & ((1 << 8 * size) - 1)
        if roll < 0.6 and size == 8:
            return U64_MAX
        return self.rng.getrandbits(8 * size)

    def op_reg_write(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.7:
            offset = rng.choice(REGISTER_OFFSETS)
        elif roll < 0.85:
            offset = rng.randrange(0, 0x1000, 4)
        else:
            offset = rng.randrange(0, 0x1000)
        size = rng.choice((4, 4, 4, 4, 1, 2, 8))
        offset = min(offset, 0x1000 - size)
        value = self.value(size)
        if offset == REG["CTRL"] and rng.random() < 0.5:
            value = rng.choice((0, CTRL_ENABLE, CTRL_RESET, 3, 1 << 31 | 1))
        if offset == REG["SQ_TAIL"] and self.sq.valid() and rng.random() < 0.7:
            value = (self.sq.tail + rng.randrange(1, 4)) % self.sq.size
        self.rep.log(f"write{size * 8} BAR0+{offset:#x} = {value:#x}")
        bar_write(self.qt, offset, size, value)

    def op_reg_read(self) -> None:
        size = self.rng.choice((1, 2, 4, 4, 8))
        bar_read(self.qt, self.rng.randrange(0, 0x1000 - size), size)

    def op_doorbell(self) -> None:
        if self.sq.valid() and self.rng.random() < 0.8:
            self.sq.tail = (self.sq.tail + self.rng.randrange(1, 4)) % self.sq.size
            value = self.sq.tail
        else:
            value = self.value()
        self.rep.log(f"SQ_TAIL = {value:#x}")
        self.board.dev.write("SQ_TAIL", value)

    def op_consume(self) -> None:
        value = self.board.dev.read("CQ_TAIL") if self.rng.random() < 0.8 else self.value()
        self.board.dev.write("CQ_HEAD", value)

    def op_clock(self) -> None:
        step = self.rng.choice((None, None, 1, 100, 10_000, 1_000_000, 100_000_000))
        self.rep.log(f"clock_step {step}")
        clock_step(self.qt, step)

    def op_mem(self) -> None:
        """The guest scribbles on its own rings and lists, racing the device."""
        at = self.rng.choice((CHAOS_SQ, CHAOS_CQ, CHAOS_SG)) + self.rng.randrange(0x2000)
        self.qt.memwrite(at, self.rng.randbytes(self.rng.randrange(1, 256)))

    # -- rings and descriptors -----------------------------------------------------

    def ring_base(self, ram: int) -> int:
        rng = self.rng
        roll = rng.random()
        if roll < 0.6:
            return ram
        if roll < 0.78:
            return (rng.choice(self.fuzz.aims).addr & ~63) - 64 * rng.randrange(3)
        if roll < 0.84:
            where = rng.choice(((DEV_BUS, DEV_SLOT), (0, PORT_SLOT)))
            return mmcfg(*where, rng.randrange(0, 4096, 64))
        if roll < 0.9:
            return rng.choice((BAR0, BAR2)) + rng.randrange(0, 4096, 64)
        if roll < 0.96:
            return unmapped(rng, 1 << 17) & ~63
        return rng.getrandbits(64) & ~(63 if rng.random() < 0.8 else 0)

    def ring_size(self) -> int:
        return self.rng.choice((2, 4, 8, 64, 256, 4096, 2, 8, 0, 1, 3, 4097, 8192, U32_MAX))

    def program_rings(self, sq: ChaosRing, cq: ChaosRing, enable: bool = True) -> None:
        dev = self.board.dev
        self.sq, self.cq = sq, cq
        for reg, ring in (("SQ", sq), ("CQ", cq)):
            dev.write(f"{reg}_BASE_LO", ring.base & 0xFFFFFFFF)
            dev.write(f"{reg}_BASE_HI", ring.base >> 32)
            dev.write(f"{reg}_SIZE", ring.size)
        if enable:
            dev.write("CTRL", CTRL_ENABLE)

    def op_rings(self) -> None:
        sq = ChaosRing(self.ring_base(CHAOS_SQ), self.ring_size())
        cq = ChaosRing(self.ring_base(CHAOS_CQ), self.ring_size())
        self.rep.log(f"rings SQ {sq.base:#x}/{sq.size} CQ {cq.base:#x}/{cq.size}")
        self.board.dev.write("CTRL", 0)
        self.program_rings(sq, cq, enable=self.rng.random() < 0.85)
        self.rep.tick(7)

    def segment_address(self, length: int) -> int:
        """RAM mostly; else a register aimed at, any config byte of the
        device or its port, a BAR, nothing, the end of RAM, anywhere."""
        rng = self.rng
        where = rng.choices(("ram", "aim", "config", "bar", "unmapped", "ram end", "random"),
                            (55, 17, 6, 6, 8, 4, 4))[0]
        if where == "ram" and length <= CHAOS_DATA_END - CHAOS_DATA:
            return CHAOS_DATA + rng.randrange(CHAOS_DATA_END - CHAOS_DATA - length + 1)
        if where == "aim":
            return rng.choice(self.fuzz.aims).addr - rng.randrange(4)
        if where == "config":
            return mmcfg(*rng.choice(((DEV_BUS, DEV_SLOT), (0, PORT_SLOT))), rng.randrange(4096))
        if where == "bar":
            return rng.choice((BAR0, BAR2)) + rng.randrange(4096)
        if where == "ram end":
            return RAM_END - rng.randrange(1, 1 << 16)
        return unmapped(rng, length) if where != "random" else rng.getrandbits(64)

    def length(self, small: bool = False) -> int:
        rng = self.rng
        roll = rng.random()
        if small:
            return rng.randrange(1, 4096)
        if roll < 0.6:
            return rng.choice(self.LENGTHS)
        if roll < 0.9:
            return rng.randrange(1, 1 << 16)
        if roll < 0.97:
            return rng.randrange(1, 4 << 20)
        return rng.choice((0, MAX_XFER, MAX_XFER + 1, U32_MAX))

    def sg_list(self, count: int) -> tuple[int, int]:
        """Writes a list of ``count`` entries (if it goes to RAM); returns
        (where the descriptor says it is, the entries' total length)."""
        rng = self.rng
        entries, total = [], 0
        for _ in range(count):
            length = self.length(small=count > 64)
            reserved = 0 if rng.random() < 0.95 else rng.getrandbits(32)
            entries.append(struct.pack("<QII", self.segment_address(length), length, reserved))
            total += length
        at = CHAOS_SG + (16 * rng.randrange(64 - count + 1) if count <= 64 else 0)
        if entries:
            self.qt.memwrite(at, b"".join(entries))
        roll = rng.random()
        if roll < 0.85:
            return at, total
        if roll < 0.9:
            return rng.choice(self.fuzz.aims).addr & ~15, total
        if roll < 0.95:
            return at + 8, total
        return unmapped(rng, 16 * max(count, 1)) & ~15, total

    def descriptor(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.15:
            return rng.randbytes(32)
        op = rng.choice((*OPS, *OPS, *OPS, 0, 4, 0xFF))
        flags = rng.choice((0, 1, 1, 1, 2, 0x81))
        reserved = 0 if rng.random() < 0.95 else rng.getrandbits(16)
        count = rng.choice((1, 1, 1, 1, 2, 2, 3, 4, 8, 0))
        if rng.random() < 0.03:
            count = rng.choice((MAX_SEGMENTS, MAX_SEGMENTS + 1))
        at, total = self.sg_list(min(count, MAX_SEGMENTS))
        length = total
        if rng.random() < 0.4 or not count:
            length = rng.choice((*self.LENGTHS, rng.randrange(1, total + 2), 0, MAX_XFER + 1))
        param = rng.choice((0, rng.getrandbits(64), 0x0400 << 8 * rng.randrange(7),
                            0x0404040404040404, 0x8080808080808080))
        return struct.pack("<BBHIQIIQ", op, flags, reserved, rng.getrandbits(32), at, count,
                           length & U32_MAX, param)

    def op_post(self) -> None:
        count = self.rng.randint(1, 4)
        for _ in range(count):
            index = self.sq.tail if self.sq.valid() else self.rng.randrange(64)
            self.qt.memwrite(CHAOS_SQ + 32 * index, self.descriptor())
            if self.sq.valid():
                self.sq.tail = (self.sq.tail + 1) % self.sq.size
        if self.sq.valid():
            self.rep.log(f"posted {count}, SQ_TAIL = {self.sq.tail}")
            self.board.dev.write("SQ_TAIL", self.sq.tail)
        self.rep.tick(count)

    # -- aimed: the hostile guest's playbook ---------------------------------------

    def op_aimed(self) -> None:
        """Rings, segments or MSI messages pointed at one register, set up so
        that the device really runs into it."""
        aim = self.rng.choice(self.fuzz.aims)
        how = self.rng.choice(self.TECHNIQUES)
        if how == "completion" and not completion_placements(aim):
            how = "transform"
        self.rep.log(f"aimed {how} at {aim.name} ({aim.addr:#x})")
        self.rep.notes[f"aimed {how} at {aim.name}"] += 1
        self.fuzz.quick_program()
        getattr(self, f"aim_{how}")(aim)
        for _ in range(self.rng.randint(1, 4)):
            clock_step(self.qt, self.rng.choice((None, 1000, 1_000_000)))
        self.rep.tick(12)

    def _restart(self, cq_base: int = CHAOS_CQ) -> None:
        self.board.dev.write("CTRL", CTRL_RESET)
        self.program_rings(ChaosRing(CHAOS_SQ, 16), ChaosRing(cq_base, 16))

    def _submit(self, segments: Sequence[tuple[int, int]], op: int = FILL, *, param: int = 0,
                tag: int = 0, flags: int = DESC_F_INTERRUPT) -> None:
        at = CHAOS_SG + 0x1000 * (self.sq.tail % 8)
        self.qt.memwrite(at, b"".join(struct.pack("<QII", a, n, 0) for a, n in segments))
        length = sum(n for _, n in segments)
        raw = struct.pack("<BBHIQIIQ", op, flags, 0, tag, at, len(segments), length, param)
        self.qt.memwrite(CHAOS_SQ + 32 * self.sq.tail, raw)
        self.sq.tail = (self.sq.tail + 1) % self.sq.size
        self.board.dev.write("SQ_TAIL", self.sq.tail)

    def _ram(self, length: int) -> tuple[int, int]:
        return CHAOS_DATA + self.rng.randrange(1 << 20), length

    def aim_completion(self, aim: Aim) -> None:
        """The completion record lands on the register, bytes_done or the
        tag carrying the value (an FLR through Device Control, say)."""
        base, slot, field_offset, shift = self.rng.choice(completion_placements(aim))
        value = self.rng.choice(aim.values) << 8 * shift
        self._restart(base)
        for _ in range(slot):  # the records before it
            self._submit([self._ram(1)], flags=0)
        if field_offset == CPL_TAG:
            self._submit([self._ram(64)], tag=value)
        elif value == 0:
            self._submit([(unmapped(self.rng, 64), 64)])
        elif value <= 16 << 20:
            self._submit([self._ram(value)])

    def _around(self, aim: Aim) -> tuple[int, int]:
        before = self.rng.randrange(4)
        return aim.addr - before, before + aim.width + self.rng.randrange(4)

    def _config_of(self, aim: Aim) -> PciFunction:
        return self.board.cfg if aim.bus == DEV_BUS else self.board.port

    def aim_transform(self, aim: Aim) -> None:
        """TRANSFORM over the register with a key that turns what it holds
        into a value of choice (the slot powered off, say), and RAM after
        it, so that the engine has more to do once the register acted."""
        self._restart()
        lead = self.rng.choice((0, 0, 8, 13, 4096))
        addr, length = self._around(aim)
        current = self._config_of(aim).read32(aim.offset & ~3) >> 8 * (aim.offset & 3)
        mask = (current ^ self.rng.choice(aim.values)) & ((1 << 8 * aim.width) - 1)
        if self.rng.random() < 0.2:
            mask = self.rng.getrandbits(16)
        key = 0
        for i in range(aim.width):
            key |= (mask >> 8 * i & 0xFF) << 8 * ((lead + aim.addr - addr + i) % 8)
        segments = [self._ram(lead)] if lead else []
        segments.append((addr, length))
        if self.rng.random() < 0.8:
            segments.append(self._ram(self.rng.choice((64, 4096, 0x40000))))
        self._submit(segments, TRANSFORM, param=key)

    def aim_fill(self, aim: Aim) -> None:
        self._restart()
        segments = [self._around(aim)]
        if self.rng.random() < 0.8:
            segments.append(self._ram(self.rng.choice((64, 0x40000))))
        self._submit(segments, FILL, param=self.rng.getrandbits(64))

    def aim_checksum(self, aim: Aim) -> None:
        self._restart()
        self._submit([(aim.addr & ~0xFFF, 4096), self._ram(64)], CHECKSUM)

    def _message(self, aim: Aim) -> tuple[int, int]:
        value = self.rng.choice(aim.values) << 8 * (aim.addr & 3)
        return aim.addr & ~3, value & 0xFFFFFFFF

    def _vector(self, vector: int, address: int, data: int, control: int = 0) -> None:
        for i, word in enumerate((address & 0xFFFFFFFF, address >> 32, data, control)):
            self.qt.writel(BAR2 + 16 * vector + 4 * i, word)

    def aim_msix(self, aim: Aim) -> None:
        """The MSI-X vectors' messages are writes to the register."""
        self._restart()
        address, data = self._message(aim)
        self._vector(0, address, data)
        self._vector(1, address, data)
        self.board.cfg.write16(self.board.topo.msix + 2, MSIX_ENABLE)
        self._submit([self._ram(64)])
        self._submit([(unmapped(self.rng, 64), 64)])

    def aim_msi(self, aim: Aim) -> None:
        self._restart()
        address, data = self._message(aim)
        cfg, msi = self.board.cfg, self.board.topo.msi
        cfg.write32(msi + 4, address & 0xFFFFFFFF)
        cfg.write32(msi + 8, address >> 32)
        cfg.write16(msi + 12, data & 0xFFFF)
        cfg.write16(msi + 2, cfg.read16(msi + 2) | 1)
        self._submit([self._ram(64)])

    # -- config space, vectors, properties ----------------------------------------

    def config_writes(self) -> dict[str, Callable[[], None]]:
        rng, cfg, port, topo = self.rng, self.board.cfg, self.board.port, self.board.topo
        sltctl = topo.port_pcie + PCI_EXP_SLTCTL

        def power_state() -> None:
            if topo.pm:
                cfg.write16(topo.pm + PCI_PM_CTRL, rng.choice((0, PCI_PM_D3HOT, 1, 2)))

        def bus_reset() -> None:
            port.write16(PCI_BRIDGE_CONTROL, PCI_BRIDGE_CTL_BUS_RESET)
            port.write16(PCI_BRIDGE_CONTROL, 0)

        return {
            "command": lambda: cfg.write16(
                PCI_COMMAND, rng.choice((0, 2, 4, 6, 0x406, 7, rng.getrandbits(16)))),
            "flr": lambda: cfg.write16(topo.pcie + PCI_EXP_DEVCTL, PCI_EXP_DEVCTL_BCR_FLR),
            "msi": lambda: cfg.write16(topo.msi + 2, cfg.read16(topo.msi + 2) ^ 1),
            "msix": lambda: cfg.write16(
                topo.msix + 2, rng.choice((0, MSIX_ENABLE, MSIX_ENABLE | MSIX_MASKALL))),
            "pm": power_state,
            "bar": lambda: cfg.write32(rng.choice((0x10, 0x14, 0x18)), rng.choice(
                (BAR0, BAR2, 0xFFFF_FFFF, 0, 0xE000_4000, rng.getrandbits(32)))),
            "random": lambda: cfg.write32(rng.randrange(0, 0x100, 4), rng.getrandbits(32)),
            "extended": lambda: self.qt.writel(
                mmcfg(DEV_BUS, DEV_SLOT, rng.randrange(0x100, 0x1000, 4)), rng.getrandbits(32)),
            "slot power": lambda: port.write16(sltctl, port.read16(sltctl) ^ PCI_EXP_SLTCTL_PCC),
            "secondary bus reset": bus_reset,
            "port command": lambda: port.write16(PCI_COMMAND, rng.choice((0, 2, 6, 7))),
            "port pcie": lambda: port.write16(topo.port_pcie + rng.randrange(0, 0x24, 2),
                                              rng.getrandbits(16)),
        }

    def op_config(self) -> None:
        writes = self.config_writes()
        what = self.rng.choice(list(writes))
        self.rep.log(f"config: {what}")
        writes[what]()

    def op_vectors(self) -> None:
        rng = self.rng
        for vector in range(2):
            address, data = self._message(rng.choice(self.fuzz.aims))
            address = rng.choice((address, MSG_AREA, 0xFEE0_0000, rng.getrandbits(64)))
            self._vector(vector, address, rng.choice((data, rng.getrandbits(32))),
                         rng.choice((0, 1)))
        self.rep.tick(8)

    def op_qom(self) -> None:
        self.fuzz.props.extreme(self.rng, exact=False)

    def op_rules(self) -> None:
        """A random fault-rules value: accepted exactly when valid, and its
        canonical form (qom-get) set again gives itself back."""
        text, valid = random_rules(self.rng)
        self.rep.log(f"fault-rules {text!r}")
        try:
            self.qt.qmp.cmd("qom-set", path=QOM, property="fault-rules", value=text)
            accepted = True
        except ExecuteError:
            accepted = False
        if not self.board.device_exists():
            return
        if accepted != valid:
            self.rep.violation("rules-verdict", f"fault-rules {text!r} was "
                               f"{'accepted' if accepted else 'refused'}", abort=False)
        if accepted:
            canonical = self.qt.qmp.cmd("qom-get", path=QOM, property="fault-rules")
            self.qt.qmp.cmd("qom-set", path=QOM, property="fault-rules", value=canonical)
            again = self.qt.qmp.cmd("qom-get", path=QOM, property="fault-rules")
            if again != canonical:
                self.rep.violation("rules-canonical", f"{canonical!r} set again reads "
                                   f"{again!r}", abort=False)
        self.rep.tick(3)

    # -- the big ones --------------------------------------------------------------

    def op_system_reset(self) -> None:
        self.rep.log("system_reset")
        self.board.system_reset()
        self.fuzz.recover_device()

    def op_hotplug(self) -> None:
        if self.board.hotplugs >= MAX_HOTPLUGS:
            return
        self.rep.log("hot-unplug, then device_add")
        if self.board.device_exists():
            with contextlib.suppress(ExecuteError):
                self.board.remove_device()
        self.fuzz.recover_device()
        self.rep.tick(20)

    def migrate(self) -> None:
        """Into a new machine, from a state a guest reaches: one of a few
        recipes (v1.1 item 3's example among them), or whatever chaos left."""
        self.fuzz.recover_device()
        recipe = self.rng.choice(self.RECIPES)
        self.rep.log(f"migration from state {recipe}")
        self.rep.notes[f"chaos migration from state {recipe}"] += 1
        if recipe != "as_is":
            self.fuzz.quick_program()
            getattr(self, f"state_{recipe}")()
        self.board.migrate()

    def _five(self) -> None:
        self._restart()
        for _ in range(5):
            self._submit([self._ram(64)], flags=0)
        for _ in range(3):
            clock_step(self.qt)
        self.board.dev.write("CQ_HEAD", self.board.dev.read("CQ_TAIL"))

    def state_shrunk_sq(self) -> None:
        """v1.1 item 3's example: 5 descriptors, disable, SQ_SIZE 2."""
        self._five()
        self.board.dev.write("CTRL", 0)
        self.board.dev.write("SQ_SIZE", 2)

    def state_shrunk_cq(self) -> None:
        self._five()
        self.board.dev.write("CTRL", 0)
        self.board.dev.write("CQ_SIZE", self.rng.choice((2, 0, 3)))

    def state_halted(self) -> None:
        self._restart(unmapped(self.rng, 4096) & ~63)
        self._submit([self._ram(64)])
        clock_step(self.qt)

    def state_stalled(self) -> None:
        self._restart()
        self.fuzz.props.set("fault-stall", 1, exact=False)
        self._submit([self._ram(64)])
        clock_step(self.qt)
        if self.rng.random() < 0.5:
            self.board.dev.write("CTRL", 0)

    def state_busy(self) -> None:
        self._restart()
        self.fuzz.props.set("zero-delay", False, exact=False)
        self.fuzz.props.set("bandwidth-mbps", 10, exact=False)
        self._submit([self._ram(1 << 20), self._ram(4096)], TRANSFORM, param=0x55)
        self.qt.clock_step(1_000_000)

    def state_masked(self) -> None:
        self._restart()
        self.board.dev.write("INT_MASK", INT_ALL)
        self._submit([self._ram(64)])
        self._submit([(unmapped(self.rng, 64), 64)])
        clock_step(self.qt)
