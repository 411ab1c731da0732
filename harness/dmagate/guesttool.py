"""Running ``dmagatectl`` in the guest and reading what it printed.

The tool prints ``key=value`` pairs, one line per event
(guest-driver/tools/dmagatectl.c); its exit status says whether the
outcome was the expected one. The driver's counters live in
/sys/class/misc/dmagate<N>/stats/.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from dmagate.vm import VM

DRIVER_PARAMS = "/sys/module/dmagate/parameters"
DRIVER_TIMEOUT_MS = f"{DRIVER_PARAMS}/timeout_ms"
STAT_NAMES = ("submits", "completions", "errors", "timeouts", "revocations", "faults", "sigbus")

# Exit statuses of dmagatectl.
EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_SYSCALL = 3
EXIT_XFER_ERROR = 4


def parse_line(line: str) -> dict[str, str]:
    """``a=1 b=x`` -> {"a": "1", "b": "x"}; bare words map to ""."""
    fields: dict[str, str] = {}
    for word in line.split():
        key, _, value = word.partition("=")
        fields[key] = value
    return fields


@dataclass(frozen=True)
class ToolRun:
    command: str
    status: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[dict[str, str]]:
        return [parse_line(line) for line in self.stdout.splitlines() if line.strip()]

    def merged(self) -> dict[str, str]:
        """Every key the tool printed; a later line wins."""
        return merged_fields(self.stdout)

    def __getitem__(self, key: str) -> str:
        merged = self.merged()
        if key not in merged:
            raise KeyError(f"{key!r} not printed by `{self.command}`:\n{self.describe()}")
        return merged[key]

    def describe(self) -> str:
        return f"exit {self.status}\nstdout:\n{self.stdout}stderr:\n{self.stderr}"


def dmagatectl(vm: VM, args: str, timeout: float = 60.0, first: str = "") -> ToolRun:
    """``dmagatectl ARGS`` in the guest; ``first``, a shell command (e.g.
    ``submitted_in_background``), runs before it in the same SSH command."""
    command = f"dmagatectl {args}"
    status, out, err = vm.run(f"{first}{command}", timeout=timeout)
    return ToolRun(command, status, out, err)


def submitted_in_background(args: str, out: str) -> str:
    """A shell command: ``dmagatectl ARGS`` started in the background with
    its output in ``out``, then a wait (up to 30 s) until it has submitted.
    What follows in the same guest command then runs while that transfer is
    in flight, with no SSH round trip in between: on a busy host one can
    outlast a short watchdog or latency on the debug kernel. ``out`` goes
    first: the background shell truncates it only when it gets to run, and
    a loaded guest lets the wait read an earlier run's ``submitted`` before
    that."""
    return (f"rm -f {out}; setsid dmagatectl {args} > {out} 2>&1 < /dev/null & "
            f"for i in $(seq 3000); do grep -q ^submitted {out} && break; sleep 0.01; done; ")


def wait_for(vm: VM, command: str, pattern: str, timeout: float) -> str:
    """Run ``command`` until its output matches ``pattern`` (multi-line);
    the output. ``timeout`` is scaled for the VM."""
    deadline = time.monotonic() + vm.scale(timeout)
    while True:
        out = vm.run(command).stdout
        if re.search(pattern, out, re.M):
            return out
        assert time.monotonic() < deadline, f"{command!r} never showed {pattern!r}:\n{out}"
        time.sleep(0.1)


def wait_device_deleted(vm: VM, device_id: str, timeout: float = 15.0) -> None:
    """Wait until the guest has released a device that ``device_del`` asked
    for: QEMU takes it off /machine/peripheral as it sends DEVICE_DELETED
    (asking QOM needs no event an earlier reader may have taken). Scaled
    for the VM."""
    deadline = time.monotonic() + vm.scale(timeout)
    while device_id in (p["name"] for p in vm.qmp.cmd("qom-list", path="/machine/peripheral")):
        assert time.monotonic() < deadline, (f"the guest never released {device_id}\n"
                                             f"{_unplug_state(vm)}")
        time.sleep(0.2)


def _unplug_state(vm: VM) -> str:
    """What the guest says about a device it has not released."""
    guest = vm.run("ls /sys/bus/pci/devices; dmesg | tail -15").stdout
    return f"the guest's PCI devices and last kernel messages:\n{guest}"


def crash_guest(vm: VM, timeout: float = 30.0) -> None:
    """Panic the guest kernel (sysrq "c") and wait until QEMU holds it
    there (pvpanic). ``timeout`` is scaled for the VM."""
    # The command never comes back: the kernel is gone before it could.
    vm.ssh.client.exec_command("echo c > /proc/sysrq-trigger")
    deadline = time.monotonic() + vm.scale(timeout)
    while vm.run_state() != "guest-panicked":
        assert vm.is_running(), "QEMU ended at the panic: the guest has no pvpanic driver"
        assert time.monotonic() < deadline, f"no panic; QEMU says {vm.run_state()}"
        time.sleep(0.2)


def merged_fields(text: str) -> dict[str, str]:
    """Every key of every ``key=value`` line in ``text``; a later line wins."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        out |= parse_line(line)
    return out


def driver_stats(vm: VM, device: int = 0) -> dict[str, int]:
    base = f"/sys/class/misc/dmagate{device}/stats"
    out = vm.run(f"cd {base} && grep . {' '.join(STAT_NAMES)}", check=True).stdout
    stats = {}
    for line in out.splitlines():
        name, _, value = line.partition(":")
        stats[name] = int(value)
    return stats


def stats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in before}


@contextmanager
def driver_param(vm: VM, name: str, value: str) -> Iterator[None]:
    """The driver's writable module parameter ``name`` at ``value`` for a block."""
    path = f"{DRIVER_PARAMS}/{name}"
    before = vm.run(f"cat {path} && echo {value} > {path}", check=True).stdout.strip()
    try:
        yield
    finally:
        if vm.is_running():
            vm.run(f"echo {before} > {path}", check=True)


def driver_timeout(vm: VM, ms: int) -> AbstractContextManager[None]:
    """The driver's watchdog (its timeout_ms parameter) at ``ms`` for a block."""
    return driver_param(vm, "timeout_ms", str(ms))


def still_works(vm: VM) -> ToolRun:
    """A TRANSFORM, verified: whether the driver and device work (after a fault)."""
    return dmagatectl(vm, "xfer transform -s 256K")


def assert_still_works(vm: VM) -> None:
    run = still_works(vm)
    assert run.status == EXIT_OK, run.describe()
