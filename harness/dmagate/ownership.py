"""The ownership check: the device's DMA access log laid against the
driver's ownership record.

The driver records (docs/driver.md, "Ownership record") every piece of
memory it gives the device to address (rings, SG lists, a session's
buffer, or with dma_map=transfer each transfer's pages) and every range of
a buffer that changes hands, each stamped with the device's clock. The
device logs every bus access it makes with the same clock
(docs/device.md, section 8). An access that reached memory (``ok``) is a
violation when, at its time, it touched

- a page of a session's buffer outside a window in which the driver had
  given that page to the device, or
- memory of another use than the access's (data in a ring, a descriptor
  read from a buffer), or
- memory the driver had given the device but taken back (a freed ring, a
  buffer unmapped), or
- memory the driver never gave it at all, once the record is complete for
  that device (its probe was seen).

Interrupt messages are not memory and are not checked. Both sides use bus
addresses (IOVAs behind an IOMMU), so the check holds with and without
one; with one, an access the IOMMU refused is not ``ok`` and touched
nothing.

Pure data in, violations out: ``ownership_watch`` reads both logs from a VM.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

PAGE = 4096
TIME_UNKNOWN = 2**64 - 1  # the TIME register of a device off the bus
RING_KINDS = frozenset({"sq", "cq", "sgl"})
# The memory each kind of access is for: a descriptor is read from the
# submission ring, never from a buffer; data goes to buffers, never to a ring.
KIND_REGION = {"descriptor": "sq", "sg-list": "sgl", "completion": "cq", "data": "buffer"}

_EVENT = re.compile(
    r"\b(?P<name>dmagate_dma_map|dmagate_dma_unmap|dmagate_owner): (?P<fields>.*)$"
)


@dataclass(frozen=True)
class TraceEvent:
    """One line of the driver's ownership record."""

    name: str  # "map", "unmap" or "owner"
    epoch: str
    seq: int
    dev: str  # PCI address, 0000:00:03.0
    time: int  # device ns; TIME_UNKNOWN if the device did not answer
    what: str = ""  # map/unmap: sq, cq, sgl or buffer
    sess: int = 0
    xfer: int = 0
    offset: int = 0
    bus: int = 0
    length: int = 0
    to_device: bool = False


@dataclass(frozen=True)
class DmaAccess:
    """One entry of the device's dma-log."""

    seq: int
    kind: str
    dir: str
    addr: int
    length: int
    ok: bool
    time: int
    sq_index: int | None = None

    @classmethod
    def from_qom(cls, entry: dict[str, object]) -> DmaAccess:
        index = entry.get("sq-index")
        return cls(
            seq=int(str(entry["seq"])),
            kind=str(entry["kind"]),
            dir=str(entry["dir"]),
            addr=int(str(entry["addr"])),
            length=int(str(entry["len"])),
            ok=bool(entry["ok"]),
            time=int(str(entry["time-ns"])),
            sq_index=None if index is None else int(str(index)),
        )

    def describe(self) -> str:
        index = "" if self.sq_index is None else f", SQ index {self.sq_index}"
        return (f"{self.kind} {self.dir} of {self.length} bytes at bus 0x{self.addr:x} "
                f"(device time {self.time} ns{index})")


def parse_trace(text: str) -> list[TraceEvent]:
    """The ownership events in trace output (``trace_pipe`` lines)."""
    events = []
    for line in text.splitlines():
        match = _EVENT.search(line)
        if not match:
            continue
        fields = dict(word.split("=", 1) for word in match["fields"].split() if "=" in word)
        name = match["name"].removeprefix("dmagate_").removeprefix("dma_")
        events.append(TraceEvent(
            name=name,
            epoch=fields["epoch"],
            seq=int(fields["seq"]),
            dev=fields["dev"],
            time=int(fields["time"]),
            what=fields.get("what", "buffer"),
            sess=int(fields["sess"]),
            xfer=int(fields["xfer"]),
            offset=int(fields["offset"], 16),
            bus=int(fields.get("bus", "0"), 16),
            length=int(fields["len"], 16),
            to_device=fields.get("to") == "device",
        ))
    return events


