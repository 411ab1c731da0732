"""Boot to SSH: the harness's guest against a floor, in the same run.

The floor is the same kernel, initramfs and kernel arguments on the same
QEMU binary, started with the shortest command line that can still answer
SSH (machine, CPU model, memory, no default devices, kernel, a user-mode
NIC; QEMU's default firmware; no dmagate device, no QMP, no console). Both
are timed from the QEMU process's start to an SSH login that worked, with
the same client; the floor first waits for sshd's banner itself, so that
the client only tries once the guest answers. Beside them, the same guest
restored from a snapshot of a booted one (dmagate.snapshot), timed the same
way: what a test's fresh VM costs.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dmagate.accel import Accelerator
from dmagate.cmdline import BASE_KERNEL_ARGS
from dmagate.manifest import Manifest
from dmagate.paths import BuildPaths
from dmagate.process import die_with_parent, kill_group
from dmagate.snapshot import make_snapshot, restored, snapshot_path
from dmagate.ssh import SSH
from dmagate.transcript import Transcript
from dmagate.vm import VM, VMOptions


@dataclass(frozen=True)
class BootTimes:
    what: str  # "harness" or "floor"
    samples_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)


def boot_results(harness: BootTimes, floor: BootTimes,
                 restore: BootTimes | None = None) -> dict[str, object]:
    """The "boot" entry of the bench's results."""
    results: dict[str, object] = {
        "harness_s": list(harness.samples_s), "floor_s": list(floor.samples_s),
        "harness_median_s": harness.median_s, "floor_median_s": floor.median_s}
    if restore is not None:
        results |= {"restore_s": list(restore.samples_s), "restore_median_s": restore.median_s}
    return results


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_banner(port: int, proc: subprocess.Popen[bytes], deadline: float,
                     argv: list[str]) -> None:
    """Until sshd's "SSH-" arrives on the forwarded port (slirp accepts the
    connection before the guest listens, then drops it)."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the floor's QEMU exited ({proc.returncode}): "
                               f"{shlex.join(argv)}")
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", port), timeout=1.0) as conn:
            if conn.recv(4) == b"SSH-":
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the floor guest never answered SSH on port {port}")
        time.sleep(0.05)


def floor_command(qemu: Path, image: Path, manifest: Manifest, accel: Accelerator,
                  port: int) -> list[str]:
    """QEMU with as little on its command line as a guest answering SSH needs."""
    kernel = image / manifest.extra.get("boot_kernel", "vmlinuz")
    firmware = [arg for d in manifest.firmware["dirs"].split(":") for arg in ("-L", d)]
    # -nodefaults: with QEMU's default devices the guest's sshd answered
    # 30 s late; this QEMU has no VGA and no NIC option ROM either.
    cpu = "host" if accel.name == "kvm" else "max"
    return [str(qemu), "-M", "q35", "-accel", accel.name, "-cpu", cpu, "-m", "512", *firmware,
            "-nodefaults", "-display", "none", "-serial", "null",
            "-kernel", str(kernel), "-initrd", str(image / "initramfs.cpio"),
            "-append", " ".join(BASE_KERNEL_ARGS),
            # restrict=on: the guest's lookups fail at once instead of waiting
            # on a resolver the sandbox cannot reach (sshd's banner came 30 s late).
            "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=net0,romfile="]


def boot_floor(paths: BuildPaths, flavour: str, accel: Accelerator, timeout: float) -> float:
    """Seconds from starting the minimal QEMU to a working SSH login."""
    image = paths.image(flavour)
    manifest = Manifest.load(image)
    port = _free_port()
    argv = floor_command(paths.qemu, image, manifest, accel, port)
    with tempfile.TemporaryDirectory(dir=paths.build) as tmp:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent())  # noqa: PLW1509 - one prctl
        try:
            ssh = SSH(port, image / manifest.extra["client_key"], manifest.extra["host_key"],
                      Transcript(Path(tmp) / "ssh.log"))
            _wait_for_banner(port, proc, started + timeout, argv)
            ssh.connect(timeout)
            seconds = time.monotonic() - started
            ssh.close()
        finally:
            kill_group(proc.pid)
            proc.wait()
    return seconds


def measure_boots(paths: BuildPaths, flavour: str, accel: Accelerator,
                  boots: int) -> tuple[BootTimes, BootTimes, BootTimes]:
    """``boots`` boots each of the harness's guest and the floor, and as many
    restores of the harness's guest from its snapshot (made first, untimed),
    alternating, so that load on the host hits all alike."""
    harness, floor, restore = [], [], []
    first = VM(VMOptions(flavour=flavour, name="bench-snapshot"), paths, accel)
    if not snapshot_path(first).exists():
        make_snapshot(first, snapshot_path(first))
    for i in range(boots):
        with VM(VMOptions(flavour=flavour, name=f"bench-boot-{i}"), paths, accel) as vm:
            harness.append(vm.timing.ssh_ready)
        floor.append(boot_floor(paths, flavour, accel, timeout=accel.scale(120)))
        vm = VM(VMOptions(flavour=flavour, name=f"bench-restore-{i}"), paths, accel)
        try:
            restore.append(restored(vm).timing.ssh_ready)
        finally:
            vm.shutdown()
    return (BootTimes("harness", tuple(harness)), BootTimes("floor", tuple(floor)),
            BootTimes("restore", tuple(restore)))
