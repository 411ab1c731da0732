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
# The per-cycle parts dmagatectl reports (medians over the cycles, ns).
PARTS = ("submit_ns", "zap_ns", "device_ns", "wake_ns", "touch_ns", "fault_ns", "map_ns")


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


def measure_cycles(options: VMOptions, paths: BuildPaths, setup: CycleSetup,
                   cases: Iterable[CycleCase], budget: int) -> list[dict[str, Any]]:
    """Every case in one guest, the device in zero-delay mode."""
    if setup.iommu:
        options = replace(options, devices=IOMMU_DEVICES,
                          kernel_args=(*options.kernel_args, *IOMMU_STRICT_ARGS))
    options = replace(options, kernel_args=(*options.kernel_args, "dmagate.noload"))
    with VM(options, paths) as vm:
        vm.run(f"insmod /lib/modules/dmagate.ko dma_map={setup.dma_map}", check=True)
        with device_faults(vm, **{"zero-delay": True}):
            results = [run_case(vm, case, cycles_for(case.size, budget)) for case in cases]
    return [{**r, "dma_map": setup.dma_map, "iommu": setup.iommu} for r in results]


def all_cases(sizes: Iterable[str] = SIZES, protections: Iterable[str] = PROTECTIONS,
              layouts: Iterable[str] = tuple(LAYOUTS)) -> list[CycleCase]:
    return [CycleCase(p, layout, s) for layout in layouts for s in sizes for p in protections]


def median_of(results: list[dict[str, Any]], key: str = "median_ns", **match: str) -> float:
    values = [r[key] for r in results if all(r[k] == v for k, v in match.items())]
    return statistics.median(values) if values else float("nan")
