"""The protocol's cycle in a booted guest: SUBMIT -> interrupt -> wake ->
first touch of every page of the range (``dmagatectl cycle``), with the
device in zero-delay mode, so that what is left is the driver, the guest
kernel and TCG.

Three ways to keep the program off the buffer while the device owns it:

  driver    the product: SUBMIT revokes the range, the first touch after
            the completion faults it back in;
  none      no protection at all (the driver's debugfs switch
            ``unsafe_no_revoke``, benchmarks only): the floor;
  mprotect  the 2001 thread's alternative: no revocation in the driver, the
            program calls mprotect(PROT_NONE) before SUBMIT and
            mprotect(PROT_READ | PROT_WRITE) after the wake.

Each at every size, with the buffer mapped once, in 16 VMAs, or mapped
also by 4 forked children (what a revocation has to walk grows with each).
The cases run in rounds, every case once per round, and a case's numbers
are the medians of its rounds: a slow stretch of the host (two cores, TCG)
then lands on every protection alike instead of on one of them.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from dmagate.cmdline import IOMMU_DEVICES, IOMMU_STRICT_ARGS
from dmagate.devicefaults import device_faults
from dmagate.guesttool import parse_line
from dmagate.paths import BuildPaths
from dmagate.vm import VM, VMOptions

PROTECTIONS = ("driver", "none", "mprotect")
# name -> dmagatectl options
LAYOUTS = {"one": "", "vmas16": "--vmas 16", "children4": "--children 4"}
SIZES = ("4K", "64K", "1M", "4M", "64M")
UNSAFE_SWITCH = "/sys/kernel/debug/dmagate/unsafe_no_revoke"


@dataclass(frozen=True)
class CycleSetup:
    dma_map: str = "session"  # the driver's dma_map parameter
    iommu: bool = False  # behind intel-iommu, strict invalidation

    def describe(self) -> str:
        return f"dma_map={self.dma_map}, {'intel-iommu strict' if self.iommu else 'no IOMMU'}"


@dataclass(frozen=True)
class CycleCase:
    protect: str  # one of PROTECTIONS
    layout: str  # a key of LAYOUTS
    size: str  # dmagatectl's -s: 4K, 1M, ...

    def command(self, cycles: int) -> str:
        return (f"dmagatectl cycle -s {self.size} -n {cycles} --protect {self.protect} "
                f"{LAYOUTS[self.layout]}").rstrip()


def cycles_for(size: str, budget: int) -> int:
    """Fewer cycles for bigger buffers: each case costs about the same."""
    scale = {"K": 1 << 10, "M": 1 << 20}[size[-1]] * int(size[:-1])
    return max(10, min(budget, budget * (1 << 20) // (scale * 4)))


def run_case(vm: VM, case: CycleCase, cycles: int) -> dict[str, Any]:
    unsafe = case.protect != "driver"
    vm.run(f"echo {int(unsafe)} > {UNSAFE_SWITCH}", check=True)
    try:
        out = vm.run(case.command(cycles), timeout=900)
    finally:
        vm.run(f"echo 0 > {UNSAFE_SWITCH}", check=True)
    if out.status != 0:
        raise RuntimeError(f"{case.command(cycles)}:\n{out.stdout}{out.stderr}")
    fields = parse_line(out.stdout.strip().splitlines()[-1])
    return {"protect": case.protect, "layout": case.layout, "size": case.size,
            **{k: int(v) for k, v in fields.items() if k.endswith("_ns") or k in
               ("cycles", "faults", "pmds", "errors", "bad")}}


ROUNDS = 5
# Fields of a round's result that are not per-cycle medians.
_SUMMED = ("cycles", "errors", "bad")


def combine_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One case's rounds as one result: counts summed, extremes kept, every
    other number the median of the rounds' medians."""
    first = rounds[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        values = [r[key] for r in rounds]
        if not isinstance(value, int):
            out[key] = value
        elif key in _SUMMED:
            out[key] = sum(values)
        elif key == "min_ns":
            out[key] = min(values)
        elif key == "max_ns":
            out[key] = max(values)
        else:
            out[key] = int(statistics.median(values))
    return out


def measure_cycles(options: VMOptions, paths: BuildPaths, setup: CycleSetup,
                   cases: Iterable[CycleCase], budget: int, *,
                   rounds: int = ROUNDS) -> list[dict[str, Any]]:
    """Every case in one guest, the device in zero-delay mode, in ``rounds``
    rounds of a share of each case's cycles."""
    if setup.iommu:
        options = replace(options, devices=IOMMU_DEVICES,
                          kernel_args=(*options.kernel_args, *IOMMU_STRICT_ARGS))
    options = replace(options, kernel_args=(*options.kernel_args, "dmagate.noload"))
    cases = list(cases)
    per_case: list[list[dict[str, Any]]] = [[] for _ in cases]
    with VM(options, paths) as vm:
        vm.run(f"insmod /lib/modules/dmagate.ko dma_map={setup.dma_map}", check=True)
        with device_faults(vm, **{"zero-delay": True}):
            for _ in range(rounds):
                for case, results in zip(cases, per_case, strict=True):
                    cycles = max(2, cycles_for(case.size, budget) // rounds)
                    results.append(run_case(vm, case, cycles))
    return [{**combine_rounds(r), "rounds": rounds, "dma_map": setup.dma_map,
             "iommu": setup.iommu} for r in per_case]


def all_cases(sizes: Iterable[str] = SIZES, protections: Iterable[str] = PROTECTIONS,
              layouts: Iterable[str] = tuple(LAYOUTS)) -> list[CycleCase]:
    return [CycleCase(p, layout, s) for layout in layouts for s in sizes for p in protections]


def median_of(results: list[dict[str, Any]], key: str = "median_ns", **match: str) -> float:
    values = [r[key] for r in results if all(r[k] == v for k, v in match.items())]
    return statistics.median(values) if values else float("nan")
