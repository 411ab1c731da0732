"""Fresh guests from a snapshot of a booted one, instead of a boot.

The first time a guest of given options is asked for, one is booted, checked
clean (no kernel splat, no taint beyond O/E), and saved with QEMU's migration
to a file (``VM.save_snapshot``): the guest as it stands SSH-ready, with the
driver bound and nothing run yet. Every later guest of the same options is
that file loaded into a new QEMU (``VM.start(restore=...)``): it runs on
from that moment, with its own QMP socket, SSH port and console.

Snapshots live in the cache (``dmagate.paths.cache_dir``/snapshots), shared
by every checkout on the machine, and are named for what the guest is made
of (``guest_identity``): the QEMU binary's and the image's bytes (an image
is the same bytes in every checkout of the same sources, see
images/build_image.py), the firmware and the whole QEMU command line but
its paths. Anything else makes a new one, and one that nobody restored for
UNUSED_DAYS is removed when another is made. What a restored guest does not
have: its own boot (console output before the restore, a boot-time first),
fresh entropy (every restore starts from the same random state).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shlex
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from dmagate.cmdline import GuestSpec, build_command
from dmagate.health import HealthWatch
from dmagate.manifest import sha256_file
from dmagate.paths import cache_dir
from dmagate.vm import VM, VMError

SNAPSHOT_DIR = "snapshots"
UNUSED_DAYS = 2
# What make_snapshot saves and how: a change to it must not restore old files.
FORMAT = 2


@functools.lru_cache(maxsize=16)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_sha256(path: Path) -> str:
    """The file's hash, computed once per process while it is unchanged."""
    stat = path.stat()
    return _sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


def guest_identity(spec: GuestSpec, firmware: Mapping[str, str], user_qmp: bool = False) -> str:
    """What a snapshot of the guest ``spec`` depends on, as a short hash:
    the same for a guest of the same bytes and options in any checkout."""
    placed = replace(spec, qemu=Path("qemu"), kernel=Path(spec.kernel.name),
                     initrd=Path(spec.initrd.name))
    argv = build_command(placed, Path("qmp.sock"), Path("user-qmp.sock") if user_qmp else None)
    identity = "\n".join((
        f"format {FORMAT}",
        shlex.join(argv),
        f"qemu {file_sha256(spec.qemu)}",
        f"kernel {file_sha256(spec.kernel)}",
        f"initrd {file_sha256(spec.initrd)}",
        f"firmware {json.dumps(dict(firmware), sort_keys=True)}",
    ))
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def snapshot_path(vm: VM) -> Path:
    """Where a snapshot of a guest like ``vm`` (not started) is kept."""
    key = guest_identity(vm.spec, vm.manifest.firmware, vm.user_qmp_socket is not None)
    return cache_dir() / SNAPSHOT_DIR / f"guest-{key}.mig"


def make_snapshot(vm: VM, dest: Path) -> None:
    """Boot ``vm`` (not started), check it is clean, save it to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f"{dest.name}.{os.getpid()}.partial")
    try:
        vm.start()
        watch = HealthWatch.begin(vm, from_boot=True)
        watch.scans_leaks = False  # a leak scan takes long; each test's own check scans
        report = watch.check()
        if not report.clean:
            raise VMError(f"not saving a snapshot of a guest that booted unclean:\n"
                          f"{report.describe()}")
        vm.save_snapshot(partial)
        partial.rename(dest)  # whole, or not there
        _prune(dest.parent)
    finally:
        vm.kill()
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def _prune(directory: Path) -> None:
    """Remove the snapshots nobody restored for UNUSED_DAYS (their QEMU,
    image or options are most likely gone); a restore marks its file used."""
    cutoff = time.time() - UNUSED_DAYS * 86400
    for old in directory.glob("guest-*.mig"):
        with contextlib.suppress(FileNotFoundError):
            if old.stat().st_mtime < cutoff:
                old.unlink()
                old.with_name(f"{old.name}.lock").unlink(missing_ok=True)


@contextlib.contextmanager
def _making(dest: Path) -> Iterator[None]:
    """Held while the snapshot ``dest`` is made: suites that run side by
    side on one image (make test) make it once, the others wait for it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(f"{dest.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def restored(vm: VM) -> VM:
    """Start ``vm`` (not started) from the snapshot of its options, making
    that snapshot first if there is none."""
    dest = snapshot_path(vm)
    if not dest.exists():
        with _making(dest):
            if not dest.exists():
                make_snapshot(VM(vm.options, vm.paths, vm.accel,
                                 workdir=vm.workdir.with_name(vm.workdir.name + "-snapshot")),
                              dest)
    os.utime(dest)  # used: see _prune
    return vm.start(restore=dest)
