"""Kernel fault injection (debug kernel): make allocations fail while one
guest command runs, and count how many failed.

    result = fail_allocations(vm, "insmod /lib/modules/x.ko", module="x")
    assert result.injected >= 1 and result.command.status != 0
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

from dmagate.ssh import CommandResult
from dmagate.vm import VM

DEBUGFS = "/sys/kernel/debug"
KINDS = {"slab": "failslab", "page": "fail_page_alloc"}
# "times" counts down as failures are injected; this large budget is "no limit".
UNLIMITED = 1_000_000


@dataclass(frozen=True)
class FaultResult:
    command: CommandResult
    injected: int


def _module_range(vm: VM, module: str) -> tuple[int, int]:
    """[start, end) of a module's core text, for require-start/require-end."""
    for line in vm.run("cat /proc/modules", check=True).stdout.splitlines():
        fields = line.split()
        if fields[0] == module:
            start = int(vm.run(f"cat /sys/module/{module}/sections/.text",
                               check=True).stdout, 16)
            return start, int(fields[5], 16) + int(fields[1])
    raise ValueError(f"module {module} is not loaded")


def fail_allocations(
    vm: VM,
    command: str,
    *,
    kind: Literal["slab", "page"] = "slab",
    probability: int = 100,
    interval: int = 1,
    times: int | None = None,
    module: str | None = None,
    armed_by_command: bool = False,
    timeout: float = 60.0,
) -> FaultResult:
    """Run ``command`` with allocations failing in its task only.

    ``module`` limits failures to allocations whose call stack passes
    through that module's code. ``times`` caps the number of failures.
    The kernel applies its task filter in task context only: an interrupt
    that allocates while the module's code runs can take a failure too
    (seen on the debug kernel under TCG), so ``injected`` counts what was
    injected, not only what the command saw.

    With ``armed_by_command`` the command sets /proc/thread-self/make-it-fail
    itself around the one step it wants to fail (``dmagatectl --fail-at``),
    so failures hit that step and nothing before it.
    """
    attr = f"{DEBUGFS}/{KINDS[kind]}"
    budget = UNLIMITED if times is None else times
    settings = {
        "probability": probability, "interval": interval, "times": budget,
        "space": 0, "verbose": 0, "task-filter": "Y",
    }
    if module is not None:
        start, end = _module_range(vm, module)
        settings |= {"require-start": start, "require-end": end, "stacktrace-depth": 32}
    if kind == "page":
        settings |= {"ignore-gfp-wait": "N", "ignore-gfp-highmem": "N", "min-order": 0}
    else:
        settings |= {"ignore-gfp-wait": "N"}
    setup = "; ".join(f"echo {v} > {attr}/{k}" for k, v in settings.items())
    vm.run(setup, check=True)
    try:
        # Only this shell, and what it execs, has make-it-fail set.
        wrapped = command if armed_by_command else (
            f"sh -c {shlex.quote(f'echo 1 > /proc/self/make-it-fail && exec {command}')}"
        )
        result = vm.run(wrapped, timeout=timeout)
    finally:
        remaining = int(vm.run(f"cat {attr}/times", check=True).stdout)
        reset = {"probability": 0, "times": 1, "task-filter": "N"}
        if module is not None:
            reset |= {"require-start": 0, "require-end": 0}
        vm.run("; ".join(f"echo {v} > {attr}/{k}" for k, v in reset.items()), check=True)
    return FaultResult(result, budget - remaining)
