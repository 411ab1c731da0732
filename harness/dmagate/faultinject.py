"""Kernel fault injection (debug kernel): make allocations fail while one
guest command runs, and count how many failed; or walk every allocation a
command makes through a module, failing each in turn.

    result = fail_allocations(vm, "insmod /lib/modules/x.ko", module="x")
    assert result.injected >= 1 and result.command.status != 0
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from dmagate.ssh import CommandResult
from dmagate.vm import VM

DEBUGFS = "/sys/kernel/debug"
KINDS = {"slab": "failslab", "page": "fail_page_alloc"}
# "times" counts down as failures are injected; this large budget is "no limit".
UNLIMITED = 1_000_000
# require-start/require-end as the kernel sets them: no stack filter at all.
NO_STACK_FILTER = {"require-start": 0, "require-end": 2**64 - 1,
                   "reject-start": 0, "reject-end": 0}
# DMA-API debugging's entry points (kernel/dma/debug.c), found in
# /proc/kallsyms: dma_map_*() and friends call one of them before anything
# dma-debug allocates for its bookkeeping.
_DMA_DEBUG_ENTRY = re.compile(r"^debug_dma_\w+$")
# The file's text is a few tens of KiB; a span wider than this means the
# symbols were not where they were expected, and rejecting it could hide
# every allocation.
_DMA_DEBUG_MAX_SPAN = 1 << 20


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


def _dma_debug_range(vm: VM) -> dict[str, int]:
    """reject-start/reject-end around DMA-API debugging's own code.

    dma-debug allocates for its bookkeeping inside the driver's dma_map_*()
    calls, within a few frames of the driver. A failure injected there does
    not reach the driver: dma-debug switches itself off for the rest of the
    boot ("cacheline tracking ENOMEM, dma-debug disabled"), which the splat
    check rightly reports, since every later DMA-API check is then gone. So
    those allocations are never failed. Where the kernel has no dma-debug,
    no range is rejected.
    """
    text = sorted(
        (int(fields[0], 16), fields[2])
        for fields in (line.split() for line in
                       vm.run("cat /proc/kallsyms", check=True).stdout.splitlines())
        if len(fields) == 3 and fields[1] in "tT"
    )
    entries = [i for i, (_address, name) in enumerate(text) if _DMA_DEBUG_ENTRY.match(name)]
    if not entries or entries[-1] + 1 >= len(text):
        return {"reject-start": 0, "reject-end": 0}
    # From the first entry point up to the function after the last one.
    start, end = text[entries[0]][0], text[entries[-1] + 1][0]
    if not 0 < end - start <= _DMA_DEBUG_MAX_SPAN:
        raise AssertionError(f"dma-debug's entry points span {start:#x}..{end:#x}")
    return {"reject-start": start, "reject-end": end}


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
    settings: dict[str, int | str] = {
        "task-filter": "Y", "interval": interval, "times": budget, "space": 0, "verbose": 0,
    }
    if module is not None:
        start, end = _module_range(vm, module)
        settings |= {"require-start": start, "require-end": end, "stacktrace-depth": 32,
                     **_dma_debug_range(vm)}
    else:
        settings |= NO_STACK_FILTER
    if kind == "page":
        settings |= {"ignore-gfp-wait": "N", "ignore-gfp-highmem": "N", "min-order": 0}
    else:
        settings |= {"ignore-gfp-wait": "N"}
    # Disarmed while the filters change, armed once they are all in place.
    setup = "; ".join([f"echo 0 > {attr}/probability",
                       *(f"echo {v} > {attr}/{k}" for k, v in settings.items()),
                       f"echo {probability} > {attr}/probability"])
    vm.run(setup, check=True)
    try:
        # Only this shell, and what it execs, has make-it-fail set.
        wrapped = command if armed_by_command else (
            f"sh -c {shlex.quote(f'echo 1 > /proc/self/make-it-fail && exec {command}')}"
        )
        result = vm.run(wrapped, timeout=timeout)
    finally:
        remaining = int(vm.run(f"cat {attr}/times", check=True).stdout)
        reset = {"probability": 0, "times": 1, "task-filter": "N"} | NO_STACK_FILTER
        vm.run("; ".join(f"echo {v} > {attr}/{k}" for k, v in reset.items()), check=True)
    return FaultResult(result, budget - remaining)


def _filter_settings(
    kind: str, start: int, end: int, depth: int, reject: dict[str, int]
) -> dict[str, int | str]:
    settings: dict[str, int | str] = {
        "probability": 0, "task-filter": "N", "ignore-gfp-wait": "N", "verbose": 0,
        "require-start": start, "require-end": end, "stacktrace-depth": depth, **reject,
    }
    if kind == "page":
        settings |= {"ignore-gfp-highmem": "N", "min-order": 0}
    return settings


@dataclass(frozen=True)
class NthFailure:
    """One run of a walk: the nth allocation through the module was failed."""

    n: int
    result: CommandResult


def fail_each_allocation(
    vm: VM,
    module: str,
    command: Callable[[int], str],
    check: Callable[[NthFailure], None],
    *,
    depth: int = 8,
    limit: int = 300,
) -> list[NthFailure]:
    """Fail the 1st, then the 2nd, ... allocation (slab or page) whose call
    stack passes through ``module``, one per run of ``command(n)``, until a
    run reaches its end with nothing failed.

    ``command(n)`` must write n to /proc/thread-self/fail-nth in the task
    that does the work and print ``fail_nth_left=K`` at its end
    (``dmagatectl --fail-nth``, or a shell builtin sequence). ``check`` is
    called after each run that had a failure injected; it asserts the
    outcome was clean and puts things back. Returns those runs; the run
    with nothing injected is the walk's end and must have succeeded.

    Only allocations within ``depth`` stack frames of the module's code
    count: the module's own, and what the kernel allocates directly for
    it (devres, DMA memory, page tables, sysfs nodes), not everything deep
    below it. With no such limit, a probe walk reaches the ACPI interpreter
    evaluating _PRT under pci_enable_device(), hundreds of allocations,
    and on 6.12.117 an ACPICA use-after-free on one of those failure paths
    (KASAN: slab-use-after-free in acpi_ns_get_attached_object). DMA-API
    debugging's own allocations are never failed (``_dma_debug_range``).
    """
    start, end = _module_range(vm, module)
    reject = _dma_debug_range(vm)
    for kind, attr in KINDS.items():
        setup = _filter_settings(kind, start, end, depth, reject)
        vm.run("; ".join(f"echo {v} > {DEBUGFS}/{attr}/{k}" for k, v in setup.items()),
               check=True)
    failures: list[NthFailure] = []
    try:
        for n in range(1, limit + 1):
            result = vm.run(command(n))
            left = re.search(r"^fail_nth_left=(\d+)$", result.stdout, re.M)
            if left is None:
                raise AssertionError(f"run {n} did not report fail_nth_left:\n{result}")
            if int(left.group(1)) > 0:
                if result.status != 0:
                    raise AssertionError(f"run {n} failed with nothing injected:\n{result}")
                return failures
            failure = NthFailure(n, result)
            check(failure)
            failures.append(failure)
        raise AssertionError(f"still failing allocations after {limit} runs")
    finally:
        for attr in KINDS.values():
            vm.run("; ".join(f"echo {v} > {DEBUGFS}/{attr}/{k}"
                             for k, v in NO_STACK_FILTER.items()), check=True)
