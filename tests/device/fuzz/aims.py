"""Aim points: config registers of the device and its root port that a
hostile guest points DMA, completion records and interrupt messages at."""

from __future__ import annotations

from dataclasses import dataclass

from dmagate.devdriver import (
    PCI_COMMAND,
    PCI_COMMAND_MEMORY,
    PCI_EXP_DEVCTL,
    PCI_EXP_DEVCTL_BCR_FLR,
    PCI_EXP_SLTCTL,
)

from ..conftest import PORT_SLOT
from .board import Topology
from .layout import (
    DEV_BUS,
    DEV_SLOT,
    MSIX_ENABLE,
    MSIX_MASKALL,
    PCI_BRIDGE_CONTROL,
    PCI_BRIDGE_CTL_BUS_RESET,
    PCI_EXP_LNKCTL,
    PCI_PM_CTRL,
    PCI_PM_D3HOT,
    mmcfg,
)


@dataclass(frozen=True)
class Aim:
    """A config register reached through MMCONFIG, and values worth landing there."""

    name: str
    bus: int
    slot: int
    offset: int
    width: int
    values: tuple[int, ...]

    @property
    def addr(self) -> int:
        return mmcfg(self.bus, self.slot, self.offset)


def aims(topo: Topology) -> list[Aim]:
    dev, port = (DEV_BUS, DEV_SLOT), (0, PORT_SLOT)
    found = [
        Aim("dev.DevCtl", *dev, topo.pcie + PCI_EXP_DEVCTL, 2, (PCI_EXP_DEVCTL_BCR_FLR, 0x8010)),
        Aim("dev.command", *dev, PCI_COMMAND, 2, (0, PCI_COMMAND_MEMORY, 0x406)),
        Aim("dev.BAR0", *dev, 0x10, 4, (0, 0xE000_3000, 0xFFFF_FFFF)),
        Aim("dev.MSI-X", *dev, topo.msix + 2, 2, (MSIX_ENABLE, MSIX_ENABLE | MSIX_MASKALL, 0)),
        Aim("dev.MSI", *dev, topo.msi + 2, 2, (1, 0)),
        Aim("port.SltCtl", *port, topo.port_pcie + PCI_EXP_SLTCTL, 2, (0x7C0, 0x5C0, 0x4C0)),
        Aim("port.BridgeCtl", *port, PCI_BRIDGE_CONTROL, 2, (PCI_BRIDGE_CTL_BUS_RESET,)),
        Aim("port.command", *port, PCI_COMMAND, 2, (0, PCI_COMMAND_MEMORY)),
        Aim("port.buses", *port, 0x18, 4, (0, 0x020200)),
        Aim("port.window", *port, 0x20, 4, (0, 0xE010_E010)),
        Aim("port.DevCtl", *port, topo.port_pcie + PCI_EXP_DEVCTL, 2, (0x8000, 0x000F)),
        Aim("port.LnkCtl", *port, topo.port_pcie + PCI_EXP_LNKCTL, 2, (0x10, 0x20)),
    ]
    if topo.pm:
        found.append(Aim("dev.PMCSR", *dev, topo.pm + PCI_PM_CTRL, 2, (PCI_PM_D3HOT, 0)))
    return found


CPL_TAG, CPL_BYTES_DONE = 0, 8  # completion fields a guest controls: tag, bytes_done


def completion_placements(aim: Aim) -> list[tuple[int, int, int, int]]:
    """(CQ base, CQ slot, field, shift): a CQ base (64-byte aligned) whose
    record in that slot carries the aimed register in ``field``."""
    out = []
    for field_offset in (CPL_TAG, CPL_BYTES_DONE):
        for field_addr in range(aim.addr + aim.width - 4, aim.addr + 1):
            for slot in range(4):
                base = field_addr - field_offset - 32 * slot
                if base % 64 == 0:
                    out.append((base, slot, field_offset, aim.addr - field_addr))
    return out
