"""With intel-iommu translating, the device's DMA goes where the IOMMU says
and nowhere else (datasheet §10). The test programs VT-d (legacy mode) as a
guest driver would: root and context tables, second-level page tables."""

from __future__ import annotations

import struct
from collections.abc import Callable

from dmagate import reference as ref
from dmagate.devdriver import Dmagate
from dmagate.hwregs import HW
from dmagate.qtest import QTestMachine

from .conftest import CQ, DATA, MSG, RING, SG, SLOT, SQ

VTD = 0xFED9_0000
CAP, GCMD, GSTS, RTADDR = 0x08, 0x18, 0x1C, 0x20
GCMD_TE, GCMD_SRTP = 1 << 31, 1 << 30
PTE_R, PTE_W = 1, 2
PAGE = 4096
TABLES = 0x0200_0000  # page tables live here, identity-mapped for nobody
IOVA_DATA = 0x8000_0000
IOVA_READ_ONLY = 0x8010_0000
IOVA_UNMAPPED = 0x9000_0000


class SecondLevelTables:
    """Second-level page tables in guest memory, built as a driver would."""

    def __init__(self, qt: QTestMachine, levels: int) -> None:
        self.qt, self.levels = qt, levels
        self.next_free = TABLES
        self.root = self._table()

    def _table(self) -> int:
        addr = self.next_free
        self.next_free += PAGE
        self.qt.memset(addr, PAGE, 0)
        return addr

    def map(self, iova: int, gpa: int, perms: int) -> None:
        table = self.root
        for level in range(self.levels, 1, -1):
            slot = table + 8 * ((iova >> (12 + 9 * (level - 1))) & 0x1FF)
            (entry,) = struct.unpack("<Q", self.qt.memread(slot, 8))
            if not entry & (PTE_R | PTE_W):
                entry = self._table() | PTE_R | PTE_W
                self.qt.writeq(slot, entry)
            table = entry & ~0xFFF & ((1 << 52) - 1)
        self.qt.writeq(table + 8 * ((iova >> 12) & 0x1FF), gpa | perms)


def enable_translation(qt: QTestMachine, slpt: SecondLevelTables, devfn: int, aw: int) -> None:
    root_table, context_table = slpt._table(), slpt._table()
    qt.writeq(root_table, context_table | 1)  # bus 0: present
    context = context_table + 16 * devfn
    qt.writeq(context, slpt.root | 1)  # present, translation type 0 (second level)
    qt.writeq(context + 8, aw | 1 << 8)  # address width, domain 1
    qt.writeq(VTD + RTADDR, root_table)
    qt.writel(VTD + GCMD, GCMD_SRTP)
    assert qt.readl(VTD + GSTS) & GCMD_SRTP
    qt.writel(VTD + GCMD, GCMD_TE)
    assert qt.readl(VTD + GSTS) & GCMD_TE


def translating_machine(
    make_machine: Callable[..., QTestMachine],
) -> tuple[QTestMachine, SecondLevelTables, int]:
    """A machine with intel-iommu and page tables that map the rings and SG
    lists at their own address; returns it, the tables (map more before
    enable_translation) and the address-width code the context entry takes."""
    qt = make_machine(iommu=True)
    sagaw = (qt.readl(VTD + CAP) >> 8) & 0x1F
    aw, levels = (1, 3) if sagaw & 0x2 else (2, 4)
    slpt = SecondLevelTables(qt, levels)
    for page in range(SQ, MSG + PAGE, PAGE):
        slpt.map(page, page, PTE_R | PTE_W)
    return qt, slpt, aw


def test_dma_follows_iommu_mappings(make_machine: Callable[..., QTestMachine]) -> None:
    qt, slpt, aw = translating_machine(make_machine)
    for n in range(4):
        slpt.map(IOVA_DATA + n * PAGE, DATA + n * PAGE, PTE_R | PTE_W)
    slpt.map(IOVA_READ_ONLY, DATA + 8 * PAGE, PTE_R)
    dev = Dmagate(qt, SLOT)
    enable_translation(qt, slpt, SLOT << 3, aw)
    dev.setup(SQ, RING, CQ, RING, SG)
    qt.memset(DATA, 16 * PAGE, 0)

    dev.submit(HW["OP_FILL"], [(IOVA_DATA, 4 * PAGE)], param=11)
    (done,) = dev.wait()
    assert done.status == HW["ST_OK"]
    assert qt.memread(DATA, 4 * PAGE) == ref.fill_pattern(11, 0, 4 * PAGE)

    dev.submit(HW["OP_FILL"], [(IOVA_UNMAPPED, PAGE)])
    assert dev.wait()[0].status == HW["ST_DMA_ERROR"]
    dev.submit(HW["OP_FILL"], [(IOVA_READ_ONLY, PAGE)])
    assert dev.wait()[0].status == HW["ST_DMA_ERROR"], "wrote through a read-only mapping"
    assert qt.memread(DATA + 8 * PAGE, PAGE) == bytes(PAGE)
    dev.submit(HW["OP_CHECKSUM"], [(IOVA_READ_ONLY, PAGE)])
    (checked,) = dev.wait()
    assert checked.status == HW["ST_OK"] and checked.crc == ref.crc32(bytes(PAGE))
    # Untranslated guest-physical addresses are not reachable any more.
    dev.submit(HW["OP_FILL"], [(DATA + 12 * PAGE, PAGE)])
    assert dev.wait()[0].status == HW["ST_DMA_ERROR"]
    assert qt.memread(DATA + 12 * PAGE, PAGE) == bytes(PAGE)
