"""dmagate.migstream on streams built here, for the layouts a dmagate stream
does not have (subsections, per-element arrays, struct arrays, no footers);
tests/device/test_migration.py runs it on real streams."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dmagate.migstream import FieldNotFoundError, MigrationStream, MigrationStreamError

U32 = {"type": "uint32", "size": 4}


def build(devices: Sequence[tuple[dict[str, Any], bytes]], footers: bool = True,
          ram: bytes = b"\x01\x00\x00\x00\x02ram-ish bytes\x03\x00\x00\x00\x02") -> bytes:
    """A stream: header, some bytes that stand for RAM, one FULL section per
    (description, data), QEMU_VM_EOF, the description."""
    out = bytearray(struct.pack(">II", 0x5145564D, 3) + ram)
    for section_id, (desc, data) in enumerate(devices, start=10):
        name = desc["name"].encode()
        out += struct.pack(">BIB", 4, section_id, len(name)) + name
        out += struct.pack(">II", desc["instance_id"], desc.get("version", 1)) + data
        if footers:
            out += struct.pack(">BI", 0x7E, section_id)
    description = json.dumps({"page_size": 4096, "devices": [d for d, _ in devices]}).encode()
    return bytes(out + b"\x00" + struct.pack(">BI", 6, len(description)) + description)


def device(name: str, fields: list[dict[str, Any]], instance: int = 0,
           **extra: Any) -> dict[str, Any]:
    return {"name": name, "instance_id": instance, "vmsd_name": name.rsplit("/", 1)[-1],
            "version": 1, "fields": fields, **extra}


def subsection(name: str, fields: list[dict[str, Any]]) -> tuple[dict[str, Any], bytes]:
    """A subsection's description, and its header as the stream has it."""
    return ({"vmsd_name": name, "version": 1, "fields": fields},
            struct.pack(">BB", 5, len(name)) + name.encode() + struct.pack(">I", 1))


def rich() -> bytes:
    """Scalars, a compressed and a per-element array, a struct array, a
    dotted name, a subsection; a second device after it."""
    sub_desc, sub_header = subsection("dev/extra", [{"name": "y", "type": "uint8", "size": 1}])
    regs = {"vmsd_name": "reg", "version": 1, "fields": [{"name": "x", **U32}]}
    fields = [
        {"name": "a", **U32},
        {"name": "env.eip", "type": "int64", "size": 8},
        {"name": "list", "array_len": 3, "type": "uint16", "size": 2},
        {"name": "ptrs", "index": 0, "type": "uint32", "size": 4},
        {"name": "ptrs", "index": 1, "type": "nullptr", "size": 1},
        {"name": "regs", "array_len": 2, "type": "struct", "struct": regs, "size": 4},
        {"name": "blob", "type": "buffer", "size": 3},
    ]
    data = (struct.pack(">Iq3HIc", 7, -2, 1, 2, 3, 0x1234, b"0") + struct.pack(">II", 10, 11)
            + b"xyz" + sub_header + b"\x09")
    other = device("0000:00:05.0/other", [{"name": "a", **U32}])
    return build([(device("0000:00:04.0/dev", fields, subsections=[sub_desc]), data),
                  (other, struct.pack(">I", 99))])


def test_reads_every_kind_of_field(tmp_path: Path) -> None:
    stream = MigrationStream(rich())
    assert [s.idstr for s in stream.sections] == ["0000:00:04.0/dev", "0000:00:05.0/other"]
    dev = stream.section("dev")
    assert (dev.read("a"), dev.read("env.eip")) == (7, -2)
    assert [dev.read("list", i) for i in range(dev.count("list"))] == [1, 2, 3]
    assert dev.read("list[2]") == 3
    assert dev.count("ptrs") == 2 and dev.read("ptrs") == 0x1234
    assert dev.element("ptrs", 1).type == "nullptr" and dev.field("ptrs", 1)[1] == 1
    assert (dev.read("regs[0].x"), dev.read("regs[1].x")) == (10, 11)
    assert dev.read_bytes("blob") == b"xyz"
    assert dev.read("dev/extra.y") == 9
    assert stream.section("other").read("a") == 99
    assert "regs[1].x" in list(dev.names()) and "dev/extra.y" in list(dev.names())


def test_write_and_save(tmp_path: Path) -> None:
    stream = MigrationStream(rich())
    dev = stream.section("0000:00:04.0/dev")
    dev.write("regs[1].x", 0xFFFF_FFFF)
    dev.write("env.eip", -(1 << 63))
    dev.write("dev/extra.y", 255)
    stream.save(tmp_path / "s")
    again = MigrationStream.read(tmp_path / "s").section("dev")
    assert (again.read("regs[1].x"), again.read("env.eip"), again.read("dev/extra.y")) == (
        0xFFFF_FFFF, -(1 << 63), 255)
    assert again.read("regs[0].x") == 10
    with pytest.raises(ValueError, match="does not fit"):
        again.write("dev/extra.y", 256)
    with pytest.raises(ValueError, match="does not fit"):
        again.write("a", -(1 << 31) - 1)
    with pytest.raises(ValueError, match="3-byte field"):
        again.write_bytes("blob", b"ab")


def test_streams_without_footers() -> None:
    stream = MigrationStream(build([(device("d", [{"name": "a", **U32}]), b"\0\0\0\5"),
                                    (device("e", [{"name": "b", **U32}]), b"\0\0\0\6")],
                                   footers=False))
    assert (stream.section("d").read("a"), stream.section("e").read("b")) == (5, 6)


def test_instances_and_missing_things() -> None:
    stream = MigrationStream(build([(device("i8259", [{"name": "a", **U32}], 0), b"\0\0\0\1"),
                                    (device("i8259", [{"name": "a", **U32}], 1), b"\0\0\0\2")]))
    with pytest.raises(FieldNotFoundError, match="several sections"):
        stream.section("i8259")
    assert stream.section("i8259", instance_id=1).read("a") == 2
    with pytest.raises(FieldNotFoundError, match="no section 'pit'; sections: i8259"):
        stream.section("pit")
    with pytest.raises(FieldNotFoundError, match=r"no field 'b' \(fields: a\)"):
        stream.section("i8259", 0).field("b")


def test_a_section_the_walk_cannot_reach() -> None:
    """The walk back from QEMU_VM_EOF stops at a section that is not where
    its description says (here: data of the wrong size)."""
    early = device("early", [{"name": "a", **U32}])
    stream = MigrationStream(build([(early, b"\0\0\0\0\0"), (device("late", []), b"")]))
    assert [s.idstr for s in stream.sections] == ["late"]
    with pytest.raises(FieldNotFoundError, match="not among the device sections"):
        stream.section("early")


def test_not_a_stream() -> None:
    with pytest.raises(MigrationStreamError, match="not a QEMU migration stream"):
        MigrationStream(b"ELF...")
    whole = rich()
    with pytest.raises(MigrationStreamError, match="no QEMU_VM_VMDESCRIPTION"):
        MigrationStream(whole[:-1])
    with pytest.raises(MigrationStreamError, match="does not end at QEMU_VM_EOF"):
        MigrationStream(build([(device("d", [{"name": "a", **U32}]), b"\0\0")]))


def test_struct_size_mismatch_is_reported() -> None:
    inner = {"vmsd_name": "s", "version": 1, "fields": [{"name": "x", **U32}]}
    desc = device("d", [{"name": "s", "type": "struct", "struct": inner, "size": 5}])
    section = MigrationStream(build([(desc, b"\0" * 5)])).section("d")
    with pytest.raises(MigrationStreamError, match="struct members take 4 bytes"):
        section.read("s.x")
