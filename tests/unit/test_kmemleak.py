"""Parsing /sys/kernel/debug/kmemleak reports (Linux 6.12 format)."""

from __future__ import annotations

from dmagate.kmemleak import parse

REPORT = """\
unreferenced object 0xffff888004a1b200 (size 128):
  comm "sh", pid 153, jiffies 4294893424
  hex dump (first 32 bytes):
    6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b  kkkkkkkkkkkkkkkk
  backtrace (crc 6a3b1f07):
    kmemleak_alloc+0x4a/0x80
    __kmalloc_cache_noprof+0x2d1/0x3f0
    splat_test_leak+0x1b/0x40 [dmagate_splat_test]
    trigger_write+0xbb/0xf0 [dmagate_splat_test]
    full_proxy_write+0x54/0x80
    vfs_write+0xf5/0x450
unreferenced object 0xffff888005c00000 (size 64):
  comm "swapper/0", pid 1, jiffies 4294892000
  backtrace (crc 11111111):
    [<ffffffff812a1b2c>] kmemleak_alloc+0x4a/0x80
    [<ffffffff81a00000>] acpi_os_allocate+0x10/0x20
"""


def test_two_reports_with_titles_and_modules() -> None:
    first, second = parse(REPORT)
    assert first.title == "memory leak in splat_test_leak"
    assert first.modules == ("dmagate_splat_test",)
    assert first.frames[:3] == ("kmemleak_alloc", "__kmalloc_cache_noprof", "splat_test_leak")
    assert second.title == "memory leak in acpi_os_allocate"
    assert second.modules == ()


def test_nothing_to_report() -> None:
    assert parse("") == []
