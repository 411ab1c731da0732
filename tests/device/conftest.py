"""Device tests: QEMU built from source, the dmagate device, qtest, no guest."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dmagate.devdriver import Dmagate
from dmagate.paths import BuildPaths
from dmagate.qtest import QTestMachine
from dmagate.sanitizer import format_reports

SLOT = 4
PORT_SLOT = 5  # a pcie-root-port, for hot-plug; the device is then on bus 1
SQ, CQ, SG, MSG = 0x100000, 0x110000, 0x120000, 0x140000
DATA = 0x1000000
RING = 64


@pytest.fixture
def make_machine(tmp_path: Path) -> Iterator[Callable[..., QTestMachine]]:
    machines: list[QTestMachine] = []
    paths = BuildPaths.discover()
    if not paths.qemu.exists():
        fix = "check DMAGATE_QEMU" if paths.qemu_override else "run `make qemu`"
        pytest.fail(f"no QEMU at {paths.qemu}: {fix}")

    def make(device: str = "", extra: tuple[str, ...] = (), memory_mib: int = 512,
             behind_root_port: bool = False, iommu: bool = False) -> QTestMachine:
        options = f",{device}" if device else ""
        placement = (
            # Native PCIe hot-plug on the port (q35 would otherwise use ACPI's).
            ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
             "-device", f"pcie-root-port,id=rp0,chassis=1,addr={PORT_SLOT}",
             "-device", f"dmagate,id=dg,bus=rp0{options}"]
            if behind_root_port else ["-device", f"dmagate,id=dg,addr={SLOT}{options}"]
        )
        # The IOMMU goes first: PCI devices find their address space at realize.
        first = ["-device", "intel-iommu,intremap=off"] if iommu else []
        machine = QTestMachine(
            paths.qemu,
            ["-d", "guest_errors", *first, *placement, *extra],
            tmp_path / f"qemu{len(machines)}",
            memory_mib=memory_mib,
        )
        machines.append(machine)
        return machine

    yield make
    for machine in machines:
        machine.close()
    # Only now is every report in: LeakSanitizer's come as QEMU exits. A
    # QEMU that a report killed mid-test already failed the call; its
    # report fails the teardown as well, so it is never lost.
    found = [format_reports(reports, m.stderr_log)
             for m in machines if (reports := m.sanitizer_reports())]
    if found:
        pytest.fail("\n\n".join(found), pytrace=False)


@pytest.fixture
def machine(make_machine: Callable[..., QTestMachine]) -> QTestMachine:
    return make_machine()


@pytest.fixture
def dev(machine: QTestMachine) -> Dmagate:
    """The device with rings set up and enabled, default (timed) mode."""
    device = Dmagate(machine, SLOT)
    device.setup(SQ, RING, CQ, RING, SG)
    return device


def qom_path() -> str:
    return "/machine/peripheral/dg"


def guest_errors(machine: QTestMachine) -> list[str]:
    return re.findall(r"dmagate: .*", machine.stderr())


def save_state(source: QTestMachine, state: Path, timeout: float = 30.0) -> None:
    """Migrate ``source`` into the file ``state`` (source stops, stays alive)."""
    source.qmp.cmd("migrate", uri=f"file:{state}")
    deadline = time.monotonic() + timeout
    while (status := source.qmp.cmd("query-migrate").get("status")) != "completed":
        assert status != "failed", source.qmp.cmd("query-migrate")
        assert time.monotonic() < deadline, f"migration still {status}"
        time.sleep(0.02)


def load_state(make_machine: Callable[..., QTestMachine], state: Path, *, device: str = "",
               extra: tuple[str, ...] = (), timeout: float = 30.0) -> tuple[QTestMachine, str]:
    """Start a machine like the source (same ``device``/``extra``) and load
    ``state`` into it without exiting on failure. Returns the machine and the
    migration's final status: "completed" (then the VM runs again) or
    "failed" (the stream was refused; QEMU is still up)."""
    target = make_machine(device, extra=(*extra, "-incoming", "defer"))
    target.qmp.cmd("migrate-incoming", uri=f"file:{state}", **{"exit-on-error": False})
    deadline = time.monotonic() + timeout
    while (status := target.qmp.cmd("query-migrate").get("status")) not in ("completed",
                                                                             "failed"):
        assert target.alive(), f"QEMU died loading the stream:\n{target.stderr()}"
        assert time.monotonic() < deadline, f"incoming migration still {status}"
        time.sleep(0.02)
    if status == "completed":
        target.qmp.cmd("cont")
    return target, status