@dataclass
class Region:
    """Memory the device may address: [bus, bus + length) from start to end."""

    what: str
    sess: int
    xfer: int
    offset: int  # in the session's buffer (buffer regions)
    bus: int
    length: int
    start: int
    end: int | None = None

    def live(self, time: int) -> bool:
        return self.start <= time and (self.end is None or time <= self.end)

    def describe(self) -> str:
        if self.what in RING_KINDS:
            name = {"sq": "the submission ring", "cq": "the completion ring",
                    "sgl": "an SG list"}[self.what]
        else:
            owner = f"transfer {self.xfer} of " if self.xfer else ""
            name = f"{owner}session {self.sess}'s buffer at offset 0x{self.offset:x}"
        return f"{name} (bus 0x{self.bus:x}+0x{self.length:x})"


@dataclass
class Window:
    """Pages [offset, offset + length) of a session's buffer are the device's."""

    sess: int
    xfer: int
    offset: int
    length: int
    start: int
    end: int | None = None

    def covers(self, offset: int, time: int) -> bool:
        return (self.offset <= offset < self.offset + self.length
                and self.start <= time and (self.end is None or time <= self.end))


@dataclass
class WindowIndex:
    """One session's windows by start time, to find the one that covers a
    page at a time without going through all of them: a stress run makes
    thousands, each over the whole buffer. ``reach[i]`` is the latest end
    of windows[0..i] (inf while one is open): below an access's time, no
    earlier window can cover it."""

    starts: list[int]
    windows: list[Window]
    reach: list[float]

    @classmethod
    def of(cls, windows: list[Window]) -> WindowIndex:
        ordered = sorted(windows, key=lambda w: w.start)
        reach: list[float] = []
        latest = -math.inf
        for window in ordered:
            latest = max(latest, math.inf if window.end is None else window.end)
            reach.append(latest)
        return cls([w.start for w in ordered], ordered, reach)

    def covers(self, offset: int, time: int) -> bool:
        i = bisect_right(self.starts, time) - 1
        while i >= 0 and self.reach[i] >= time:
            if self.windows[i].covers(offset, time):
                return True
            i -= 1
        return False


@dataclass(frozen=True)
class Violation:
    dev: str
    access: DmaAccess
    reason: str

    def describe(self) -> str:
        return f"{self.dev}: {self.access.describe()}: {self.reason}"


