"""The machine the fuzz drives: q35, a pcie-root-port and the device behind
it, and what keeps it usable (platform, hot-plug, migration, system reset)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmagate.devdriver import (
    MCH_PCIEXBAR,
    PCI_CAP_ID_EXP,
    PCI_CAP_ID_MSI,
    PCI_CAP_ID_MSIX,
    PCI_COMMAND,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_EXP_SLTCTL,
    Dmagate,
    PciFunction,
    enable_mmconfig,
    open_root_port,
)
from dmagate.qmp import ExecuteError
from dmagate.qtest import QTestMachine

from ..conftest import PORT_SLOT, load_state, save_state
from .layout import (
    BAR0,
    BAR2,
    CTRL_ENABLE,
    CTRL_RESET,
    DEV_BUS,
    DEV_SLOT,
    DEVICE_ID,
    PCI_BRIDGE_CONTROL,
    PCI_CAP_ID_PM,
    PCI_EXP_LNKCTL,
    PCI_EXP_SLTCTL_EIC,
    PCI_EXP_SLTCTL_PCC,
    PCI_EXP_SLTCTL_PWR_IND_OFF,
    PCI_EXP_SLTSTA,
    PCI_EXP_SLTSTA_EIS,
    PCI_PM_CTRL,
    QOM,
    RAM_MIB,
)
from .report import Reporter


@dataclass(frozen=True)
class Topology:
    """Capability offsets, found by walking the lists (they move between versions)."""

    pcie: int
    msi: int
    msix: int
    pm: int  # 0: no PM capability
    port_pcie: int

    @classmethod
    def discover(cls, dev: PciFunction, port: PciFunction) -> Topology:
        return cls(dev.capability(PCI_CAP_ID_EXP), dev.capability(PCI_CAP_ID_MSI),
                   dev.capability(PCI_CAP_ID_MSIX), dev.capability(PCI_CAP_ID_PM),
                   port.capability(PCI_CAP_ID_EXP))


class IntxLine:
    """The device's INTx line as qtest's interception of the IOAPIC sees it."""

    def __init__(self) -> None:
        self.gsi: int | None = None
        self.level = False
        self.raises = 0
        self.trusted = True  # False after a migration, until the line is known low

    def feed(self, events: Sequence[tuple[str, int]]) -> None:
        for what, gsi in events:
            if gsi == self.gsi:
                up = what == "raise"
                if up and not self.level:
                    self.raises += 1
                self.level = up

    def usable(self) -> bool:
        return self.gsi is not None and self.trusted


class Board:
    """q35, a pcie-root-port, the device behind it, MMCONFIG on: the
    machine, and what keeps it usable (platform, hot-plug, migration,
    system reset)."""

    def __init__(self, make_machine: Callable[..., QTestMachine], tmp: Path,
                 options: dict[str, Any], rep: Reporter) -> None:
        self._factory = make_machine
        self.tmp, self.options, self.rep = tmp, options, rep
        self.last_made: QTestMachine | None = None
        self.source_clock = 0  # virtual time of a migration's source
        self.migrations = self.hotplugs = 0
        self.line = IntxLine()
        self.qt = self._make(self.option_string())
        self._attach()
        enable_mmconfig(self.qt)
        self.port = open_root_port(self.qt, PORT_SLOT)
        self.topo = Topology.discover(self.cfg, self.port)
        self.slot_control = self.port.read16(self.topo.port_pcie + PCI_EXP_SLTCTL)
        self.interlock = self.port.read16(self.topo.port_pcie + PCI_EXP_SLTSTA) & \
            PCI_EXP_SLTSTA_EIS
        self.program()
        self._learn_gsi()

    def _make(self, device: str, extra: tuple[str, ...] = ()) -> QTestMachine:
        if os.environ.get("DMAGATE_FUZZ_TRACE", "") not in ("", "0"):
            extra = (*extra, "-trace", "dmagate_*", "-trace", "-dmagate_mmio_*")
        machine = self._factory(device, extra=extra, behind_root_port=True, memory_mib=RAM_MIB)
        self.last_made = machine
        if "-incoming" in extra:
            # qtest's virtual clock is its own counter, not migrated: start the
            # destination where the source was, as the virtual clock would.
            machine.clock_step(max(1, self.source_clock - machine.clock_step(1)))
        return machine

    def option_string(self) -> str:
        return ",".join(f"{k}={'on' if v is True else v}" for k, v in self.options.items())

    def _attach(self) -> None:
        self.qt.irq_intercept_in("ioapic")
        self.port = PciFunction(self.qt, 0, PORT_SLOT)
        self.cfg = PciFunction(self.qt, DEV_BUS, DEV_SLOT)
        self.dev = Dmagate(self.qt, DEV_SLOT, bar0=BAR0, bar2=BAR2, configure=False, bus=DEV_BUS)

    def sync_irqs(self) -> None:
        events, self.qt.irq_events = self.qt.irq_events, []
        self.line.feed(events)

    def _learn_gsi(self) -> None:
        """Enabling with no rings halts with INT_STATUS.ERROR: INTA goes up."""
        self.qt.irq_events.clear()
        self.dev.write("CTRL", CTRL_ENABLE)
        self.dev.read("STATUS")
        raised = [gsi for what, gsi in self.qt.irq_events if what == "raise"]
        self.line.gsi = raised[-1] if raised else None
        self.dev.write("CTRL", CTRL_RESET)
        self.dev.read("STATUS")
        self.qt.irq_events.clear()
        self.line.level = False

    def platform(self) -> None:
        """MMCONFIG, the root port's buses, window and command, the slot
        powered as it was at start, no secondary bus reset, link enabled."""
        enable_mmconfig(self.qt)
        self.port = open_root_port(self.qt, PORT_SLOT)
        self.port.write16(PCI_BRIDGE_CONTROL, 0)
        sltctl = self.topo.port_pcie + PCI_EXP_SLTCTL
        if self.port.read16(sltctl) != self.slot_control:
            self.port.write16(sltctl, self.slot_control)
        # A guest flips the read-only SltSta.EIS by writing SltCtl.EIC; a
        # destination starts with it clear and refuses the root port's
        # state (QEMU's pcie-root-port, not dmagate): flip it back.
        if self.port.read16(self.topo.port_pcie + PCI_EXP_SLTSTA) & PCI_EXP_SLTSTA_EIS != \
                self.interlock:
            self.port.write16(sltctl, self.slot_control | PCI_EXP_SLTCTL_EIC)
        self.port.write16(self.topo.port_pcie + PCI_EXP_LNKCTL, 0)

    def device_exists(self) -> bool:
        try:
            self.qt.qmp.cmd("qom-get", path=QOM, property="type")
        except ExecuteError:
            return False
        return True

    def visible(self) -> bool:
        return self.cfg.read32(0) == DEVICE_ID

    def program(self) -> None:
        """D0, memory and bus mastering, INTx on, MSI and MSI-X off, BARs."""
        if self.topo.pm:
            self.cfg.write16(self.topo.pm + PCI_PM_CTRL, 0)
        command = self.cfg.read16(PCI_COMMAND) & ~PCI_COMMAND_INTX_DISABLE
        self.cfg.write16(PCI_COMMAND, command | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        self.cfg.write32(0x10, BAR0)
        self.cfg.write32(0x18, BAR2)
        self.cfg.write16(self.topo.msi + 2, self.cfg.read16(self.topo.msi + 2) & ~1)
        self.cfg.write16(self.topo.msix + 2, 0)

    def add_device(self) -> None:
        """device_add a fresh dmagate on the root port, and power the slot."""
        self.qt.qmp.cmd("device_add", driver="dmagate", id="dg", bus="rp0", **self.options)
        sltctl = self.topo.port_pcie + PCI_EXP_SLTCTL
        self.port.write16(sltctl, self.port.read16(sltctl) & ~PCI_EXP_SLTCTL_PCC)
        self.hotplugs += 1

    def remove_device(self) -> None:
        """device_del, and the guest's side of it: power the slot off."""
        self.qt.qmp.cmd("device_del", id="dg")
        sltctl = self.topo.port_pcie + PCI_EXP_SLTCTL
        control = self.port.read16(sltctl)
        self.port.write16(sltctl, control | PCI_EXP_SLTCTL_PCC | PCI_EXP_SLTCTL_PWR_IND_OFF)
        deadline = time.monotonic() + 10
        while self.device_exists():
            if time.monotonic() > deadline:
                self.rep.violation("hot-unplug", "device_del and the slot powered off: the "
                                   "device is still there after 10 s")
            self.qt.clock_step(100_000)
            time.sleep(0.002)
        self.qt.qmp.events()

    def system_reset(self) -> None:
        self.qt.qmp.cmd("system_reset")
        host = PciFunction(self.qt, 0, 0)
        for _ in range(100):  # served by the main loop: PCIEXBAR goes back to 0
            self.qt.clock_step(100_000)
            if not host.read32(MCH_PCIEXBAR) & 1:
                break
        self.platform()

    def migrate(self) -> bool:
        """Into a new machine through a file; True if the fuzz now runs
        there. A refused stream is a finding (v1.1 item 3: every state a
        guest can reach loads); then the source carries on."""
        state = self.tmp / f"migration-{self.migrations}.state"
        self.migrations += 1
        self.rep.log(f"migration #{self.migrations} through {state.name}")
        self.source_clock = self.qt.clock_step(1)
        try:
            save_state(self.qt, state)
        except AssertionError as err:
            self.rep.violation("migration-save", f"the source could not save: {err}")
        try:
            target, status = load_state(self._make, state, device=self.option_string())
        except AssertionError:
            if self.last_made is not None and not self.last_made.alive():
                self.qt = self.last_made  # the destination died: report that one
            raise
        if status != "completed":
            said = " | ".join(target.stderr().strip().splitlines()[-3:])
            target.close()
            self.qt.qmp.cmd("cont")
            self.rep.violation("migration-load", "the destination refused the stream of a "
                               f"state the guest reached: {said}", abort=False)
            return False
        self.qt.close()
        self.qt = target
        self._attach()
        self.line.trusted = False
        self.line.level = False
        return True
