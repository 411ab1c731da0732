"""The driver's cycle time in a booted guest: SUBMIT -> interrupt -> wake ->
first touch of the whole range (``dmagatectl cycle``), per buffer size, with
the device's default timing and in zero-delay mode (where what is left is
the driver, the guest and TCG), for a driver mapping mode and IOMMU choice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from dmagate.cmdline import IOMMU_DEVICES, IOMMU_STRICT_ARGS
from dmagate.devicefaults import device_faults
from dmagate.guesttool import parse_line
from dmagate.paths import BuildPaths
from dmagate.vm import VM, VMOptions


@dataclass(frozen=True)
class CycleSetup:
    dma_map: str = "session"  # the driver's dma_map parameter
    iommu: bool = False  # behind intel-iommu, strict invalidation

    def describe(self) -> str:
        return f"dma_map={self.dma_map}, {'intel-iommu strict' if self.iommu else 'no IOMMU'}"


def measure_cycles(options: VMOptions, paths: BuildPaths, setup: CycleSetup,
                   sizes: tuple[str, ...], cycles: int, *,
                   zero_delays: tuple[bool, ...] = (False, True)) -> list[dict[str, Any]]:
    """One VM for the setup; a result per (zero_delay, size)."""
    if setup.iommu:
        options = replace(options, devices=IOMMU_DEVICES,
                          kernel_args=(*options.kernel_args, *IOMMU_STRICT_ARGS))
    options = replace(options, kernel_args=(*options.kernel_args, "dmagate.noload"))
    results = []
    with VM(options, paths) as vm:
        vm.run(f"insmod /lib/modules/dmagate.ko dma_map={setup.dma_map}", check=True)
        for zero_delay in zero_delays:
            for size in sizes:
                with device_faults(vm, **{"zero-delay": zero_delay}):
                    out = vm.run(f"dmagatectl cycle -s {size} -n {cycles}", timeout=600)
                if out.status != 0:
                    raise RuntimeError(f"dmagatectl cycle:\n{out.stdout}{out.stderr}")
                fields = parse_line(out.stdout)
                results.append({
                    "size": size, "zero_delay": zero_delay, "dma_map": setup.dma_map,
                    "iommu": setup.iommu, "accel": vm.accel.name,
                    **{k: int(v) for k, v in fields.items()
                       if k.endswith("_ns") or k == "cycles"}})
    return results
