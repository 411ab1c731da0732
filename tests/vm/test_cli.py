"""The dmagate CLI as a person uses it: boot a console, reach the VM from a
second terminal over SSH and QMP, quit with Ctrl-]."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from dmagate.manifest import Manifest
from dmagate.pytest_plugin import Bench
from dmagate.session import session_path

pytestmark = [pytest.mark.vm, pytest.mark.default_kernel_only("the CLI is the harness's; "
               "test_boot boots every kernel")]


def dmagate(bench: Bench, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dmagate.cli", "--kernel", bench.flavour,
         "--accel", bench.accelerator.name, *args],
        cwd=bench.paths.root, capture_output=True, text=True, timeout=120, check=False,
    )


def test_info_prints_manifest_and_accelerator(dmagate_bench: Bench) -> None:
    result = dmagate(dmagate_bench, "info")
    assert result.returncode == 0, result.stderr
    release = Manifest.load(dmagate_bench.paths.image(dmagate_bench.flavour)).kernel_release
    assert re.search(rf"^flavour\s+{re.escape(dmagate_bench.flavour)} \(kernel "
                     rf"{re.escape(release)}\)$", result.stdout, re.M), result.stdout
    assert f"accelerator {dmagate_bench.accelerator.name}" in result.stdout


def test_ssh_without_running_vm_names_the_fix(dmagate_bench: Bench, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dmagate.cli", "ssh", "true"],
        cwd=dmagate_bench.paths.root, capture_output=True, text=True, check=False,
        env=dict(os.environ, DMAGATE_ROOT=str(tmp_path)),
    )
    assert result.returncode != 0
    assert "make shell" in result.stderr


def test_boot_console_then_ssh_and_qmp_from_outside(dmagate_bench: Bench) -> None:
    boot = pexpect.spawn(
        sys.executable,
        ["-m", "dmagate.cli", "--kernel", dmagate_bench.flavour,
         "--accel", dmagate_bench.accelerator.name, "boot"],
        cwd=str(dmagate_bench.paths.root), encoding="utf-8", timeout=None,
    )
    try:
        boot.expect(r"QMP for scripts: (\S+)", timeout=dmagate_bench.scale(10))
        socket = boot.match.group(1)
        boot.expect("dmagate-init: ready", timeout=dmagate_bench.scale(15))
        boot.sendline("echo typed-$((6*7))")
        boot.expect("typed-42", timeout=dmagate_bench.scale(10))

        ssh = dmagate(dmagate_bench, "ssh", "cat", "/proc/sys/kernel/hostname")
        assert (ssh.returncode, ssh.stdout) == (0, "dmagate-guest\n"), ssh.stderr
        failing = dmagate(dmagate_bench, "ssh", "sh", "-c", "exit 7")
        assert failing.returncode == 7

        qmp = dmagate(dmagate_bench, "qmp", "query-status")
        assert qmp.returncode == 0, qmp.stderr
        assert json.loads(qmp.stdout)["status"] == "running"
        bad = dmagate(dmagate_bench, "qmp", "no-such-command")
        assert bad.returncode == 1 and "CommandNotFound" in bad.stdout

        qemu_pid = json.loads(
            session_path(dmagate_bench.paths, dmagate_bench.flavour).read_text()
        )["pid"]
        boot.send("\x1d")  # Ctrl-]
        boot.expect(pexpect.EOF, timeout=dmagate_bench.scale(10))
        assert not Path(socket).exists()
        assert not Path(f"/proc/{qemu_pid}").exists() or "Z" in Path(
            f"/proc/{qemu_pid}/stat").read_text().split()[2]
    finally:
        boot.close(force=True)
