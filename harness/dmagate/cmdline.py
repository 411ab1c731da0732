"""The QEMU command line for a dmagate guest, built from plain data."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

# Every guest starts from these: the serial console for the kernel and the
# harness; a panic pauses the guest where its kernel has the pvpanic driver
# (its memory stays there to dump, dmagate.memdump), else it ends QEMU (a
# reboot, with -no-reboot). The rest shave about a second
# off a TCG boot (measured: ssh-ready 3.4-3.7 s with, 3.7-4.8 s without): no
# speculation mitigations to patch in, no TSC and timer checks that emulated
# hardware passes anyway, one UART, no crypto self-tests at boot.
BASE_KERNEL_ARGS = (
    "console=ttyS0",
    "panic=-1",
    "printk.time=1",
    "mitigations=off",
    "tsc=reliable",
    "no_timer_check",
    "8250.nr_uarts=1",
    "cryptomgr.notests",
    "random.trust_cpu=on",
)
GUEST_SSH_PORT = 22
# Debian's qemu-system-data and seabios: the +ds QEMU source ships no firmware.
FIRMWARE_DIRS = (Path("/usr/share/qemu"), Path("/usr/share/seabios"))
FAST_BIOS = "qboot.rom"


DMA_LOG_ENTRIES = 65536
# A dmagate behind intel-iommu with strict invalidation: an unmap takes
# effect at once (VMOptions devices, kernel_args).
IOMMU_DEVICES = ("intel-iommu,intremap=off", "dmagate")
IOMMU_STRICT_ARGS = ("intel_iommu=on", "iommu.strict=1")


@dataclass(frozen=True)
class GuestSpec:
    """What to boot and on what virtual hardware."""

    qemu: Path
    kernel: Path
    initrd: Path
    firmware_dirs: tuple[Path, ...]
    bios: str = "qboot.rom"
    accel: str = "tcg"
    cpus: int = 2
    memory_mib: int = 512
    kernel_args: tuple[str, ...] = ()
    # -device arguments, e.g. ("dmagate",) or ("pcie-root-port,id=rp0", "dmagate,bus=rp0")
    devices: tuple[str, ...] = ("dmagate",)
    extra_args: tuple[str, ...] = field(default=())


def build_command(
    spec: GuestSpec, qmp_socket: Path, user_qmp_socket: Path | None = None
) -> list[str]:
    """Return argv for QEMU; the serial console is its stdio.

    ``qmp_socket`` is the harness's monitor; ``user_qmp_socket``, if given, a
    second one for people and scripts (a QMP socket serves one client).

    SSH is forwarded from 127.0.0.1 only, to a port QEMU picks (ask QMP
    "info usernet" for it); restrict=on keeps the guest from reaching out.
    """
    cpu = "host" if spec.accel == "kvm" else "max"
    argv = [
        str(spec.qemu),
        "-M", "q35",
        "-accel", spec.accel,
        "-cpu", cpu,
        "-smp", str(spec.cpus),
        "-m", str(spec.memory_mib),
        "-nodefaults",
        "-no-reboot",
        "-display", "none",
        "-serial", "stdio",
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
    ]
    if user_qmp_socket is not None:
        argv += ["-qmp", f"unix:{user_qmp_socket},server=on,wait=off"]
    for directory in spec.firmware_dirs:
        argv += ["-L", str(directory)]
    argv += [
        "-bios", spec.bios,
        "-kernel", str(spec.kernel),
        "-initrd", str(spec.initrd),
        "-append", " ".join((*BASE_KERNEL_ARGS, *spec.kernel_args)),
        "-netdev",
        f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:0-:{GUEST_SSH_PORT}",
        # romfile= : no PXE ROM, which the +ds build does not ship anyway.
        "-device", "virtio-net-pci,netdev=net0,romfile=",
        # The guest kernel tells QEMU it panicked, and QEMU stops it there.
        "-device", "pvpanic-pci",
        "-action", "panic=pause",
    ]
    # Room in each dmagate's DMA access log for what a test does between two
    # ownership checks (the harness reads it after every test).
    argv += ["-global", f"dmagate.dma-log-size={DMA_LOG_ENTRIES}"]
    for device in spec.devices:
        argv += ["-device", device]
    argv += spec.extra_args
    return argv


_HOST_FORWARD = re.compile(
    r"TCP\[HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)\s+\S+\s+" + str(GUEST_SSH_PORT) + r"\b"
)


def ssh_forward_port(usernet: str) -> int | None:
    """The host port slirp bound for the guest's sshd, from HMP "info usernet"."""
    match = _HOST_FORWARD.search(usernet)
    return int(match.group(1)) if match else None
