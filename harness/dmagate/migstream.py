"""Find (and patch) one device's VMState fields in a QEMU migration stream.

A stream written by ``migrate uri=file:PATH`` ends with a JSON description of
every device section it holds (``QEMU_VM_VMDESCRIPTION``, after
``QEMU_VM_EOF``): for each section its idstr, instance id, vmsd name, and its
fields in stream order with their sizes, nested structs and subsections
(QEMU's migration/vmstate.c writes it while it saves). The non-iterable
device sections are the last thing before ``QEMU_VM_EOF``, each framed as::

    QEMU_VM_SECTION_FULL, be32 section id, u8 len, idstr, be32 instance id,
    be32 version id, <fields...>, [QEMU_VM_SECTION_FOOTER, be32 section id]

so this module walks back from ``QEMU_VM_EOF`` through the described
sections, last first, and checks every header and footer on the way: RAM
(which comes earlier, in iterable sections the description does not cover)
is never parsed. Numbers are big-endian, as VMState writes them (even the
"int32 le" type: "le" is "less or equal", a load-time check).

    stream = MigrationStream.read(path)
    section = stream.section("dmagate")           # vmsd name or idstr (suffix)
    offset, size = section.field("sg_len", 3)     # or section.field("sg_len[3]")
    section.write("opcode", 200)
    stream.save(other_path)

Nested fields are named with dots: ``"parent_obj[0].config[1]"`` (QEMU itself
suffixes a name with ``[n]`` when a vmsd uses it more than once), a
subsection's fields under its vmsd name (``"dev/sub.field"``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

QEMU_VM_FILE_MAGIC = 0x5145564D
QEMU_VM_FILE_VERSION = 3
QEMU_VM_EOF = 0x00
QEMU_VM_SECTION_FULL = 0x04
QEMU_VM_SUBSECTION = 0x05
QEMU_VM_VMDESCRIPTION = 0x06
QEMU_VM_SECTION_FOOTER = 0x7E

_FOOTER_SIZE = 5  # QEMU_VM_SECTION_FOOTER, be32 section id
_STRUCT_TYPES = frozenset({"struct", "vstruct", "subsection"})
_INDEXED = re.compile(r"(.+)\[(\d+)\]")
# The description is searched for in the file's last bytes only.
_DESCRIPTION_WINDOW = 64 << 20


class MigrationStreamError(ValueError):
    """The file is not a stream this module can take apart."""


class FieldNotFoundError(LookupError):
    """No such field (or element, or section) in the stream."""


@dataclass(frozen=True)
class Element:
    """One element of a field: where its bytes are in the file."""

    offset: int
    size: int
    type: str
    fields: Mapping[str, Field] = field(default_factory=dict)  # a struct's members


@dataclass(frozen=True)
class Field:
    """A VMState field: one element, or an array's elements in stream order."""

    name: str
    elements: Sequence[Element]

    @property
    def type(self) -> str:
        return self.elements[0].type


def _be32(data: bytes | bytearray, offset: int) -> int:
    return int.from_bytes(data[offset:offset + 4], "big")


