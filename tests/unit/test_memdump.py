"""dmagate.memdump without a VM: when a failed test is worth a memory dump,
and reading an ELF core of the shape QEMU's dump-guest-memory writes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from dmagate.memdump import DumpError, dump_contains, read_dump, why_dump
from dmagate.splat import Splat


def test_what_is_worth_a_dump() -> None:
    warning = Splat("WARNING", "WARNING in dmagate_submit", 0, "")
    hung = Splat("HUNG_TASK", "INFO: task hung in dmagate_release", 9, "")
    assert why_dump("guest-panicked", [], "") == "the guest kernel panicked"
    assert why_dump("running", [warning, hung], "") == (
        "the guest kernel reported: INFO: task hung in dmagate_release")
    assert why_dump("running", [], "Failed: Timeout >600.0s") == "the test failed on Timeout"
    assert why_dump("running", [], "paramiko.ssh_exception.SSHException: x").endswith(
        "SSHException")
    assert why_dump("running", [warning], "AssertionError: 1 != 2") == ""


def _core(path: Path, cpus: int, ram: bytes) -> None:
    """An ELF core: one PT_NOTE of ``cpus`` NT_PRSTATUS notes and a QEMU
    note, then one PT_LOAD holding ``ram`` at guest-physical 0x100000."""
    def note(name: bytes, kind: int, desc: bytes) -> bytes:
        padded = name + b"\0" * (-len(name) % 4)
        return struct.pack("<III", len(name), len(desc), kind) + padded + desc
    notes = b"".join(note(b"CORE\0", 1, bytes(336)) for _ in range(cpus))
    notes += note(b"QEMU\0", 0, bytes(16))
    phoff, phnum = 64, 2
    notes_at = phoff + 56 * phnum
    ram_at = notes_at + len(notes)
    header = (b"\x7fELF\x02\x01\x01" + bytes(9)
              + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, 0, 0, 64, 56, phnum, 0, 0, 0))
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, notes_at, 0, 0, len(notes), len(notes), 0)
    phdrs += struct.pack("<IIQQQQQQ", 1, 0, ram_at, 0, 0x100000, len(ram), len(ram), 0)
    path.write_bytes(header + phdrs + notes + ram)


def test_a_core_is_read_back(tmp_path: Path) -> None:
    core = tmp_path / "memory.elf"
    _core(core, cpus=2, ram=b"\0" * 8192 + b"Kernel panic - not syncing: x" + b"\0" * 100)
    info = read_dump(core)
    assert (info.cpus, info.ram_bytes) == (2, 8192 + 29 + 100)
    assert info.segments[0][2] == 0x100000
    assert dump_contains(core, b"Kernel panic - not syncing")
    assert not dump_contains(core, b"Kernel panic - not syncing: y")


def test_what_is_no_core_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"\x7fELF\x01\x01" + bytes(100))
    with pytest.raises(DumpError, match="not a 64-bit"):
        read_dump(bogus)
