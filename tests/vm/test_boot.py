"""The guest boots on the QEMU built from source and the harness reaches it."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from dmagate.hwregs import HW
from dmagate.ssh import CommandTimeout
from dmagate.vm import VM

DEVICE_VERSION = f"{HW['VERSION_VALUE'] >> 16}\\.{HW['VERSION_VALUE'] & 0xFFFF}"

DMAGATE_ID = "1234:d6a7"
# The boot is what these tests look at: their guests never come from a snapshot.
pytestmark = pytest.mark.real_boot


def test_dmagate_device_on_guest_pci_bus(vm: VM) -> None:
    out = vm.run(
        "for d in /sys/bus/pci/devices/*; do echo $(cat $d/vendor):$(cat $d/device); done",
        check=True,
    ).stdout
    ids = {line.replace("0x", "") for line in out.split()}
    assert DMAGATE_ID in ids, f"no {DMAGATE_ID} among {sorted(ids)}"
    listing = vm.run("dmagatectl list")
    assert listing.status == 0
    assert re.search(r"^0000:\S+ 1234:d6a7 driver=dmagate$", listing.stdout, re.M), listing


def test_module_reloads_and_binds(vm: VM) -> None:
    vm.run("rmmod dmagate", check=True)
    assert vm.run("test -e /sys/module/dmagate").status == 1
    mark = vm.run("dmesg | wc -l", check=True).stdout.strip()
    vm.run("insmod /lib/modules/dmagate.ko", check=True)
    new = vm.run(f"dmesg | tail -n +{int(mark) + 1}", check=True).stdout
    assert re.search(rf"dmagate 0000:\S+: bound, device version {DEVICE_VERSION}$", new, re.M), new
    assert vm.run("readlink /sys/bus/pci/drivers/dmagate/0000:*").status == 0


def test_ssh_status_output_and_upload(vm: VM, tmp_path: Path) -> None:
    status, out, err = vm.run("echo out; echo err >&2; exit 3")
    assert (status, out, err) == (3, "out\n", "err\n")
    payload = secrets.token_bytes(300_000)
    local = tmp_path / "payload.bin"
    local.write_bytes(payload)
    vm.ssh.upload(local, "/tmp/payload.bin")
    remote = vm.run("sha256sum /tmp/payload.bin", check=True).stdout.split()[0]
    assert remote == hashlib.sha256(payload).hexdigest()


def test_each_command_is_a_shell_of_its_own(vm: VM) -> None:
    # One shell on one channel starts them all (dmagate.ssh): nothing one
    # command does to its shell reaches the next.
    assert vm.run("cd /tmp; X=1; exit 4").status == 4
    assert vm.run('pwd; echo "${X:-unset}"').stdout == "/root\nunset\n"
    assert vm.run("printf 'no newline'").stdout == "no newline"
    assert vm.run("cat").stdout == ""  # stdin is empty, not the next command
    status, _, err = vm.run("echo 'unbalanced")
    assert status == 2 and "syntax error" in err, err
    assert vm.run("kill -BUS $$").status == 128 + 7
    with pytest.raises(CommandTimeout):
        vm.ssh.run("sleep 60", timeout=1)
    assert vm.run("echo after").stdout == "after\n"
    # The harness's own reads run in that shell itself: no process of their own.
    shell = vm.ssh.run("echo $$", own_shell=False).stdout
    assert vm.run("echo $PPID").stdout == shell
    assert vm.ssh.run("echo $$; echo err >&2", own_shell=False)[1:] == (shell, "err\n")
    assert vm.taint() == int(vm.run("cat /proc/sys/kernel/tainted").stdout)


def test_qmp_sees_the_running_guest_and_device(vm: VM) -> None:
    assert vm.qmp.cmd("query-status")["status"] == "running"
    devices = [
        (d["id"]["vendor"], d["id"]["device"])
        for bus in vm.qmp.cmd("query-pci")
        for d in bus["devices"]
    ]
    assert (0x1234, 0xD6A7) in devices


def test_console_is_interactive(vm: VM) -> None:
    token = secrets.token_hex(8)
    mark = vm.console.mark()
    vm.console.sendline(f"echo console-$((0x{token[:6]}))")
    vm.console.wait_for(rf"console-{int(token[:6], 16)}\b", vm.scale(10), start=mark)


# The power-off is what it looks at, the same after a boot or a restore.
@pytest.mark.real_boot(False)
def test_clean_shutdown(make_vm: Callable[..., VM]) -> None:
    guest = make_vm()
    assert guest.run("echo up").stdout == "up\n"
    assert guest.shutdown() == 0
    assert not guest.is_running()
    assert "reboot: Power down" in guest.console.text()
