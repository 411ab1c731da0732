"""`make bench`: every benchmark in one run, on one machine state."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dmagate.accel import Accelerator
from dmagate.bench.boot import boot_results, measure_boots
from dmagate.bench.cycle import SIZES, CycleSetup, all_cases, measure_cycles
from dmagate.bench.device import measure_device
from dmagate.bench.report import Results, cycle_ratios, plot, summary, write_json
from dmagate.paths import BuildPaths
from dmagate.vm import VMOptions


@dataclass(frozen=True)
class BenchPlan:
    flavour: str
    boots: int = 5
    device_runs: int = 5
    cycle_budget: int = 1000  # cycles per case at 256 KiB and below; fewer above
    sizes: tuple[str, ...] = SIZES


def run_all(plan: BenchPlan, paths: BuildPaths, accel: Accelerator, out_dir: Path) -> Results:
    started = time.monotonic()
    results: Results = {"kernel": plan.flavour, "accel": accel.name,
                        "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "plan": asdict(plan)}
    harness, floor, restore = measure_boots(paths, plan.flavour, accel, plan.boots)
    results["boot"] = boot_results(harness, floor, restore)
    results["device"] = [r.as_result() for r in measure_device(paths, plan.device_runs)]
    options = VMOptions(flavour=plan.flavour, accel=accel.name, name="bench-cycle")
    results["cycles"] = measure_cycles(options, paths, CycleSetup(), all_cases(plan.sizes),
                                       plan.cycle_budget)
    results["cycle_ratios"] = cycle_ratios(results["cycles"])
    results["seconds"] = time.monotonic() - started
    results["plots"] = [str(p) for p in plot(results, out_dir)]
    write_json(results, out_dir / f"bench-{plan.flavour}.json")
    return results


__all__ = ["BenchPlan", "run_all", "summary"]
