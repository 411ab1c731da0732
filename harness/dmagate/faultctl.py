"""The dmagate device's faults over any QMP connection: what the device
offers, setting and clearing them, their counts, and waiting for the
DMAGATE_FAULT events (docs/device.md section 8, docs/faults.md).

    with connect("/path/to/qmp.sock") as faults:
        faults.set("dma-error:op=fill:every=10")     # a rule, added
        faults.set("ignore-reset", "both")            # a mode of the device
        event = faults.wait("dma-error", timeout=30)  # a FaultEvent

The device describes its own knobs (``qom-list-properties``), so the
catalogue here is only how each kind of knob is set and cleared.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from qemu.qmp.legacy import QEMUMonitorProtocol

EVENT = "DMAGATE_FAULT"
ALWAYS = 0xFFFFFFFF
QOM_CONTAINERS = ("/machine/peripheral", "/machine/peripheral-anon")
# Faults that are a mode of the whole device: property, value that sets it
# when none is given, value that clears it.
MODES: dict[str, tuple[str, Any, Any]] = {
    "ignore-reset": ("fault-ignore-reset", "both", "none"),
    "dead": ("fault-dead", True, False),
    "irq-storm": ("fault-irq-storm-ns", 100_000, 0),
    "extra-delay": ("fault-extra-delay-ns", 100_000_000, 0),
}
# Not faults, but part of setting some up.
DELAYS = ("fault-late-write-delay-ns", "fault-irq-delay-ns")
RULES = "fault-rules"


class FaultError(ValueError):
    """A fault name, value or device that does not exist."""


@dataclass(frozen=True)
class Knob:
    """One fault the device offers."""

    name: str           # as in rules and events
    prop: str           # its QOM property
    kind: str           # "count" (the next N), "mode" (of the device) or "delay"
    rules: bool         # can be the FAULT of a rule
    description: str


@dataclass(frozen=True)
class FaultEvent:
    """A DMAGATE_FAULT event (qapi/dmagate.json)."""

    path: str
    fault: str
    virtual_time_ns: int
    device: str | None = None
    sq_index: int | None = None
    tag: int | None = None
    rule: int | None = None

    @classmethod
    def from_qmp(cls, event: dict[str, Any]) -> FaultEvent:
        data = event["data"]
        return cls(path=data["path"], fault=data["fault"],
                   virtual_time_ns=data["virtual-time-ns"], device=data.get("device"),
                   sq_index=data.get("sq-index"), tag=data.get("tag"), rule=data.get("rule"))


class DeviceFaults:
    """The faults of one dmagate device, through a connected QMP monitor."""

    def __init__(self, monitor: QEMUMonitorProtocol, device: str | None = None) -> None:
        self.monitor = monitor
        self.path = resolve_device(monitor, device)
        self._knobs: list[Knob] | None = None

    def knobs(self) -> list[Knob]:
        """Every fault knob of the device, as the device itself lists them."""
        if self._knobs is None:
            props = _qmp(self.monitor, "qom-list-properties", typename="dmagate")
            self._knobs = [knob for p in props if (knob := _knob(p)) is not None]
        return self._knobs

    def knob(self, name: str) -> Knob:
        for knob in self.knobs():
            if name in (knob.name, knob.prop):
                return knob
        names = ", ".join(k.name for k in self.knobs())
        raise FaultError(f"no fault {name!r} on this device (it has: {names})")

    def get(self, prop: str) -> Any:
        return _qmp(self.monitor, "qom-get", path=self.path, property=prop)

    def _qom_set(self, prop: str, value: Any) -> None:
        reply = self.monitor.cmd_raw("qom-set", {"path": self.path, "property": prop,
                                                 "value": value})
        if "error" in reply:
            raise FaultError(reply["error"]["desc"])

    def set(self, fault: str, value: str | int | bool | None = None) -> None:
        """Arm a fault. ``fault`` with a ``:`` is a rule, added to the
        device's rules; a counted fault takes a count (default 1, "always"
        for every descriptor); a mode or delay takes its value."""
        if ":" in fault:
            if value is not None:
                raise FaultError("a rule carries its parameters itself: FAULT:KEY=VALUE...")
            self.knob(fault.partition(":")[0])
            current = self.get(RULES)
            self._qom_set(RULES, f"{current};{fault}" if current else fault)
            return
        knob = self.knob(fault)
        self._qom_set(knob.prop, _value(knob, value))

    def set_rules(self, text: str) -> None:
        """Replace every rule (their counts start afresh)."""
        self._qom_set(RULES, text)

    def clear(self, fault: str | None = None) -> None:
        """Disarm one fault (its count, its rules, or its mode), or all."""
        knobs = self.knobs() if fault is None else [self.knob(fault)]
        for knob in knobs:
            if knob.kind == "count" and knob.name != "spurious-irq":
                self._qom_set(knob.prop, 0)
            elif knob.kind == "mode":
                self._qom_set(knob.prop, MODES[knob.name][2])
        if fault is None:
            self._qom_set(RULES, "")
        elif knobs[0].rules:
            kept = [r for r in self.rules() if r["fault"] != knobs[0].name]
            self._qom_set(RULES, ";".join(r["rule"] for r in kept))

    def rules(self) -> list[dict[str, Any]]:
        """Each rule: canonical text, fault, how often it matched and fired."""
        return list(self.get("fault-rule-status"))

    def show(self) -> dict[str, Any]:
        """What is armed: counts that are not 0, modes that are on, the
        rules with their counts, and the device's fault statistic."""
        armed: dict[str, Any] = {}
        for knob in self.knobs():
            value = self.get(knob.prop)
            if knob.kind == "delay" or value != _cleared(knob):
                armed[knob.name] = value
        return {"device": self.path, "armed": armed, "rules": self.rules(),
                "stat-faults": self.get("stat-faults")}

    def next_event(self, timeout: float = 0.0) -> FaultEvent | None:
        """This device's next DMAGATE_FAULT event, waiting ``timeout``
        seconds at most (0: only one already here), or None."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = self.monitor.pull_event(wait=float(left) if left > 0 else False)
            except TimeoutError:
                return None
            if event is None:
                return None
            if event.get("event") == EVENT and event["data"]["path"] == self.path:
                return FaultEvent.from_qmp(event)

    def wait(self, fault: str | None = None, timeout: float = 30.0, count: int = 1,
             ) -> list[FaultEvent]:
        """Wait for ``count`` events (of ``fault``, or any); raise
        TimeoutError, saying what did arrive, if they do not."""
        if fault is not None:
            self.knob(fault)
        deadline = time.monotonic() + timeout
        seen: list[FaultEvent] = []
        while len(seen) < count:
            event = self.next_event(max(deadline - time.monotonic(), 0.0))
            if event is None:
                raise TimeoutError(f"{len(seen)} of {count} {fault or 'fault'} events "
                                   f"came in {timeout:g} s")
            if fault is None or event.fault == fault:
                seen.append(event)
        return seen


def dmagate_devices(monitor: QEMUMonitorProtocol) -> list[str]:
    """QOM paths of the machine's dmagate devices, in creation order."""
    paths = []
    for container in QOM_CONTAINERS:
        for child in _qmp(monitor, "qom-list", path=container):
            if child["type"] == "child<dmagate>":
                paths.append(f"{container}/{child['name']}")
    return paths