def _get(desc: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = desc.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MigrationStreamError(f"{where}: description has no {kind.__name__} {key!r}")
    return value


def _entries(desc: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    value = desc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise MigrationStreamError(f"{where}: description's {key!r} is not a list of objects")
    return value


def _subsection_header_size(name: str) -> int:
    return 1 + 1 + len(name.encode()) + 4  # QEMU_VM_SUBSECTION, u8 len, name, be32 version


def _described_size(desc: Mapping[str, Any], where: str) -> int:
    """Bytes of a struct's (or a section's) data, from its description alone."""
    total = 0
    for entry in _entries(desc, "fields", where):
        name = _get(entry, "name", str, where)
        total += _get(entry, "size", int, f"{where}.{name}") * entry.get("array_len", 1)
    for sub in _entries(desc, "subsections", where):
        name = _get(sub, "vmsd_name", str, where)
        total += _subsection_header_size(name) + _described_size(sub, f"{where}.{name}")
    return total


def _lay_out(data: bytearray, desc: Mapping[str, Any], offset: int,
             where: str) -> tuple[dict[str, Field], int]:
    """Fields (and subsections) of a struct whose bytes start at ``offset``;
    returns them and where the struct ends. Checks what can be checked."""
    elements: dict[str, list[Element]] = {}
    for entry in _entries(desc, "fields", where):
        name = _get(entry, "name", str, where)
        size = _get(entry, "size", int, f"{where}.{name}")
        kind = _get(entry, "type", str, f"{where}.{name}")
        count = entry.get("array_len", 1)
        if not isinstance(count, int) or count < 1:
            raise MigrationStreamError(f"{where}.{name}: bad array_len {count!r}")
        for _ in range(count):
            members: dict[str, Field] = {}
            if "struct" in entry:
                struct = entry["struct"]
                if not isinstance(struct, dict):
                    raise MigrationStreamError(f"{where}.{name}: struct is not an object")
                members, end = _lay_out(data, struct, offset, f"{where}.{name}")
                if end - offset != size:
                    raise MigrationStreamError(
                        f"{where}.{name}: struct members take {end - offset} bytes, "
                        f"the description says {size}")
            elements.setdefault(name, []).append(Element(offset, size, kind, members))
            offset += size
    for sub in _entries(desc, "subsections", where):
        name = _get(sub, "vmsd_name", str, where)
        encoded = name.encode()
        header = offset
        if (data[header:header + 1] != bytes([QEMU_VM_SUBSECTION])
                or data[header + 1:header + 2] != bytes([len(encoded)])
                or data[header + 2:header + 2 + len(encoded)] != encoded):
            raise MigrationStreamError(
                f"{where}: subsection {name!r} not found at file offset 0x{header:x}")
        start = header + _subsection_header_size(name)
        members, end = _lay_out(data, sub, start, f"{where}.{name}")
        elements[name] = [Element(start, end - start, "subsection", members)]
        offset = end
    if offset > len(data):
        raise MigrationStreamError(f"{where}: described data runs past the end of the file")
    return {name: Field(name, tuple(found)) for name, found in elements.items()}, offset


class Section:
    """One device section (QEMU_VM_SECTION_FULL) of a stream; reads and
    writes go to the stream's bytes (``MigrationStream.save`` writes them)."""

    def __init__(self, data: bytearray, description: Mapping[str, Any], header: int,
                 start: int, end: int) -> None:
        self._data = data
        self.description = description
        self.header_offset = header
        self.start = start  # first byte of the section's data
        self.end = end  # one past its last byte (where the footer is)
        self.section_id = _be32(data, header + 1)
        self.idstr = str(description["name"])
        self.instance_id = _be32(data, start - 8)
        self.version_id = _be32(data, start - 4)
        vmsd = description.get("vmsd_name")
        self.vmsd_name = vmsd if isinstance(vmsd, str) else None  # None: an old-style section

    def __repr__(self) -> str:
        return (f"Section({self.idstr!r}, instance {self.instance_id}, "
                f"version {self.version_id}, data 0x{self.start:x}..0x{self.end:x})")

    @cached_property
    def fields(self) -> Mapping[str, Field]:
        """Top-level fields (and subsections) by name, in stream order."""
        found, end = _lay_out(self._data, self.description, self.start, self.idstr)
        if end != self.end:
            raise MigrationStreamError(f"{self.idstr}: fields end at 0x{end:x}, "
                                       f"the section at 0x{self.end:x}")
        return found

    # -- finding --------------------------------------------------------------------

    def lookup(self, name: str) -> Field:
        """The field called ``name`` (dotted for nested ones), all its elements."""
        found, index = self._resolve(self.fields, name)
        if found is None:
            raise FieldNotFoundError(
                f"{self.idstr}: no field {name!r} (fields: {', '.join(self.fields)})")
        if index is not None:
            raise FieldNotFoundError(f"{self.idstr}: {name!r} names an element, not a field")
        return found

    def element(self, name: str, index: int | None = None) -> Element:
        """One element: ``element("sg_len", 3)`` or ``element("sg_len[3]")``;
        the only element of a scalar field, element 0 of an array by default."""
        found, bracket = self._resolve(self.fields, name)
        if found is None:
            raise FieldNotFoundError(
                f"{self.idstr}: no field {name!r} (fields: {', '.join(self.fields)})")
        if bracket is not None and index is not None:
            raise ValueError(f"{name!r} has an index already; index={index} as well")
        chosen = bracket if bracket is not None else index or 0
        if not 0 <= chosen < len(found.elements):
            raise FieldNotFoundError(f"{self.idstr}: {found.name}[{chosen}] is out of range "
                                     f"({len(found.elements)} elements)")
        return found.elements[chosen]

    def _resolve(self, fields: Mapping[str, Field], path: str) -> tuple[Field | None, int | None]:
        """(field, index written in the path or None); names may contain dots."""
        if path in fields:
            return fields[path], None
        match = _INDEXED.fullmatch(path)
        if match and match.group(1) in fields:
            return fields[match.group(1)], int(match.group(2))
        for dot in (m.start() for m in re.finditer(r"\.", path)):
            head, rest = path[:dot], path[dot + 1:]
            outer, index = self._resolve(fields, head)
            if outer is None or not 0 <= (index or 0) < len(outer.elements):
                continue
            inner = self._resolve(outer.elements[index or 0].fields, rest)
            if inner[0] is not None:
                return inner
        return None, None

    def field(self, name: str, index: int | None = None) -> tuple[int, int]:
        """(file offset, size) of one element (see ``element``)."""
        found = self.element(name, index)
        return found.offset, found.size

    def count(self, name: str) -> int:
        """How many elements the field has (1 for a scalar)."""
        return len(self.lookup(name).elements)

    def names(self) -> Iterator[str]:
        """Every field's dotted name, depth first (struct members after their struct)."""
        def walk(fields: Mapping[str, Field], prefix: str) -> Iterator[str]:
            for name, found in fields.items():
                yield prefix + name
                for i, element in enumerate(found.elements):
                    inner = f"{prefix}{name}[{i}]." if len(found.elements) > 1 else \
                        f"{prefix}{name}."
                    yield from walk(element.fields, inner)
        return walk(self.fields, "")

    # -- values ---------------------------------------------------------------------

    def read_bytes(self, name: str, index: int | None = None) -> bytes:
        found = self.element(name, index)
        return bytes(self._data[found.offset:found.offset + found.size])

    def write_bytes(self, name: str, value: bytes, index: int | None = None) -> None:
        found = self.element(name, index)
        if len(value) != found.size:
            raise ValueError(f"{name}: {len(value)} bytes for a {found.size}-byte field")
        self._data[found.offset:found.offset + found.size] = value

    def read(self, name: str, index: int | None = None) -> int:
        """The element as a big-endian integer, signed for ``int*`` types."""
        found = self._scalar(name, index)
        return int.from_bytes(self._data[found.offset:found.offset + found.size],
                              "big", signed=found.type.startswith("int"))

    def write(self, name: str, value: int, index: int | None = None) -> None:
        """Store ``value`` (signed or unsigned, it must fit the element's size)."""
        found = self._scalar(name, index)
        bits = 8 * found.size
        if not -(1 << (bits - 1)) <= value < 1 << bits:
            raise ValueError(f"{self.idstr}: {value} does not fit {name} ({found.size} bytes)")
        raw = (value & ((1 << bits) - 1)).to_bytes(found.size, "big")
        self._data[found.offset:found.offset + found.size] = raw

    def _scalar(self, name: str, index: int | None) -> Element:
        found = self.element(name, index)
        if found.type in _STRUCT_TYPES or found.size == 0:
            raise ValueError(f"{self.idstr}: {name} is a {found.type} of {found.size} bytes, "
                             "not a number (use read_bytes/write_bytes)")
        return found


def _find_description(data: bytearray, source: str) -> tuple[int, dict[str, Any]]:
    """(offset of the QEMU_VM_EOF byte, parsed description)."""
    limit = max(0, len(data) - _DESCRIPTION_WINDOW)
    marker = len(data)
    while (marker := data.rfind(bytes([QEMU_VM_VMDESCRIPTION]), limit, marker)) > 0:
        length = _be32(data, marker + 1)
        if (marker + 5 + length == len(data) and data[marker - 1] == QEMU_VM_EOF
                and data[marker + 5:marker + 6] == b"{"):
            try:
                description = json.loads(data[marker + 5:].decode())
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise MigrationStreamError(f"{source}: unreadable description: {err}") from err
            if not isinstance(description, dict):
                raise MigrationStreamError(f"{source}: the description is not an object")
            return marker - 1, description
    raise MigrationStreamError(
        f"{source}: no QEMU_VM_VMDESCRIPTION at the end (was the machine's "
        "suppress-vmdesc on, or the stream cut short?)")


def _frame(data: bytearray, desc: Mapping[str, Any], end: int,
           footer: bool) -> Section | None:
    """The section described by ``desc`` if it ends at ``end`` (as the header
    and footer there say), else None."""
    name = _get(desc, "name", str, "device")
    idstr = name.encode()
    data_end = end - (_FOOTER_SIZE if footer else 0)
    start = data_end - _described_size(desc, name)
    header = start - (1 + 4 + 1 + len(idstr) + 4 + 4)
    if header < 0:
        return None
    section_id = _be32(data, header + 1)
    if (data[header] != QEMU_VM_SECTION_FULL or data[header + 5] != len(idstr)
            or data[header + 6:header + 6 + len(idstr)] != idstr
            or _be32(data, start - 8) != desc.get("instance_id")):
        return None
    if footer and (data[data_end] != QEMU_VM_SECTION_FOOTER
                   or _be32(data, data_end + 1) != section_id):
        return None
    return Section(data, desc, header, start, data_end)


class MigrationStream:
    """A whole stream in memory; its device sections located and patchable."""

    def __init__(self, data: bytes | bytearray, source: str = "<stream>") -> None:
        self.data = bytearray(data)
        self.source = source
        if _be32(self.data, 0) != QEMU_VM_FILE_MAGIC or _be32(self.data, 4) != \
                QEMU_VM_FILE_VERSION:
            raise MigrationStreamError(f"{source}: not a QEMU migration stream (version 3)")
        self.eof_offset, self.description = _find_description(self.data, source)
        self.devices = _entries(self.description, "devices", source)
        self.sections = self._locate()

    @classmethod
    def read(cls, path: Path | str) -> MigrationStream:
        return cls(Path(path).read_bytes(), str(path))

    def save(self, path: Path | str) -> None:
        Path(path).write_bytes(self.data)

    def _locate(self) -> tuple[Section, ...]:
        """Walk back from QEMU_VM_EOF through the described device sections
        until one is not where the description puts it (the sections before
        it are iterable ones, RAM, which the description leaves out)."""
        if not self.devices:
            return ()
        for footer in (True, False):  # machines older than 2.4 write no footers
            if _frame(self.data, self.devices[-1], self.eof_offset, footer):
                break
        else:
            raise MigrationStreamError(
                f"{self.source}: the last described section "
                f"({self.devices[-1].get('name')!r}) does not end at QEMU_VM_EOF")
        found: list[Section] = []
        end = self.eof_offset
        for desc in reversed(self.devices):
            section = _frame(self.data, desc, end, footer)
            if section is None:
                break
            found.append(section)
            end = section.header_offset
        return tuple(reversed(found))

    def section(self, name: str, instance_id: int | None = None) -> Section:
        """The section whose vmsd name or idstr is ``name``, or whose idstr
        ends with ``/name`` (e.g. "dmagate" for "0000:00:04.0/dmagate")."""
        def matches(idstr: object, vmsd: object, instance: object) -> bool:
            named = name in (idstr, vmsd) or (isinstance(idstr, str)
                                               and idstr.endswith("/" + name))
            return named and instance_id in (None, instance)

        found = [s for s in self.sections if matches(s.idstr, s.vmsd_name, s.instance_id)]
        if len(found) == 1:
            return found[0]
        if found:
            raise FieldNotFoundError(f"{self.source}: {name!r} matches several sections: "
                                     f"{found}; give instance_id")
        if any(matches(d.get("name"), d.get("vmsd_name"), d.get("instance_id"))
               for d in self.devices):
            raise FieldNotFoundError(
                f"{self.source}: {name!r} is described but is not among the device sections "
                "just before QEMU_VM_EOF (an early-setup or iterable section)")
        raise FieldNotFoundError(
            f"{self.source}: no section {name!r}; sections: "
            f"{', '.join(str(d.get('name')) for d in self.devices)}")
