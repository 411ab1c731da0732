"""`dmagate bench` and its parts, on the command line (thin: the work is in
the modules beside this one)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dmagate.accel import resolve_accelerator
from dmagate.bench.boot import boot_results, measure_boots
from dmagate.bench.cycle import LAYOUTS, PROTECTIONS, SIZES, CycleSetup, all_cases, measure_cycles
from dmagate.bench.device import measure_device
from dmagate.bench.report import Results, cycle_ratios, plot, summary, write_json
from dmagate.bench.run import BenchPlan, run_all
from dmagate.paths import BuildPaths
from dmagate.vm import VMOptions


def _done(results: Results, out: Path | None) -> int:
    if out:
        write_json(results, out)
    print(summary(results))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Everything, one run: JSON and plots under --out, the ratios printed."""
    paths = BuildPaths.discover()
    plan = BenchPlan(flavour=args.kernel, boots=args.boots, device_runs=args.runs,
                     cycle_budget=args.cycles, sizes=tuple(args.sizes.split(",")))
    results = run_all(plan, paths, resolve_accelerator(args.accel, paths.qemu), args.out)
    print(summary(results))
    print(f"bench: {results['seconds']:.0f} s; {args.out / f'bench-{args.kernel}.json'}")
    for path in results["plots"]:
        print(f"plot: {path}")
    return 0


def cmd_bench_boot(args: argparse.Namespace) -> int:
    paths = BuildPaths.discover()
    harness, floor, restore = measure_boots(paths, args.kernel,
                                   resolve_accelerator(args.accel, paths.qemu), args.boots)
    return _done({"boot": boot_results(harness, floor, restore)}, args.out)


def cmd_bench_device(args: argparse.Namespace) -> int:
    rates = measure_device(BuildPaths.discover(), args.runs)
    return _done({"device": [r.as_result() for r in rates]}, args.out)


def cmd_bench_cycle(args: argparse.Namespace) -> int:
    paths = BuildPaths.discover()
    setup = CycleSetup(dma_map=args.dma_map, iommu=args.iommu)
    cases = all_cases(args.sizes.split(","), args.protect.split(","), args.layouts.split(","))
    try:
        cycles: list[dict[str, Any]] = measure_cycles(
            VMOptions(flavour=args.kernel, accel=args.accel, name="bench-cycle"), paths, setup,
            cases, args.cycles)
    except RuntimeError as err:
        raise SystemExit(f"dmagate bench-cycle: {err}") from err
    print(f"{setup.describe()}, kernel {args.kernel}")
    results = {"cycles": cycles, "cycle_ratios": cycle_ratios(cycles)}
    if args.out and args.plot:
        plot(results, args.out.parent)
    return _done(results, args.out)


def add_parsers(sub: Any) -> None:
    bench = sub.add_parser("bench", help="every benchmark: JSON, plots and ratios")
    bench.add_argument("--out", type=Path, default=BuildPaths.discover().build / "bench")
    bench.add_argument("--boots", type=int, default=5)
    bench.add_argument("--runs", type=int, default=5, help="device runs per operation")
    bench.add_argument("--cycles", type=int, default=1000,
                       help="cycles per case at 256 KiB and below (fewer above)")
    bench.add_argument("--sizes", default=",".join(SIZES))
    bench.set_defaults(func=cmd_bench)

    boot = sub.add_parser("bench-boot", help="boot to SSH: the harness's guest and the floor")
    boot.add_argument("-n", "--boots", type=int, default=5)
    boot.add_argument("--out", type=Path)
    boot.set_defaults(func=cmd_bench_boot)

    device = sub.add_parser("bench-device", help="FILL, CHECKSUM, TRANSFORM of 64 MiB (qtest)")
    device.add_argument("-n", "--runs", type=int, default=5)
    device.add_argument("--out", type=Path)
    device.set_defaults(func=cmd_bench_device)

    cycle = sub.add_parser("bench-cycle", help="the protocol's cycle and its alternatives")
    cycle.add_argument("-n", "--cycles", type=int, default=200)
    cycle.add_argument("--sizes", default=",".join(SIZES), help="comma-separated sizes")
    cycle.add_argument("--protect", default=",".join(PROTECTIONS))
    cycle.add_argument("--layouts", default=",".join(LAYOUTS))
    cycle.add_argument("--dma-map", choices=("session", "transfer"), default="session",
                       help="the driver's dma_map parameter")
    cycle.add_argument("--iommu", action="store_true",
                       help="behind intel-iommu with strict invalidation")
    cycle.add_argument("--plot", action="store_true", help="plots beside --out")
    cycle.add_argument("--out", type=Path)
    cycle.set_defaults(func=cmd_bench_cycle)



