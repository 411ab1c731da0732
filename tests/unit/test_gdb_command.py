"""The gdb command line dmagate.gdb builds from a module's sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmagate.gdb import add_symbol_file, gdb_command, parse_sections

SYSFS = """.bss 0xffffffffc0a0c000
.data 0xffffffffc0a0a000
.gnu.linkonce.this_module 0xffffffffc0a0b000
.note.gnu.build-id 0xffffffffc0a08000
.rodata 0xffffffffc0a09000
.text 0xffffffffc0a00000
.text.unlikely 0xffffffffc0a07000
__ksymtab 0
"""


def test_sections_gdb_places_are_kept_with_their_addresses() -> None:
    assert parse_sections(SYSFS) == {
        ".bss": 0xFFFFFFFFC0A0C000, ".data": 0xFFFFFFFFC0A0A000,
        ".rodata": 0xFFFFFFFFC0A09000, ".text": 0xFFFFFFFFC0A00000,
        ".text.unlikely": 0xFFFFFFFFC0A07000}


def test_add_symbol_file_puts_text_first_and_names_the_rest() -> None:
    line = add_symbol_file(Path("/b/dmagate.ko"), parse_sections(SYSFS))
    assert line == ("add-symbol-file /b/dmagate.ko 0xffffffffc0a00000 "
                    "-s .bss 0xffffffffc0a0c000 -s .data 0xffffffffc0a0a000 "
                    "-s .rodata 0xffffffffc0a09000 -s .text.unlikely 0xffffffffc0a07000")


def test_a_module_without_text_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no \.text"):
        add_symbol_file(Path("m.ko"), {".data": 1})


def test_the_command_attaches_to_the_stub_and_loads_symbols() -> None:
    argv = gdb_command(1234, {Path("/b/m.ko"): {".text": 0x1000}}, Path("/k/vmlinux"))
    assert argv[:6] == ["gdb", "-q", "-iex", "set confirm off", "-iex", "set pagination off"]
    assert argv[6:] == ["/k/vmlinux", "-ex", "target remote 127.0.0.1:1234",
                        "-ex", "add-symbol-file /b/m.ko 0x1000"]



def test_the_modules_sources_are_found_where_the_image_keeps_them() -> None:
    argv = gdb_command(1234, {}, None,
                       ("/build/image-7.3", Path("/c/build/image-7.3/modules-build")))
    assert argv[6:8] == ["-iex", "set substitute-path /build/image-7.3 "
                                 "/c/build/image-7.3/modules-build"]
