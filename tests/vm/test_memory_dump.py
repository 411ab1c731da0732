"""Memory dumps (dmagate.memdump): a panicking guest is held by QEMU
(pvpanic), and its memory, dumped as an ELF core, holds the panic; a failed
test whose guest panicked leaves that dump and a note on opening it next to
its console log."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dmagate import artifacts, memdump
from dmagate.guesttool import crash_guest
from dmagate.pytest_plugin import Bench
from dmagate.vm import VM

PANIC_LINE = b"Kernel panic - not syncing: sysrq triggered crash"
HOLDER = Path(__file__).parent / "holders" / "panic_in_vm.py"


@pytest.mark.expect_splat(r"(?i)panic|sysrq")
def test_a_panicked_guest_is_held_and_its_memory_dump_opens(make_vm: Callable[..., VM],
                                                            tmp_path: Path) -> None:
    guest = make_vm(cpus=2)
    crash_guest(guest)
    dump = memdump.dump_guest_memory(guest, tmp_path / memdump.DUMP_FILE)
    guest.kill()  # nothing more to ask of it
    info = memdump.read_dump(dump)
    assert info.cpus == 2
    assert info.ram_bytes >= guest.spec.memory_mib << 20
    # The kernel's log buffer, in guest memory, holds the panic it printed.
    assert memdump.dump_contains(dump, PANIC_LINE)
    assert not memdump.dump_contains(dump, b"dmagate: no such line was ever printed" * 2)


@pytest.mark.default_kernel_only("the harness's own logic; the kernel's part is above")
def test_a_failed_test_whose_guest_panicked_leaves_its_memory_dump(dmagate_bench: Bench) -> None:
    root = dmagate_bench.paths.root
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(HOLDER.relative_to(root)), "--kernel", dmagate_bench.flavour,
         "--accel", dmagate_bench.accelerator.name],
        cwd=root, capture_output=True, text=True, timeout=dmagate_bench.scale(180), check=False)
    assert child.returncode == 1, child.stdout + child.stderr  # the one test failed
    nodeid = f"{HOLDER.relative_to(root)}::test_guest_panics"
    saved = artifacts.artifact_path(dmagate_bench.paths.artifacts, dmagate_bench.flavour,
                                    nodeid) / "panic_in_vm"
    assert PANIC_LINE.decode() in (saved / "console.log").read_text()
    dump = saved / memdump.DUMP_FILE
    assert memdump.read_dump(dump).cpus == 2, child.stdout
    assert memdump.dump_contains(dump, PANIC_LINE)
    note = (saved / memdump.NOTE_FILE).read_text()
    assert "the guest kernel panicked" in note
    assert f"crash {dmagate_bench.manifest.extra.get('symbols', 'usr/lib/debug')}" in note
    assert f"drgn -c {dump}" in note
    assert "memory dump" in child.stdout
