"""Reading both sides of the ownership check from a running VM.

The driver's record is drained from its trace instance in the guest
(``dmagatectl drain``: whatever ``trace_pipe`` holds, without blocking); the
device's log is read over QMP from the entry after the last one read
(``dma-log-since``). Each device's QOM path is matched to the PCI address
the driver names it by through ``query-pci``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dmagate.devicefaults import dmagate_paths
from dmagate.ownership import DmaAccess, OwnershipLedger, Violation, parse_trace
from dmagate.vm import VM

TRACE_INSTANCE = "/sys/kernel/tracing/instances/dmagate"


class OwnershipRecordError(AssertionError):
    """The check cannot vouch for a test: part of a log was lost."""


def _pci_tree(devices: list[dict[str, Any]], out: dict[tuple[int, int], dict[str, Any]]) -> None:
    for device in devices:
        out[(device["bus"], device["slot"] << 3 | device["function"])] = device
        bridge = device.get("pci_bridge")
        if bridge:
            _pci_tree(bridge.get("devices", []), out)


def pci_addresses(vm: VM, paths: list[str]) -> dict[str, str]:
    """QOM path -> the PCI address Linux names the device by."""
    tree: dict[tuple[int, int], dict[str, Any]] = {}
    for bus in vm.qmp.cmd("query-pci"):
        _pci_tree(bus["devices"], tree)

    def locate(path: str) -> tuple[int, int]:
        devfn = int(vm.qmp.cmd("qom-get", path=path, property="addr"))
        bus_path = str(vm.qmp.cmd("qom-get", path=path, property="parent_bus"))
        bridge_path = bus_path.rsplit("/", 1)[0]
        if not bridge_path or bridge_path in ("/machine/q35", "/machine/i440fx", "/machine"):
            return 0, devfn
        bridge = tree.get(locate(bridge_path))
        if bridge is None or "pci_bridge" not in bridge:
            return 0, devfn
        return int(bridge["pci_bridge"]["bus"]["secondary"]), devfn

    out = {}
    for path in paths:
        bus, devfn = locate(path)
        out[path] = f"0000:{bus:02x}:{devfn >> 3:02x}.{devfn & 7}"
    return out


# One SSH round trip, run in the SSH shell itself (no sh -c: SSH.run's
# own_shell): the record, then the instance's count of dropped events.
DRAIN = (f"dmagatectl drain && echo @@dropped && "
         f"cat {TRACE_INSTANCE}/per_cpu/cpu*/stats")


@dataclass
class OwnershipWatch:
    """One VM's ownership check, run at the end of each test that used it
    in two halves: ``read_device()``, then ``judge()`` with the driver's
    record drained by a guest command that runs anyway (the harness's
    health check's: one SSH round trip fewer per test), or by itself."""

    vm: VM
    ledger: OwnershipLedger = field(default_factory=OwnershipLedger)
    next_access: dict[str, int] = field(default_factory=dict)  # QOM path -> seq
    dropped: int = 0
    checked: int = 0
    _addresses: dict[tuple[str, ...], dict[str, str]] = field(default_factory=dict)
    _read: dict[str, list[DmaAccess]] = field(default_factory=dict)  # QOM path -> accesses

    def read_device(self) -> None:
        """The devices' accesses since the last check (QMP); raises if a
        log lost entries. The driver's record of them is drained after."""
        paths = dmagate_paths(self.vm, missing_ok=True)
        key = tuple(paths)
        if key not in self._addresses:  # the same devices: the same addresses
            self._addresses = {key: pci_addresses(self.vm, paths)}
        self._read = {}  # stays so if a log lost entries: nothing half read is judged
        self._read = {path: self._accesses(path) for path in paths}

    @property
    def drain_command(self) -> str:
        """The guest command that drains the driver's record, if the
        accesses read need it ("" if there are none to judge)."""
        return DRAIN if any(self._read.values()) else ""

    def judge(self, drained: str | None = None) -> list[Violation]:
        """Violations among the accesses ``read_device`` read; ``drained``,
        what ``drain_command`` printed (None: drain here)."""
        accesses, self._read = self._read, {}
        if not any(accesses.values()):
            return []  # nothing to judge: the record waits in the guest
        self._feed(self._drain() if drained is None else drained)
        addresses = self._addresses[tuple(accesses)]
        violations: list[Violation] = []
        for path, made in accesses.items():
            self.checked += len(made)
            violations += self.ledger.check(addresses[path], made)
        return violations

    def _drain(self) -> str:
        run = self.vm.run(DRAIN, own_shell=False)
        if run.status != 0:
            raise OwnershipRecordError(f"cannot drain the ownership record: {run.stderr}")
        return run.stdout

    def _feed(self, drained: str) -> None:
        record, marked, stats = drained.rpartition("@@dropped\n")
        if not marked:  # dmagatectl drain failed (its stderr went with the command's)
            raise OwnershipRecordError(f"cannot drain the ownership record:\n{drained}")
        self.ledger.feed(parse_trace(record))
        dropped = sum(int(line.split(":")[1]) for line in stats.splitlines()
                      if line.startswith("dropped events:"))
        if dropped > self.dropped:
            self.dropped = dropped
            raise OwnershipRecordError(
                f"the driver's ownership record dropped {dropped} events: the trace "
                f"instance ({TRACE_INSTANCE}/buffer_size_kb) is too small for this test")

    def _accesses(self, path: str) -> list[DmaAccess]:
        since = self.next_access.get(path, 1)
        entries = self.vm.qmp.cmd("qom-get", path=path, property="dma-log")
        accesses = [DmaAccess.from_qom(e) for e in entries if int(e["seq"]) >= since]
        if accesses and accesses[0].seq != since:
            self.next_access[path] = accesses[-1].seq + 1
            raise OwnershipRecordError(
                f"{path}: the device's dma-log overwrote accesses {since} to "
                f"{accesses[0].seq - 1} before they were read (raise dma-log-size)")
        if accesses:
            self.next_access[path] = accesses[-1].seq + 1
            self.vm.qmp.cmd("qom-set", path=path, property="dma-log-since",
                            value=self.next_access[path])
        return accesses
