"""No QEMU outlives the pytest that started it, however pytest ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmagate.pytest_plugin import Bench

HOLDER = Path(__file__).parent / "holders" / "hold_vm.py"


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.slow
@pytest.mark.default_kernel_only("the harness's own process handling")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM],
                         ids=["SIGKILL", "SIGINT", "SIGTERM"])
def test_no_qemu_survives_pytest(
    how: signal.Signals, dmagate_bench: Bench, tmp_path: Path
) -> None:
    pidfile = tmp_path / "qemu.pid"
    output = tmp_path / "child-pytest.log"
    env = dict(os.environ, DMAGATE_HOLDER_PIDFILE=str(pidfile))
    child = subprocess.Popen(
        # SIGINT at its default: a shell starts background jobs with it
        # ignored, and a Python started so never turns it into
        # KeyboardInterrupt (CI launched that way timed out here).
        ["env", "--default-signal=INT", sys.executable, "-m", "pytest", "-q", "-p",
         "no:cacheprovider", str(HOLDER),
         "--kernel", dmagate_bench.flavour, "--accel", dmagate_bench.accelerator.name],
        cwd=dmagate_bench.paths.root,
        env=env,
        stdout=output.open("w"),  # a file: a pipe nobody reads could block the child
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + dmagate_bench.scale(30)
        while not pidfile.exists() or not pidfile.read_text().endswith("\n"):
            assert child.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "the child pytest never booted its VM"
            time.sleep(0.1)
        qemu = int(pidfile.read_text())
        assert _alive(qemu)
        assert "qemu-system-x86_64" in _cmdline(qemu)

        os.kill(child.pid, how)  # pytest itself, not its process group
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the child pytest did not end after {how.name}:\n{output.read_text()}")
        deadline = time.monotonic() + 10
        while _alive(qemu) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(qemu), f"QEMU {qemu} outlived pytest ({how.name})"
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
