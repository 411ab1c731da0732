"""The device's properties (qom-set) and their ranges: each set with the
spec's verdict, in range accepted and read back, out of range refused."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from dmagate.qmp import ExecuteError

from .board import Board
from .layout import (
    ALWAYS,
    ENABLED,
    MAX_BANDWIDTH_MBPS,
    MAX_DELAY_NS,
    MAX_SPURIOUS,
    QOM,
    U32_MAX,
    U64_MAX,
)
from .report import Reporter


@dataclass(frozen=True)
class Prop:
    name: str
    maximum: int  # unused for "bool" and "mode"
    kind: str  # "timing", "count", "spurious", "bool" or "mode"
    minimum: int = 0  # the least value but 0


# The rogue faults (datasheet §8): counted, or modes of the whole device.
ROGUE_COUNTS = ("late-write", "stray-write", "delayed-irq", "out-of-order", "wrong-tag")
IGNORE_RESET = ("none", "soft", "flr", "both")
MIN_STORM_NS = 1000
STORM_FLOOR_NS = 100_000  # the densest storm the fuzz keeps running
PROPS = (
    Prop("latency-ns", MAX_DELAY_NS, "timing"),
    Prop("bandwidth-mbps", MAX_BANDWIDTH_MBPS, "timing"),
    Prop("fault-extra-delay-ns", MAX_DELAY_NS, "timing"),
    Prop("fault-late-write-delay-ns", MAX_DELAY_NS, "timing"),
    Prop("fault-irq-delay-ns", MAX_DELAY_NS, "timing"),
    Prop("fault-irq-storm-ns", MAX_DELAY_NS, "timing", MIN_STORM_NS),
    Prop("fault-spurious-irq", MAX_SPURIOUS, "spurious"),
    *(Prop(f"fault-{name}", U32_MAX, "count") for name in (
        "dma-error", "drop-irq", "duplicate-completion", "corrupt", "partial", "stall",
        *ROGUE_COUNTS)),
    Prop("zero-delay", 0, "bool"),
    Prop("fault-dead", 0, "bool"),
    Prop("fault-ignore-reset", 0, "mode"),
)
PROP = {p.name: p for p in PROPS}
# Put back between phases: the checked phase's model knows none of them.
ROGUE_CLEARED: dict[str, object] = {
    "fault-dead": False, "fault-ignore-reset": "none", "fault-irq-storm-ns": 0,
    "fault-rules": "", **{f"fault-{name}": 0 for name in ROGUE_COUNTS},
}
STATS = ("stat-descriptors", "stat-bytes", "stat-interrupts", "stat-errors", "stat-faults")


def extremes(maximum: int) -> tuple[int, ...]:
    return (0, 1, maximum, maximum + 1, 1 << 32, 1 << 63, U64_MAX)


class Properties:
    """qom-set with the spec's verdict: in range accepted and read back,
    out of range refused with a QMP error (v1.1 item 2)."""

    def __init__(self, board: Board, rep: Reporter) -> None:
        self.board, self.rep = board, rep

    @staticmethod
    def in_range(prop: Prop, value: Any) -> bool:
        if prop.kind == "bool":
            return isinstance(value, bool)
        if prop.kind == "mode":
            return value in IGNORE_RESET
        return isinstance(value, int) and not isinstance(value, bool) and \
            (value == 0 or prop.minimum <= value <= prop.maximum)

    def set(self, name: str, value: Any, *, exact: bool = True) -> bool:
        """``exact``: the device is idle, so what was set reads back as set."""
        prop = PROP[name]
        want = self.in_range(prop, value)
        try:
            self.board.qt.qmp.cmd("qom-set", path=QOM, property=name, value=value)
            accepted, why = True, ""
        except ExecuteError as err:
            accepted, why = False, str(err)
            if not self.board.device_exists():
                return False  # unplugged (by the guest or its DMA): nothing to say
        self.rep.tick()
        if accepted != want:
            limit = {"bool": "a boolean", "mode": "|".join(IGNORE_RESET)}.get(
                prop.kind, f"0 or {max(prop.minimum, 1)}..{prop.maximum}")
            verdict = "accepted" if accepted else f"refused ({why})"
            self.rep.violation("property-range", f"qom-set {name}={value!r} was {verdict}; "
                               f"v1.1 item 2 says {limit}", abort=False)
        if accepted:
            self._read_back(prop, value, exact)
        return accepted

    def _read_back(self, prop: Prop, value: Any, exact: bool) -> None:
        got = self.board.qt.qmp.cmd("qom-get", path=QOM, property=prop.name)
        if prop.kind == "spurious":
            held = not self.board.dev.read("STATUS") & ENABLED
            good = got == (value if held else 0) if exact else got in (0, value)
        elif prop.kind == "count" and not exact and value != ALWAYS:
            good = value - 3 <= got <= value  # the engine may have fired it since
        else:
            good = got == value
        if not good:
            self.rep.violation("property-readback", f"qom-set {prop.name}={value!r} was "
                               f"accepted, qom-get says {got!r}", abort=False)

    def extreme(self, rng: random.Random, *, exact: bool) -> None:
        """One property at one of its extremes (or a read-only one set)."""
        if rng.random() < 0.05:
            name = rng.choice(STATS)
            try:
                self.board.qt.qmp.cmd("qom-set", path=QOM, property=name, value=1)
            except ExecuteError:
                return
            self.rep.violation("property-range", f"qom-set {name} (read-only) was accepted",
                               abort=False)
            return
        prop = rng.choice(PROPS)
        if prop.kind == "bool":
            self.set(prop.name, rng.choice([True, False, True, 1, "on"]), exact=exact)
        elif prop.kind == "mode":
            self.set(prop.name, rng.choice([*IGNORE_RESET, "", "soft|flr", 3]), exact=exact)
        else:
            value = rng.choice([*extremes(prop.maximum), rng.randrange(prop.maximum + 1),
                                prop.minimum, prop.minimum - 1])
            if self.set(prop.name, value, exact=exact) and prop.minimum and \
                    0 < value < STORM_FLOOR_NS:
                # Range checked; a microsecond storm through 100 ms clock
                # steps would only make the run slow.
                self.set(prop.name, STORM_FLOOR_NS, exact=exact)

    def clear_rogue(self) -> None:
        """Every rogue fault and rule off (the device is there)."""
        for name, value in ROGUE_CLEARED.items():
            self.board.qt.qmp.cmd("qom-set", path=QOM, property=name, value=value)
