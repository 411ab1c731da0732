"""Guest memory dumps for a failure that leaves nothing else to look at: a
kernel panic, a hang, a test that timed out.

The guest's pvpanic device makes QEMU pause the guest at a panic instead of
ending (cmdline.py: ``-action panic=pause``), so its memory is still there
when the test fails; the pytest plugin then writes it with QMP
``dump-guest-memory`` as an ELF core (every vCPU's registers as NT_PRSTATUS
notes, guest-physical RAM as PT_LOAD segments) next to the console log,
with a note on opening it with crash or drgn. ``read_dump`` and
``dump_contains`` read such a file back without either tool.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dmagate.manifest import Manifest
from dmagate.splat import Splat
from dmagate.vm import VM

DUMP_FILE = "memory.elf"
NOTE_FILE = "memory-dump.txt"
# Reports after which the guest's memory is what explains the failure.
DUMP_WORTHY_KINDS = frozenset({"PANIC", "HUNG_TASK", "SOFTLOCKUP", "HARDLOCKUP", "RCU_STALL",
                               "WORKQUEUE_LOCKUP"})
# What a test that timed out or lost its guest fails with.
DUMP_WORTHY_FAILURE = re.compile(
    r"Timeout|timed out|TimeoutError|SSHException|NoValidConnectionsError|EOFError")

_ELF_MAGIC = b"\x7fELF\x02\x01"  # 64-bit, little-endian
_ET_CORE = 4
_PT_LOAD, _PT_NOTE = 1, 4
_NT_PRSTATUS = 1


class DumpError(ValueError):
    """The file is not an ELF core QEMU's dump-guest-memory writes."""


@dataclass(frozen=True)
class DumpInfo:
    cpus: int  # NT_PRSTATUS notes: one per vCPU
    ram_bytes: int  # guest-physical memory in PT_LOAD segments
    segments: tuple[tuple[int, int, int], ...]  # (file offset, size, guest-physical address)


def why_dump(run_state: str, splats: Iterable[Splat], failure: str) -> str:
    """Why a failed test's VM is worth a memory dump, or "" if it is not."""
    if run_state == "guest-panicked":
        return "the guest kernel panicked"
    for splat in splats:
        if splat.kind in DUMP_WORTHY_KINDS:
            return f"the guest kernel reported: {splat.title}"
    if match := DUMP_WORTHY_FAILURE.search(failure):
        return f"the test failed on {match.group(0)}"
    return ""


def dump_guest_memory(vm: VM, dest: Path) -> Path:
    """Write the VM's memory and vCPU state to ``dest`` (ELF), the guest paused
    meanwhile (QEMU resumes it afterwards if it was running)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    vm.qmp.cmd("dump-guest-memory", paging=False, protocol=f"file:{dest}", detach=False)
    return dest


def read_dump(path: Path) -> DumpInfo:
    with path.open("rb") as f:
        header = f.read(64)
        if len(header) < 64 or not header.startswith(_ELF_MAGIC):
            raise DumpError(f"{path}: not a 64-bit little-endian ELF file")
        e_type, = struct.unpack_from("<H", header, 16)
        if e_type != _ET_CORE:
            raise DumpError(f"{path}: ELF type {e_type}, not a core file")
        e_phoff, = struct.unpack_from("<Q", header, 32)
        e_phentsize, e_phnum = struct.unpack_from("<HH", header, 54)
        f.seek(e_phoff)
        table = f.read(e_phentsize * e_phnum)
        cpus, segments = 0, []
        for i in range(e_phnum):
            p_type, _, p_offset, _, p_paddr, p_filesz = struct.unpack_from(
                "<IIQQQQ", table, i * e_phentsize)
            if p_type == _PT_LOAD:
                segments.append((p_offset, p_filesz, p_paddr))
            elif p_type == _PT_NOTE:
                f.seek(p_offset)
                cpus += sum(1 for kind in _note_types(f.read(p_filesz)) if kind == _NT_PRSTATUS)
    if not segments:
        raise DumpError(f"{path}: no memory (PT_LOAD) in the core")
    return DumpInfo(cpus, sum(size for _, size, _ in segments), tuple(segments))


def _note_types(notes: bytes) -> Iterator[int]:
    offset = 0
    while offset + 12 <= len(notes):
        namesz, descsz, kind = struct.unpack_from("<III", notes, offset)
        yield kind
        offset += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4


def dump_contains(path: Path, needle: bytes) -> bool:
    """Whether guest memory in the dump holds ``needle`` (e.g. a console line
    the kernel's log buffer keeps)."""
    info = read_dump(path)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return any(data.find(needle, offset, offset + size) >= 0
                   for offset, size, _ in info.segments)


def how_to_open(manifest: Manifest, dump: Path, reason: str) -> str:
    """The note saved beside a dump: why it was taken and how to read it."""
    symbols = manifest.extra.get("symbols")
    release = manifest.kernel_release
    vmlinux = symbols or f"usr/lib/debug/boot/vmlinux-{release}"
    where = ("the image's kernel build" if symbols else
             f"Debian's linux-image-{release}-dbg (apt-get download it, dpkg-deb -x it here)")
    return (
        f"{dump.name}: the guest's memory and vCPU registers when the test failed "
        f"({reason}), from QEMU's dump-guest-memory (ELF core, physical addresses).\n"
        f"kernel {release}; its vmlinux with symbols: {vmlinux}, from {where}\n"
        f"  crash {vmlinux} {dump}\n"
        f"  drgn -c {dump} -s {vmlinux}\n"
        "the project's modules, with symbols, are in the image's modules-build/; the module "
        "load addresses are in the kernel's module list (crash: mod -S <dir>).\n"
    )
