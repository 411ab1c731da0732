"""A driver for the dmagate device in Python, over qtest: what the device
tests (and anyone poking at the device model) program it with. It follows
docs/device.md; numbers come from dmagate_hw.h through ``HW``."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from dmagate.hwregs import HW
from dmagate.qtest import QTestError, QTestMachine

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC
PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_INTX_DISABLE = 0x400
PCI_CAP_ID_MSI = 0x05
PCI_CAP_ID_MSIX = 0x11
PCI_CAP_ID_EXP = 0x10
PCI_EXP_DEVCTL = 0x08
PCI_EXP_DEVCTL_BCR_FLR = 0x8000
PCI_EXP_SLTCTL = 0x18
# q35's MCH: PCIEXBAR (host bridge 0:0.0, 64-bit at 0x60) places MMCONFIG.
MCH_PCIEXBAR = 0x60
MMCONFIG_BASE = 0xB000_0000


@dataclass(frozen=True)
class Completion:
    tag: int
    status: int
    phase: int
    bytes_done: int
    crc: int
    timestamp: int
    sq_index: int

    @classmethod
    def parse(cls, raw: bytes) -> Completion:
        tag, status, flags, done, crc, stamp, index, _ = struct.unpack("<IHHIIQII", raw)
        return cls(tag, status, flags & HW["CPL_F_PHASE"], done, crc, stamp, index)


class PciFunction:
    """Configuration space of one function, through ports 0xcf8/0xcfc."""

    def __init__(self, qt: QTestMachine, bus: int, slot: int, function: int = 0) -> None:
        self.qt = qt
        self._base = 0x80000000 | bus << 16 | slot << 11 | function << 8

    def _select(self, offset: int) -> int:
        self.qt.outl(CONFIG_ADDRESS, self._base | (offset & 0xFC))
        return CONFIG_DATA + (offset & 3)

    def read32(self, offset: int) -> int:
        return self.qt.inl(self._select(offset))

    def read16(self, offset: int) -> int:
        return self.qt.inw(self._select(offset))

    def read8(self, offset: int) -> int:
        return self.qt.inb(self._select(offset))

    def write32(self, offset: int, value: int) -> None:
        self.qt.outl(self._select(offset), value)

    def write16(self, offset: int, value: int) -> None:
        self.qt.outw(self._select(offset), value)

    def capability(self, cap_id: int) -> int:
        """Offset of a standard capability, 0 if absent."""
        offset = self.read8(0x34)
        while offset:
            if self.read8(offset) == cap_id:
                return offset
            offset = self.read8(offset + 1)
        return 0

    def set_command(self, bits: int, on: bool = True) -> None:
        command = self.read16(PCI_COMMAND)
        self.write16(PCI_COMMAND, command | bits if on else command & ~bits)


def enable_mmconfig(qt: QTestMachine, base: int = MMCONFIG_BASE) -> None:
    """Map q35's PCIe MMCONFIG window (256 buses) at ``base``, as firmware does:
    under qtest no firmware runs, so the window starts disabled."""
    host = PciFunction(qt, 0, 0)
    host.write32(MCH_PCIEXBAR + 4, base >> 32)
    host.write32(MCH_PCIEXBAR, (base & 0xFFFF_FFFF) | 1)  # length 256 MiB, enabled


def mmconfig_address(bus: int, slot: int, function: int = 0, offset: int = 0,
                     base: int = MMCONFIG_BASE) -> int:
    """The physical address of one config-space byte in the MMCONFIG window."""
    return base | bus << 20 | slot << 15 | function << 12 | offset


PCI_PRIMARY_BUS = 0x18
PCI_MEMORY_BASE = 0x20


def open_root_port(qt: QTestMachine, slot: int) -> PciFunction:
    """Program the pcie-root-port at 0:``slot``.0 as firmware would: bus 1
    behind it, memory window 0xe0000000..0xe00fffff (where Dmagate puts its
    BARs), memory and bus mastering on."""
    port = PciFunction(qt, 0, slot)
    port.write32(PCI_PRIMARY_BUS, 0x01_01_00)  # secondary and subordinate bus 1
    port.write32(PCI_MEMORY_BASE, 0xE000 | 0xE000 << 16)
    port.set_command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
    return port


class Dmagate:
    """One dmagate function with BARs assigned and rings in guest memory."""

    def __init__(self, qt: QTestMachine, slot: int, bar0: int = 0xE000_0000,  # noqa: PLR0917
                 bar2: int = 0xE000_1000, configure: bool = True, bus: int = 0) -> None:
        """``configure``: assign the BARs and enable memory and bus mastering
        (False for a device that a migrated-in machine has programmed already)."""
        self.qt = qt
        self.pci = PciFunction(qt, bus, slot)
        self.bar0 = bar0
        self.bar2 = bar2
        if configure:
            self.pci.write32(0x10, bar0)
            self.pci.write32(0x18, bar2)
            self.pci.set_command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        self.sq_base = self.sq_size = self.cq_base = self.cq_size = 0
        self.sq_tail = self.cq_head = 0
        self.sg_area = 0
        self.tag = 0

    # -- registers ----------------------------------------------------------------

    def read(self, reg: str) -> int:
        return self.qt.readl(self.bar0 + HW[f"REG_{reg}"])

    def write(self, reg: str, value: int) -> None:
        self.qt.writel(self.bar0 + HW[f"REG_{reg}"], value)

    def read64(self, reg: str) -> int:
        offset = HW[f"REG_{reg}"]
        return self.qt.readl(self.bar0 + offset) | self.qt.readl(self.bar0 + offset + 4) << 32

    # -- rings ----------------------------------------------------------------------

    def setup(self, sq_base: int, sq_size: int, cq_base: int, cq_size: int,  # noqa: PLR0917
              sg_area: int, enable: bool = True) -> None:
        """Program both rings (and where SG lists go), then enable."""
        self.sq_base, self.sq_size, self.cq_base, self.cq_size = sq_base, sq_size, cq_base, cq_size
        self.sg_area = sg_area
        self.qt.memset(sq_base, sq_size * HW["DESC_SIZE"], 0)
        self.qt.memset(cq_base, cq_size * HW["CPL_SIZE"], 0)
        self.write("SQ_BASE_LO", sq_base & 0xFFFFFFFF)
        self.write("SQ_BASE_HI", sq_base >> 32)
        self.write("SQ_SIZE", sq_size)
        self.write("CQ_BASE_LO", cq_base & 0xFFFFFFFF)
        self.write("CQ_BASE_HI", cq_base >> 32)
        self.write("CQ_SIZE", cq_size)
        self.sq_tail = self.cq_head = 0
        if enable:
            self.write("CTRL", HW["CTRL_ENABLE"])

    def follow(self, other: Dmagate) -> None:
        """Take over ``other``'s view of the rings (after migrating its machine)."""
        for name in ("sq_base", "sq_size", "cq_base", "cq_size", "sq_tail", "cq_head",
                     "sg_area", "tag"):
            setattr(self, name, getattr(other, name))

    def descriptor(self, op: int, sg_addr: int, sg_count: int, length: int, *, param: int = 0,
                   tag: int | None = None, flags: int | None = None,
                   reserved: int = 0) -> bytes:
        if tag is None:
            self.tag += 1
            tag = self.tag
        if flags is None:
            flags = HW["DESC_F_INTERRUPT"]
        return struct.pack("<BBHIQIIQ", op, flags, reserved, tag, sg_addr, sg_count, length,
                           param)

    def write_sg(self, segments: Sequence[tuple[int, int]], at: int | None = None) -> int:
        at = self.sg_area if at is None else at
        self.qt.memwrite(at, b"".join(struct.pack("<QII", a, n, 0) for a, n in segments))
        return at

    def post(self, descriptor: bytes, ring: bool = True) -> int:
        """Write a descriptor at the tail; ring the doorbell. Returns its index."""
        index = self.sq_tail
        self.qt.memwrite(self.sq_base + index * HW["DESC_SIZE"], descriptor)
        self.sq_tail = (index + 1) % self.sq_size
        if ring:
            self.write("SQ_TAIL", self.sq_tail)
        return index

    def submit(self, op: int, segments: Sequence[tuple[int, int]], length: int | None = None,
               param: int = 0, sg_at: int | None = None, **fields: int) -> int:
        sg_addr = self.write_sg(segments, sg_at)
        if length is None:
            length = sum(n for _, n in segments)
        return self.post(
            self.descriptor(op, sg_addr, len(segments), length, param=param, **fields)
        )

    def completions(self) -> list[Completion]:
        """Completions the device has posted since the last call; consumes them."""
        tail = self.read("CQ_TAIL")
        out = []
        while self.cq_head != tail:
            raw = self.qt.memread(self.cq_base + self.cq_head * HW["CPL_SIZE"], HW["CPL_SIZE"])
            out.append(Completion.parse(raw))
            self.cq_head = (self.cq_head + 1) % self.cq_size
        if out:
            self.write("CQ_HEAD", self.cq_head)
        return out

    def wait(self, count: int = 1, max_steps: int = 100_000) -> list[Completion]:
        """Run the machine (stepping virtual time) until ``count`` completions."""
        got: list[Completion] = []
        for _ in range(max_steps):
            got += self.completions()
            if len(got) >= count:
                return got
            try:
                self.qt.clock_step()  # to the next timer deadline
            except QTestError:
                self.qt.clock_step(1000)  # no timer: let bottom halves run
        raise TimeoutError(f"{len(got)} of {count} completions; STATUS=0x{self.read('STATUS'):x} "
                           f"ERROR={self.read('ERROR')}")

    # -- interrupts -----------------------------------------------------------------

    def enable_msix(self, message_addr: int, data: Sequence[int]) -> None:
        """MSI-X on, each vector writing its data word to message_addr + 4 * vector."""
        for vector, word in enumerate(data):
            entry = self.bar2 + 16 * vector
            self.qt.writel(entry, (message_addr + 4 * vector) & 0xFFFFFFFF)
            self.qt.writel(entry + 4, (message_addr + 4 * vector) >> 32)
            self.qt.writel(entry + 8, word)
            self.qt.writel(entry + 12, 0)
        cap = self.pci.capability(PCI_CAP_ID_MSIX)
        control = self.pci.read16(cap + 2)
        self.pci.write16(cap + 2, (control | 0x8000) & ~0x4000)

    def enable_msi(self, message_addr: int, data: int) -> None:
        cap = self.pci.capability(PCI_CAP_ID_MSI)
        self.pci.write32(cap + 4, message_addr & 0xFFFFFFFF)
        self.pci.write32(cap + 8, message_addr >> 32)
        self.pci.write16(cap + 12, data)
        self.pci.write16(cap + 2, self.pci.read16(cap + 2) | 1)

    def function_level_reset(self) -> None:
        cap = self.pci.capability(PCI_CAP_ID_EXP)
        control = self.pci.read16(cap + PCI_EXP_DEVCTL)
        self.pci.write16(cap + PCI_EXP_DEVCTL, control | PCI_EXP_DEVCTL_BCR_FLR)
