"""The device's numbers and the fuzz machine's memory layout, and the small
helpers every phase uses on them (MMCONFIG addresses, BAR0 accesses, the
clock, the CRC)."""

from __future__ import annotations

import random
import zlib

from dmagate.devdriver import mmconfig_address
from dmagate.hwregs import HW
from dmagate.qtest import QTestError, QTestMachine

# -- the device's numbers ---------------------------------------------------

FILL, CHECKSUM, TRANSFORM = HW["OP_FILL"], HW["OP_CHECKSUM"], HW["OP_TRANSFORM"]
OPS = (FILL, CHECKSUM, TRANSFORM)
OP_NAMES = {FILL: "FILL", CHECKSUM: "CHECKSUM", TRANSFORM: "TRANSFORM"}
OK, DMA_ERROR, SHORT = HW["ST_OK"], HW["ST_DMA_ERROR"], HW["ST_SHORT"]
BAD_OPCODE, BAD_DESCRIPTOR = HW["ST_BAD_OPCODE"], HW["ST_BAD_DESCRIPTOR"]
BAD_SG, BAD_LENGTH = HW["ST_BAD_SG"], HW["ST_BAD_LENGTH"]
BAD_INDEX, REG_LOCKED = HW["ST_BAD_INDEX"], HW["ST_REG_LOCKED"]
BAD_ACCESS = 11  # v1.1 item 6
MAX_XFER, MAX_SEGMENTS = HW["MAX_XFER"], HW["MAX_SEGMENTS"]
ALWAYS = HW["FAULT_ALWAYS"]
INT_COMPLETION, INT_ERROR = HW["INT_COMPLETION"], HW["INT_ERROR"]
INT_ALL = INT_COMPLETION | INT_ERROR
DESC_F_INTERRUPT = HW["DESC_F_INTERRUPT"]
CTRL_ENABLE, CTRL_RESET = HW["CTRL_ENABLE"], HW["CTRL_RESET"]
ENABLED, BUSY = HW["STATUS_ENABLED"], HW["STATUS_BUSY"]
HALTED, STALLED = HW["STATUS_HALTED"], HW["STATUS_STALLED"]
STATUS_DEFINED = ENABLED | BUSY | HALTED | STALLED
DEVICE_ID = HW["PCI_DEVICE_ID"] << 16 | HW["PCI_VENDOR_ID"]
REG = {name[4:]: value for name, value in HW.items() if name.startswith("REG_")}
REGISTER_OFFSETS = sorted({*REG.values(), *(REG["STAT_DESCRIPTORS"] + 4 * i for i in range(10))})
U32_MAX, U64_MAX = (1 << 32) - 1, (1 << 64) - 1
CHUNK = 256 << 10  # datasheet §7: a descriptor moves in chunks of at most this

# Property ranges, v1.1 item 2.
MAX_DELAY_NS = 60_000_000_000
MAX_BANDWIDTH_MBPS = 1_000_000
MAX_SPURIOUS = 1024

# PCI bits beyond devdriver's.
PCI_CAP_ID_PM = 0x01
PCI_PM_CTRL = 4
PCI_PM_D3HOT = 3
PCI_BRIDGE_CONTROL = 0x3E
PCI_BRIDGE_CTL_BUS_RESET = 0x40
PCI_EXP_LNKCTL = 0x10
PCI_EXP_SLTCTL_PCC = 0x400  # power controller: 1 = off
PCI_EXP_SLTCTL_EIC = 0x800  # electromechanical interlock control: toggles SltSta.EIS
PCI_EXP_SLTSTA = 0x1A
PCI_EXP_SLTSTA_EIS = 0x80
PCI_EXP_SLTCTL_PWR_IND_OFF = 0x300
MSIX_PBA = 0x800
MSIX_ENABLE, MSIX_MASKALL = 0x8000, 0x4000

# -- the machine's layout (256 MiB of RAM) ----------------------------------

RAM_MIB = 256
RAM_END = RAM_MIB << 20
SQ_AREA, CQ_AREA, MSG_AREA = 0x10_0000, 0x14_0000, 0x18_0000
SG_AREA, SG_LIST_BYTES = 0x20_0000, MAX_SEGMENTS * 16  # 16 lists, one per descriptor
CHAOS_SQ, CHAOS_CQ, CHAOS_SG = 0x50_0000, 0x54_0000, 0x58_0000
DATA_AREA = 0x100_0000  # checked data: a batch lays its spans out from here
CHAOS_DATA, CHAOS_DATA_END = 0x800_0000, 0xC00_0000
BAR0, BAR2 = 0xE000_0000, 0xE000_1000
DEV_BUS, DEV_SLOT = 1, 0
QOM = "/machine/peripheral/dg"
MAX_MIGRATIONS = 8  # each one starts a machine
MAX_HOTPLUGS = 24
MAX_BATCH = 16
UNMAPPED_RANGES = (  # (start, end): no memory, no device there
    (RAM_END, 0xAFF0_0000), (0xC000_0000, 0xDFF0_0000), (0xE010_0000, 0xEFF0_0000),
    (0xF000_0000, 0xFE00_0000), (1 << 40, 1 << 48), (1 << 63, (1 << 63) + (1 << 40)),
)


def half(length: int) -> int:
    """Datasheet §8: where fault-partial and fault-dma-error stop."""
    return (length // 2) & ~4095 or length // 2


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def mmcfg(bus: int, slot: int, offset: int = 0) -> int:
    return mmconfig_address(bus, slot, 0, offset)


def unmapped(rng: random.Random, length: int) -> int:
    """An address where ``length`` bytes hit nothing at all."""
    if rng.random() < 0.1:
        return U64_MAX + 1 - length - rng.randrange(1 << 20)  # the very top, without wrapping
    start, end = rng.choice(UNMAPPED_RANGES)
    return rng.randrange(start, max(start + 1, end - length))


def bar_write(qt: QTestMachine, offset: int, size: int, value: int) -> None:
    """A BAR0 store of 1, 2, 4 or 8 bytes, as the guest's CPU makes it."""
    writer = {1: qt.writeb, 2: qt.writew, 4: qt.writel, 8: qt.writeq}
    writer[size](BAR0 + offset, value)


def bar_read(qt: QTestMachine, offset: int, size: int) -> int:
    if size == 8:
        return int(qt.command(f"readq 0x{BAR0 + offset:x}")[0], 16)
    reader = {1: qt.readb, 2: qt.readw, 4: qt.readl}
    return reader[size](BAR0 + offset)


def clock_step(qt: QTestMachine, ns: int | None = None) -> None:
    """To the next deadline (or by ``ns``); 1 us if nothing is due."""
    try:
        qt.clock_step(ns)
    except QTestError:
        qt.clock_step(1000)
