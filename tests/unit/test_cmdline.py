from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from dmagate.cmdline import GuestSpec, build_command, ssh_forward_port


def spec(**overrides: Any) -> GuestSpec:
    base = GuestSpec(
        qemu=Path("/q/qemu-system-x86_64"),
        kernel=Path("/i/vmlinux"),
        initrd=Path("/i/initramfs.cpio"),
        firmware_dirs=(Path("/usr/share/qemu"), Path("/usr/share/seabios")),
    )
    return replace(base, **overrides)


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_guest_is_q35_without_default_devices_and_never_reboots() -> None:
    argv = build_command(spec(), Path("/run/qmp.sock"))
    assert argv[0] == "/q/qemu-system-x86_64"
    assert option(argv, "-M") == ["q35"]
    for flag in ("-nodefaults", "-no-reboot"):
        assert flag in argv
    append = option(argv, "-append")[0].split()
    assert "console=ttyS0" in append and "panic=-1" in append
    assert option(argv, "-serial") == ["stdio"]
    assert option(argv, "-bios") == ["qboot.rom"]
    assert option(argv, "-L") == ["/usr/share/qemu", "/usr/share/seabios"]


def test_ssh_forward_is_loopback_only_and_port_is_picked_by_qemu() -> None:
    argv = build_command(spec(), Path("/run/qmp.sock"))
    (netdev,) = option(argv, "-netdev")
    assert "restrict=on" in netdev.split(",")
    assert "hostfwd=tcp:127.0.0.1:0-:22" in netdev.split(",")


def test_accelerator_picks_cpu_model() -> None:
    tcg = build_command(spec(accel="tcg"), Path("/s"))
    kvm = build_command(spec(accel="kvm"), Path("/s"))
    assert option(tcg, "-accel") == ["tcg"] and option(tcg, "-cpu") == ["max"]
    assert option(kvm, "-accel") == ["kvm"] and option(kvm, "-cpu") == ["host"]


def test_devices_kernel_args_and_qmp_sockets() -> None:
    argv = build_command(
        spec(devices=("pcie-root-port,id=rp0", "dmagate,bus=rp0"), kernel_args=("dmagate.noload",)),
        Path("/run/qmp.sock"),
        Path("/run/user-qmp.sock"),
    )
    assert option(argv, "-device")[-2:] == ["pcie-root-port,id=rp0", "dmagate,bus=rp0"]
    assert option(argv, "-append")[0].endswith(" dmagate.noload")
    assert option(argv, "-qmp") == [
        "unix:/run/qmp.sock,server=on,wait=off",
        "unix:/run/user-qmp.sock,server=on,wait=off",
    ]


# Captured from QEMU 10.0.2's HMP "info usernet" with the forward above.
USERNET = """\
Hub -1 (net0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[HOST_FORWARD]  10       127.0.0.1 36103       10.0.2.15    22     0     0
"""


def test_ssh_port_from_info_usernet() -> None:
    assert ssh_forward_port(USERNET) == 36103
    assert ssh_forward_port(USERNET.replace(" 22 ", " 2222 ")) is None
    assert ssh_forward_port("") is None
