"""Where snapshots are kept (dmagate.snapshot): one per guest of the same
bytes and options, whatever checkout asks; those nobody restored for days
go when another is made."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from dmagate.cmdline import GuestSpec
from dmagate.snapshot import UNUSED_DAYS, _prune, guest_identity

FIRMWARE = {"bios": "qboot.rom", "bios_sha256": "ab12"}


def _checkout(root: Path) -> GuestSpec:
    """A guest spec over files of fixed contents under ``root``."""
    (root / "image").mkdir(parents=True)
    for name, data in (("qemu", b"qemu binary"), ("image/vmlinux", b"kernel"),
                       ("image/initramfs.cpio", b"initramfs")):
        (root / name).write_bytes(data)
    return GuestSpec(qemu=root / "qemu", kernel=root / "image/vmlinux",
                     initrd=root / "image/initramfs.cpio",
                     firmware_dirs=(Path("/usr/share/qemu"),), kernel_args=("quiet",))


def test_the_same_guest_in_another_checkout_has_the_same_identity(tmp_path: Path) -> None:
    one, two = _checkout(tmp_path / "one"), _checkout(tmp_path / "two")
    assert guest_identity(one, FIRMWARE) == guest_identity(two, FIRMWARE)


def test_any_byte_option_or_firmware_change_makes_another_identity(tmp_path: Path) -> None:
    spec = _checkout(tmp_path / "c")
    seen = {guest_identity(spec, FIRMWARE)}
    for changed in (replace(spec, devices=("dmagate", "dmagate")),
                    replace(spec, kernel_args=("quiet", "intel_iommu=on")),
                    replace(spec, memory_mib=1024)):
        seen.add(guest_identity(changed, FIRMWARE))
    seen.add(guest_identity(spec, {**FIRMWARE, "bios_sha256": "cd34"}))
    seen.add(guest_identity(spec, FIRMWARE, user_qmp=True))
    time.sleep(0.01)  # a new mtime: the hash is not taken from memory
    spec.initrd.write_bytes(b"another initramfs")
    seen.add(guest_identity(spec, FIRMWARE))
    shutil.copyfile(tmp_path / "c/image/vmlinux", tmp_path / "c/qemu")
    seen.add(guest_identity(spec, FIRMWARE))
    assert len(seen) == 8


def test_only_long_unused_snapshots_and_their_locks_go(tmp_path: Path) -> None:
    stale = tmp_path / "guest-0000000000000001.mig"
    used = tmp_path / "guest-0000000000000002.mig"
    other = tmp_path / "notes.txt"
    for path in (stale, used, other, stale.with_name(stale.name + ".lock"),
                 used.with_name(used.name + ".lock")):
        path.write_text("x")
    long_ago = time.time() - (UNUSED_DAYS + 1) * 86400
    for path in (stale, other):
        os.utime(path, (long_ago, long_ago))
    _prune(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        used.name, used.name + ".lock", "notes.txt"]
