"""Debugging a guest in place (docs/harness.md, "Debugging a failure"):
QEMU's gdb stub on 127.0.0.1 and the command line dmagate.gdb prints, with
the driver's symbols where the module was loaded, drive a real gdb to a
breakpoint in the driver's ioctl as a program calls it; and pytest's
--gdb-on-failure keeps a failed test's VM paused until Enter, for gdb."""

from __future__ import annotations

import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest

from dmagate.gdb import GDB_HOST, vm_gdb_command
from dmagate.guesttool import EXIT_OK, dmagatectl
from dmagate.pytest_plugin import Bench
from dmagate.vm import VM

BREAKPOINT = "dmagate_ioctl"
FAILING = Path(__file__).parent / "holders" / "fail_in_vm.py"


def _lines(stream: subprocess.Popen[str]) -> queue.Queue[str]:
    """gdb's output, line by line, read in a thread of its own."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert stream.stdout is not None
        for line in stream.stdout:
            lines.put(line)
    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_line(lines: queue.Queue[str], text: str, timeout: float, seen: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            break
        seen.append(line)
        if text in line:
            return
    pytest.fail(f"gdb never printed {text!r}; it printed:\n{''.join(seen)}")


def test_gdb_stops_in_the_drivers_ioctl(make_vm: Callable[..., VM]) -> None:
    vm = make_vm(gdb=True)
    argv = vm_gdb_command(vm)
    assert f"target remote {GDB_HOST}:{vm.gdb_port}" in argv
    assert any(a.startswith("add-symbol-file ") and "dmagate.ko" in a for a in argv), argv
    # Batch mode: attach (the guest stops), break, let it run until the
    # breakpoint, show where, then detach so the guest goes on.
    gdb = subprocess.Popen(
        [*argv, "-batch", "-ex", f"break {BREAKPOINT}", "-ex", "echo continuing\\n",
         "-ex", "continue", "-ex", "bt 3", "-ex", "delete", "-ex", "detach"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        lines = _lines(gdb)
        _wait_line(lines, "continuing", vm.scale(30), seen)
        # The guest runs again; its next ioctl on /dev/dmagate0 stops it.
        run = dmagatectl(vm, "info", timeout=120)
        assert gdb.wait(timeout=vm.scale(30)) == 0
    finally:
        if gdb.poll() is None:
            gdb.kill()
            gdb.wait()
    while not lines.empty():
        seen.append(lines.get())
    out = "".join(seen)
    # The module has symbols, not necessarily line tables: "0x... in f ()".
    assert re.search(rf"Breakpoint 1, (0x[0-9a-f]+ in )?{BREAKPOINT} ", out), out
    assert re.search(rf"^#0 .*\b{BREAKPOINT} ", out, re.MULTILINE), out
    assert run.status == EXIT_OK, run.describe()


@pytest.mark.default_kernel_only("the harness's own logic; the kernel's part is above")
def test_a_failed_tests_vm_waits_paused_for_gdb(dmagate_bench: Bench) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(FAILING), "--gdb-on-failure",
         "--kernel", dmagate_bench.flavour, "--accel", dmagate_bench.accelerator.name],
        cwd=str(dmagate_bench.paths.root), encoding="utf-8", codec_errors="replace",
        timeout=dmagate_bench.scale(120), dimensions=(50, 400))
    try:
        child.expect(r"paused, gdb stub on 127\.0\.0\.1:(\d+); debug it with:\r?\n  ([^\r\n]+)")
        port, command = int(child.match.group(1)), shlex.split(child.match.group(2))
        child.expect("press Enter to go on")
        assert f"target remote {GDB_HOST}:{port}" in command
        assert any("dmagate.ko" in arg for arg in command), command
        # The printed command attaches to the paused guest as it is.
        gdb = subprocess.run([*command, "-batch", "-ex", "info registers rip",
                              "-ex", f"info address {BREAKPOINT}"],
                             capture_output=True, text=True, timeout=dmagate_bench.scale(30),
                             check=False)
        assert re.search(r"^rip\s+0x[0-9a-f]+", gdb.stdout, re.MULTILINE), gdb.stdout + gdb.stderr
        assert re.search(rf'Symbol "{BREAKPOINT}" is .*0x[0-9a-f]+', gdb.stdout), \
            gdb.stdout + gdb.stderr
        child.sendline("")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 1, child.before  # the one test failed, nothing else