def resolve_device(monitor: QEMUMonitorProtocol, device: str | None) -> str:
    """A QOM path from an id, a path, or None (the first dmagate)."""
    paths = dmagate_devices(monitor)
    if not paths:
        raise FaultError("the machine has no dmagate device")
    if device is None:
        return paths[0]
    for path in paths:
        if device in (path, path.rsplit("/", 1)[-1]):
            return path
    raise FaultError(f"no dmagate device {device!r} (there are: {', '.join(paths)})")


@contextmanager
def connect(socket_path: str, device: str | None = None) -> Iterator[DeviceFaults]:
    """A QMP connection to ``socket_path`` and the faults of one device on it."""
    monitor = QEMUMonitorProtocol(socket_path)
    monitor.connect()
    try:
        yield DeviceFaults(monitor, device)
    finally:
        monitor.close()


def _qmp(monitor: QEMUMonitorProtocol, command: str, **arguments: Any) -> Any:
    """A command's result, typed for what the caller knows it returns."""
    return monitor.cmd(command, **arguments)


def _knob(prop: dict[str, Any]) -> Knob | None:
    name: str = prop["name"]
    if not name.startswith("fault-") or name in (RULES, "fault-rule-status"):
        return None
    description = prop.get("description", "")
    short = name.removeprefix("fault-")
    if name in DELAYS:
        return Knob(short, name, "delay", False, description)
    for mode, (mode_prop, _, _) in MODES.items():
        if name == mode_prop:
            return Knob(mode, name, "mode", False, description)
    return Knob(short, name, "count", short != "spurious-irq", description)


def _value(knob: Knob, value: str | int | bool | None) -> Any:
    if knob.kind == "mode":
        return _mode_value(knob, value)
    if value is None:
        if knob.kind == "delay":
            raise FaultError(f"{knob.name}: give the delay in ns")
        return 1
    return ALWAYS if value == "always" else _number(knob, value)


def _mode_value(knob: Knob, value: str | int | bool | None) -> Any:
    default = MODES[knob.name][1]
    if value is None:
        return default
    if isinstance(default, bool):
        if not isinstance(value, str):
            return bool(value)
        if value.lower() not in ("on", "off", "true", "false", "1", "0"):
            raise FaultError(f"{knob.name}: {value!r} is not on or off")
        return value.lower() in ("on", "true", "1")
    if isinstance(default, int):
        return _number(knob, value)
    return str(value)


def _number(knob: Knob, value: str | int | bool) -> int:
    try:
        return int(value, 0) if isinstance(value, str) else int(value)
    except ValueError:
        raise FaultError(f"{knob.name}: {value!r} is not a number") from None


def _cleared(knob: Knob) -> Any:
    return MODES[knob.name][2] if knob.kind == "mode" else 0
