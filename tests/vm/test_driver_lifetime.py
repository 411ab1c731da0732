"""Lifetimes: a program that dies or lets go mid-DMA, a device unplugged or
unbound under a mapped buffer, module unload, several devices, every
interrupt mode, and the IOMMU."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from dmagate.cmdline import IOMMU_DEVICES, IOMMU_STRICT_ARGS
from dmagate.devicefaults import device_faults
from dmagate.guesttool import (
    EXIT_OK,
    dmagatectl,
    driver_stats,
    merged_fields,
    stats_delta,
    wait_device_deleted,
    wait_for,
)
from dmagate.vm import VM

LONG_WINDOW_NS = 1_500_000_000


def start_background(vm: VM, args: str, out: str) -> int:
    pid = vm.run(f"setsid dmagatectl {args} > {out} 2>&1 < /dev/null & echo $!", check=True)
    return int(pid.stdout)


def wait_output(vm: VM, out: str, pattern: str, timeout: float = 20) -> str:
    return wait_for(vm, f"cat {out}", pattern, timeout)


def wait_gone(vm: VM, pid: int, timeout: float = 20) -> None:
    """Until the process has exited (a zombie counts: its files are closed)."""
    vm.run(f"while grep -qv '^State:.*Z' /proc/{pid}/status 2>/dev/null; do sleep 0.05; done",
           timeout=timeout, check=True)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_death_mid_dma_frees_only_after_the_device_is_done(vm: VM, how: str) -> None:
    with device_faults(vm, **{"fault-extra-delay-ns": LONG_WINDOW_NS}):
        pid = start_background(vm, "hold fill -s 4M --no-child", "/tmp/hold.out")
        wait_output(vm, "/tmp/hold.out", r"^submitted seq=1$")
        before = driver_stats(vm)
        assert stats_delta(before, before)["completions"] == 0
        vm.run(f"kill -{how} {pid}", check=True)
        wait_gone(vm, pid)
        # The file's release waited for the transfer: it completed before the exit.
        assert stats_delta(before, driver_stats(vm))["completions"] == 1
    assert dmagatectl(vm, "xfer fill -s 4M").status == EXIT_OK


def test_close_and_munmap_mid_dma(vm: VM) -> None:
    with device_faults(vm, **{"fault-extra-delay-ns": LONG_WINDOW_NS}):
        before = driver_stats(vm)
        run = dmagatectl(vm, "hold fill -s 4M --no-child --close")
        assert run.status == EXIT_OK, run.describe()
        assert "closed" in run.merged()
        # The last munmap dropped the file; release waited for the device.
        assert stats_delta(before, driver_stats(vm))["completions"] == 1
    assert dmagatectl(vm, "xfer checksum -s 4M").status == EXIT_OK


def test_module_stays_while_a_file_is_open(vm: VM) -> None:
    pid = start_background(vm, "hold fill -s 64K", "/tmp/pin.out")
    wait_output(vm, "/tmp/pin.out", r"^submitted")
    refused = vm.run("rmmod dmagate")
    assert refused.status != 0, refused
    assert int(vm.run("cat /sys/module/dmagate/refcnt", check=True).stdout) >= 1
    vm.run(f"kill -KILL -{pid}", check=True)  # the session leader and its child
    wait_gone(vm, pid)
    vm.run("for i in $(seq 50); do rmmod dmagate 2>/dev/null && break; sleep 0.1; done; "
           "test ! -e /sys/module/dmagate", check=True)
    vm.run("insmod /lib/modules/dmagate.ko", check=True)
    assert dmagatectl(vm, "xfer fill -s 64K").status == EXIT_OK


def check_hangup(out: str, mid_dma: bool) -> None:
    """What the program saw when the device went away under it."""
    outcome = merged_fields(out)
    assert "HUP" in outcome["revents"].split("|"), out
    if mid_dma:
        assert re.search(r"^record seq=1 error=ENODEV$", out, re.M), out
    assert (outcome["touch"], outcome["wait_errno"], outcome["submit_errno"],
            outcome["mmap_errno"], outcome["close"]) == ("SIGBUS", "ENODEV", "ENODEV",
                                                         "ENODEV", "0"), out


def hold_buffer(vm: VM, mid_dma: bool, out: str) -> int:
    pid = start_background(vm, f"wait-hup fill -s 4M{'' if mid_dma else ' --idle'}", out)
    wait_output(vm, out, r"^submitted seq=1$" if mid_dma else r"^ready$")
    return pid


@pytest.mark.parametrize("mid_dma", [True, False], ids=["mid-dma", "idle"])
def test_hot_unplug_revokes_and_hangs_up(make_vm: Callable[..., VM], mid_dma: bool) -> None:
    guest = make_vm(devices=("pcie-root-port,id=rp0,chassis=1,slot=1", "dmagate,id=dg0,bus=rp0"))
    with device_faults(guest, **{"fault-extra-delay-ns": 5_000_000_000}):
        pid = hold_buffer(guest, mid_dma, "/tmp/hup.out")
        guest.qmp.cmd("device_del", id="dg0")
        out = wait_output(guest, "/tmp/hup.out", r"^close=0$", timeout=30)
    check_hangup(out, mid_dma)
    wait_gone(guest, pid)
    wait_device_deleted(guest, "dg0")
    assert "dmagate 0000:01:00.0: removed" in guest.run("dmesg", check=True).stdout
    guest.run("rmmod dmagate", check=True)


@pytest.mark.parametrize("mid_dma", [True, False], ids=["mid-dma", "idle"])
def test_unbind_with_buffer_mapped(vm: VM, mid_dma: bool) -> None:
    bdf = vm.run("basename $(readlink /sys/class/misc/dmagate0/device)", check=True).stdout.strip()
    with device_faults(vm, **{"fault-extra-delay-ns": 5_000_000_000}):
        pid = hold_buffer(vm, mid_dma, "/tmp/unbind.out")
        vm.run(f"echo {bdf} > /sys/bus/pci/drivers/dmagate/unbind", check=True)
        out = wait_output(vm, "/tmp/unbind.out", r"^close=0$")
    check_hangup(out, mid_dma)
    wait_gone(vm, pid)
    vm.run(f"echo {bdf} > /sys/bus/pci/drivers/dmagate/bind", check=True)
    assert dmagatectl(vm, "xfer fill -s 1M").status == EXIT_OK


def test_two_devices_work_at_once(make_vm: Callable[..., VM]) -> None:
    guest = make_vm(devices=("dmagate", "dmagate"))
    out = guest.run("dmagatectl xfer fill -d /dev/dmagate0 -s 4M -n 5 > /tmp/a & "
                    "dmagatectl xfer transform -d /dev/dmagate1 -s 4M -n 5 > /tmp/b; "
                    "b=$?; wait $!; a=$?; echo $a $b; cat /tmp/a /tmp/b", check=True).stdout
    assert out.splitlines()[0] == "0 0", out
    assert out.count("verified=yes") == 10
    assert driver_stats(guest, 0)["completions"] == driver_stats(guest, 1)["completions"] == 5


def interrupts_of(vm: VM, name: str) -> int:
    total = 0
    for line in vm.run("cat /proc/interrupts", check=True).stdout.splitlines():
        if line.rstrip().endswith(name):
            fields = line.split()
            total += sum(int(f) for f in fields[1:1 + 2] if f.isdigit())
    return total


@pytest.mark.parametrize("mode", ["msix", "msi", "intx"])
def test_every_interrupt_mode(vm: VM, mode: str) -> None:
    try:
        vm.run(f"rmmod dmagate && insmod /lib/modules/dmagate.ko irq_mode={mode}", check=True)
        assert dmagatectl(vm, "info")["irq_mode"] == mode
        before = interrupts_of(vm, "dmagate0")
        run = dmagatectl(vm, "xfer transform -s 1M -n 10")
        assert run.status == EXIT_OK, run.describe()
        assert interrupts_of(vm, "dmagate0") - before >= 10
    finally:
        vm.run("rmmod dmagate; insmod /lib/modules/dmagate.ko", check=True)


def test_dma_through_the_iommu(make_vm: Callable[..., VM]) -> None:
    guest = make_vm(devices=IOMMU_DEVICES, kernel_args=IOMMU_STRICT_ARGS)
    group = guest.run("readlink /sys/class/misc/dmagate0/device/iommu_group").stdout
    assert "iommu_groups" in group, "the device is behind the IOMMU"
    for args in ("xfer fill -s 64M", "xfer checksum -s 4M -o 0x3000 -l 0x12345",
                 "xfer transform -s 1M -n 5"):
        run = dmagatectl(guest, args, timeout=120)
        assert run.status == EXIT_OK, run.describe()
    with device_faults(guest, **{"fault-extra-delay-ns": 300_000_000}):
        run = dmagatectl(guest, "touch fill --touch read --via child -s 1M")
    assert run.status == EXIT_OK, run.describe()
