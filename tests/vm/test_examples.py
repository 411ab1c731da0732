"""Every script in examples/ runs as its guide says: `dmagate boot
--no-console` in the background, then the script against the QMP socket
for scripts it printed. Each example gets a fresh VM (some leave the
device dead on purpose); the test fails if the script fails, or if that
VM's kernel splatted while it ran. And `dmagate fault` with no --qmp finds
the VM that `dmagate boot` runs."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dmagate.guesttool import EXIT_XFER_ERROR
from dmagate.process import die_with_parent, kill_group
from dmagate.pytest_plugin import Bench
from dmagate.splat import find_splats, format_splats

pytestmark = pytest.mark.vm

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if p.name != "example_support.py")


@contextmanager
def booted(bench: Bench, log: Path) -> Iterator[tuple[str, Path]]:
    """`dmagate boot --no-console` until the guest is ready: (QMP socket,
    the VM's log directory). Stopped by SIGTERM, killed if it lingers."""
    with log.open("w") as out:
        boot = subprocess.Popen(
            [sys.executable, "-m", "dmagate.cli", "--kernel", bench.flavour,
             "--accel", bench.accelerator.name, "boot", "--no-console"],
            cwd=bench.paths.root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent(),  # noqa: PLW1509 - one prctl
        )
        try:
            deadline = time.monotonic() + bench.scale(120)
            while "dmagate: ready" not in (text := log.read_text()):
                assert boot.poll() is None, f"dmagate boot exited {boot.returncode}:\n{text}"
                assert time.monotonic() < deadline, f"dmagate boot not ready:\n{text}"
                time.sleep(0.2)
            socket = re.search(r"QMP for scripts: (\S+)", text)
            workdir = re.search(r"logs in (\S+)", text)
            assert socket and workdir, text
            yield socket.group(1), Path(workdir.group(1))
        finally:
            boot.send_signal(signal.SIGTERM)
            try:
                boot.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_group(boot.pid)
                boot.wait()


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_example(dmagate_bench: Bench, script: Path, tmp_path: Path) -> None:
    with booted(dmagate_bench, tmp_path / "boot.log") as (socket, workdir):
        started = time.monotonic()
        run = subprocess.run([sys.executable, str(script), socket], cwd=dmagate_bench.paths.root,
                             capture_output=True, text=True, timeout=dmagate_bench.scale(300),
                             check=False)
        wall = time.monotonic() - started
        console = (workdir / "console.log").read_text(errors="replace")
    print(f"{script.name}: {wall:.1f} s\n{run.stdout}")
    assert run.returncode == 0, f"{script.name} failed:\n{run.stdout}{run.stderr}"
    splats = find_splats(console)
    assert not splats, f"the guest kernel splatted during {script.name}:\n{format_splats(splats)}"


def test_fault_cli_reaches_the_booted_vm(dmagate_bench: Bench, tmp_path: Path) -> None:
    """`dmagate fault` with no --qmp finds the VM `dmagate boot` runs."""
    def dmagate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dmagate.cli", *args],
                              cwd=dmagate_bench.paths.root, capture_output=True, text=True,
                              timeout=dmagate_bench.scale(60), check=False)

    with booted(dmagate_bench, tmp_path / "boot.log"):
        assert dmagate("fault", "set", "dma-error").returncode == 0
        xfer = dmagate("ssh", "--", "dmagatectl", "xfer", "fill", "-s", "64K")
        shown = json.loads(dmagate("fault", "show", "--json").stdout)
    assert xfer.returncode == EXIT_XFER_ERROR, xfer.stdout + xfer.stderr
    assert "error=-5" in xfer.stdout
    assert shown["stat-faults"] == 1 and "dma-error" not in shown["armed"]