@dataclass
class DeviceLedger:
    """What one device was given, and when, in one epoch of the driver."""

    epoch: str
    complete: bool = False  # the probe's rings are in the record
    regions_by_page: dict[int, list[Region]] = field(default_factory=lambda: defaultdict(list))
    open_regions: dict[tuple[str, int, int, int], Region] = field(default_factory=dict)
    windows: dict[int, list[Window]] = field(default_factory=lambda: defaultdict(list))
    open_windows: dict[tuple[int, int], Window] = field(default_factory=dict)
    first_time: int | None = None
    last_time: int = 0
    # Opened or closed while the device did not answer: the time is fixed at
    # the next time the driver reads its clock (a device that answers none
    # makes no access either, so until then nothing is judged by them).
    unstamped: list[tuple[Region | Window, str]] = field(default_factory=list)
    # Built when accesses are judged, dropped when the record changes.
    _window_index: dict[int, WindowIndex] = field(default_factory=dict, repr=False)

    def _stamp(self, time: int) -> None:
        if time == TIME_UNKNOWN:
            return
        self.last_time = max(self.last_time, time)
        if self.first_time is None:
            self.first_time = time
        for item, edge in self.unstamped:
            setattr(item, edge, time)
        self.unstamped.clear()

    def _mark(self, item: Region | Window, edge: str, time: int) -> None:
        if time == TIME_UNKNOWN:
            setattr(item, edge, TIME_UNKNOWN if edge == "start" else None)
            self.unstamped.append((item, edge))
        else:
            setattr(item, edge, time)

    def apply(self, event: TraceEvent) -> None:
        self._window_index.clear()
        self._stamp(event.time)
        key = (event.what, event.sess, event.xfer, event.bus)
        if event.name == "map":
            region = Region(event.what, event.sess, event.xfer, event.offset, event.bus,
                            event.length, 0)
            self._mark(region, "start", event.time)
            self.open_regions[key] = region
            for page in range(event.bus // PAGE, -(-(event.bus + event.length) // PAGE)):
                self.regions_by_page[page].append(region)
            if event.what in RING_KINDS:
                self.complete = True
        elif event.name == "unmap":
            open_region = self.open_regions.pop(key, None)
            if open_region is not None:
                self._mark(open_region, "end", event.time)
        elif event.to_device:
            window = Window(event.sess, event.xfer, event.offset, event.length, 0)
            self._mark(window, "start", event.time)
            self.open_windows[(event.sess, event.xfer)] = window
            self.windows[event.sess].append(window)
        else:
            open_window = self.open_windows.pop((event.sess, event.xfer), None)
            if open_window is not None:
                self._mark(open_window, "end", event.time)

    def close_all(self) -> None:
        """The driver that made this record is gone (a module reload)."""
        self._window_index.clear()
        for region in self.open_regions.values():
            region.end = self.last_time
        for window in self.open_windows.values():
            window.end = self.last_time
        self.open_regions.clear()
        self.open_windows.clear()

    def judge(self, access: DmaAccess) -> str:
        """Why the access broke ownership, or ""."""
        last = access.addr + max(access.length, 1)
        for page in range(access.addr // PAGE, -(-last // PAGE)):
            reason = self._judge_page(page, access.time, KIND_REGION.get(access.kind, ""))
            if reason:
                return reason
        return ""

    def _judge_page(self, page: int, time: int, use: str) -> str:
        candidates = self.regions_by_page.get(page, [])
        live = [r for r in candidates if r.live(time)]
        if live:
            return self._judge_live(live, page, time, use)
        ended = [r for r in candidates if r.end is not None and r.end < time]
        if ended:
            region = max(ended, key=lambda r: r.end or 0)
            return f"{region.describe()} was taken back at device time {region.end} ns"
        return "memory the driver never gave the device" if self.complete else ""

    def _judge_live(self, live: list[Region], page: int, time: int, use: str) -> str:
        fit = [r for r in live if r.what == use]
        if not fit:
            return f"it is {live[0].describe()}, not memory for this access"
        for region in fit:
            offset = region.offset + page * PAGE - region.bus
            if region.what in RING_KINDS or self._owned(region.sess, offset, time):
                return ""
        region = fit[0]
        offset = region.offset + page * PAGE - region.bus
        return (f"session {region.sess}'s page at offset 0x{offset:x} belongs to the "
                f"program then ({self._last_window(region.sess, offset, time)})")

    def _owned(self, sess: int, offset: int, time: int) -> bool:
        """Did a window give the device this page of the session at ``time``?"""
        index = self._window_index.get(sess)
        if index is None:
            index = self._window_index[sess] = WindowIndex.of(self.windows[sess])
        return index.covers(offset, time)

    def _last_window(self, sess: int, offset: int, time: int) -> str:
        before = [w for w in self.windows[sess]
                  if w.offset <= offset < w.offset + w.length and w.start <= time]
        if not before:
            return "the device never owned it"
        window = max(before, key=lambda w: w.start)
        return (f"transfer {window.xfer} owned it from {window.start} ns to "
                f"{window.end} ns")


@dataclass
class OwnershipLedger:
    """The record of one VM, fed as it is drained; devices by PCI address."""

    devices: dict[str, DeviceLedger] = field(default_factory=dict)
    # Device times no record covers (a reload cut it): accesses then are not judged.
    gaps: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    unjudged: int = 0

    def feed(self, events: Iterable[TraceEvent]) -> None:
        by_epoch: dict[str, list[TraceEvent]] = defaultdict(list)
        order: list[str] = []
        for event in events:
            if event.epoch not in by_epoch:
                order.append(event.epoch)
            by_epoch[event.epoch].append(event)
        for epoch in order:
            for event in sorted(by_epoch[epoch], key=lambda e: e.seq):
                self._apply(event)

    def _apply(self, event: TraceEvent) -> None:
        ledger = self.devices.get(event.dev)
        if ledger is None or ledger.epoch != event.epoch:
            fresh = DeviceLedger(event.epoch)
            if ledger is not None:
                ledger.close_all()
                self.gaps[event.dev].append((ledger.last_time, event.time))
                fresh.regions_by_page = ledger.regions_by_page  # freed memory stays known
                fresh.windows = ledger.windows
            self.devices[event.dev] = ledger = fresh
        ledger.apply(event)

    def check(self, dev: str, accesses: Iterable[DmaAccess]) -> list[Violation]:
        ledger = self.devices.get(dev)
        violations = []
        for access in accesses:
            if not access.ok or access.kind == "interrupt":
                continue
            if ledger is None or ledger.first_time is None or access.time < ledger.first_time \
                    or any(lo < access.time < hi for lo, hi in self.gaps[dev]):
                self.unjudged += 1
                continue
            reason = ledger.judge(access)
            if reason:
                violations.append(Violation(dev, access, reason))
        return violations
