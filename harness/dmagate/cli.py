"""dmagate command line: a thin layer over the library.

    dmagate info                 manifest summary and the accelerator in use
    dmagate boot                 boot and attach to the serial console (Ctrl-] quits)
    dmagate ssh CMD...           run a command in the VM that `boot` started
    dmagate qmp CMD [JSON]       run a QMP command there
    dmagate fault ...            the device's faults there (dmagate.faultcli)
    dmagate demo                 boot, show the device, report timings, shut down
    dmagate bench-boot -n N      boot N times; median boot-to-SSH time as JSON
    dmagate bench-device -n N    device FILL throughput (qtest) next to a host memcpy
    dmagate bench-cycle -n N [--sizes 4K,4M] [--dma-map session|transfer] [--iommu]
                                 submit -> interrupt -> wake -> first touch
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from dmagate.accel import resolve_accelerator
from dmagate.bench_cycle import CycleSetup, measure_cycles
from dmagate.devdriver import Dmagate
from dmagate.devicefaults import device_faults
from dmagate.faultcli import add_parser as add_fault_parser
from dmagate.health import HealthWatch
from dmagate.hwregs import HW
from dmagate.manifest import Manifest, ManifestError
from dmagate.paths import DEFAULT_FLAVOUR, BuildPaths
from dmagate.qtest import QTestMachine
from dmagate.session import Session, load_session, session_path
from dmagate.ssh import SSH
from dmagate.transcript import Transcript
from dmagate.vm import VM, VMError, VMOptions


def _options(args: argparse.Namespace, **overrides: object) -> VMOptions:
    return VMOptions(flavour=args.kernel, accel=args.accel, **overrides)  # type: ignore[arg-type]


def cmd_info(args: argparse.Namespace) -> int:
    paths = BuildPaths.discover()
    manifest = Manifest.load(paths.image(args.kernel))
    print(manifest.summary())
    accel = resolve_accelerator(args.accel, paths.qemu)
    print(f"accelerator {accel.name} ({accel.reason})")
    return 0


def cmd_boot(args: argparse.Namespace) -> int:
    paths = BuildPaths.discover()
    vm = VM(_options(args, user_qmp=True, name="shell"), paths)
    stop = _stop_on_signals()
    vm.start(wait=args.no_console)
    try:
        assert vm.user_qmp_socket is not None
        Session(vm.pid, args.kernel, vm.ssh_port, str(vm.user_qmp_socket),
                str(vm.workdir)).save(paths)
        print(f"dmagate: {vm.accel.name}, kernel {vm.manifest.kernel_release}")
        print(f"dmagate: QMP for scripts: {vm.user_qmp_socket}")
        print(f"dmagate: SSH: dmagate ssh CMD (127.0.0.1:{vm.ssh_port}); logs in {vm.workdir}")
        if args.no_console:
            # Scripts and CI: the guest is up; run until stopped.
            print("dmagate: ready; SIGINT or SIGTERM stops the VM", flush=True)
            while vm.is_running() and not stop.wait(0.5):
                pass
        else:
            print("dmagate: serial console follows; Ctrl-] quits and stops the VM", flush=True)
            sys.stdout.write(vm.console.text())
            vm.console.interact()
    finally:
        session_path(paths).unlink(missing_ok=True)
        print("\ndmagate: stopping the VM", flush=True)
        vm.kill()
    return 0


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so `boot --no-console` ends cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_ssh(args: argparse.Namespace) -> int:
    paths = BuildPaths.discover()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("dmagate ssh: name a command to run in the VM")
    session = load_session(paths)
    image = paths.image(session.flavour)
    manifest = Manifest.load(image)
    ssh = SSH(
        session.ssh_port,
        image / manifest.extra["client_key"],
        manifest.extra["host_key"],
        Transcript(Path(session.workdir) / "cli-ssh.log"),
    )
    ssh.connect(timeout=30)
    try:
        status, out, err = ssh.run(shlex.join(command), timeout=args.timeout)
    finally:
        ssh.close()
    sys.stdout.write(out)
    sys.stderr.write(err)
    return status


def cmd_qmp(args: argparse.Namespace) -> int:
    session = load_session(BuildPaths.discover())
    arguments = json.loads(args.arguments) if args.arguments else {}
    monitor = QEMUMonitorProtocol(session.qmp_socket)
    monitor.connect()
    try:
        reply = monitor.cmd_raw(args.command, arguments)
    finally:
        monitor.close()
    print(json.dumps(reply.get("return", reply), indent=2))
    return 1 if "error" in reply else 0


def cmd_demo(args: argparse.Namespace) -> int:
    paths = BuildPaths.discover()
    manifest = Manifest.load(paths.image(args.kernel))
    print("== guest image")
    print(manifest.summary())
    with VM(_options(args, name="demo"), paths) as vm:
        watch = HealthWatch.begin(vm, from_boot=True)
        print(f"\n== booted on {vm.accel.name} ({vm.accel.reason})")
        print(f"QEMU started -> init ready  {vm.timing.init_ready:6.2f} s")
        print(f"QEMU started -> SSH ready   {vm.timing.ssh_ready:6.2f} s")
        print("\n== the device on the guest's PCI bus (dmagatectl list)")
        listing = vm.run("dmagatectl list")
        print(listing.stdout.rstrip() or listing.stderr.rstrip())
        print("\n== the driver's log (dmesg)")
        print(vm.run("dmesg | grep -E 'dmagate'").stdout.rstrip())
        protocol_ok = _demo_protocol(vm)
        health = watch.check()
        print("\n== kernel health:", "clean" if health.clean else health.describe())
        started = time.monotonic()
    print(f"\n== shut down cleanly in {time.monotonic() - started:.2f} s")
    return 0 if listing.status == 0 and protocol_ok and health.clean else 1


DEMO_STEPS = (
    ("a FILL of 1 MiB, waited for with poll(), data checked against the pattern",
     "xfer fill -s 1M -w poll"),
    ("a touch of the buffer while the device owns it (the device made 300 ms slow)",
     "touch fill --touch write --at 0x1234 -s 1M"),
    ("a forked child touching it too", "touch transform --touch read --via child -s 1M"),
    ("the driver's counters", None),
)


def _demo_protocol(vm: VM) -> bool:
    """The ownership protocol, step by step, as dmagatectl reports it."""
    ok = True
    for title, args in DEMO_STEPS:
        print(f"\n== {title}")
        if args is None:
            print(vm.run("grep . /sys/class/misc/dmagate0/stats/*").stdout.rstrip())
            continue
        print(f"$ dmagatectl {args}")
        with device_faults(vm, **{"fault-extra-delay-ns": 300_000_000}):
            result = vm.run(f"dmagatectl {args}", timeout=60)
        print((result.stdout + result.stderr).rstrip())
        ok = ok and result.status == 0
    return ok


def cmd_bench_cycle(args: argparse.Namespace) -> int:
    """Cycle time (submit -> interrupt -> wake -> first touch) in a booted guest,
    with the device's default timing (1 ms + 1 GB/s) and in zero-delay mode."""
    setup = CycleSetup(dma_map=args.dma_map, iommu=args.iommu)
    try:
        results = measure_cycles(_options(args, name="bench-cycle"), BuildPaths.discover(),
                                 setup, tuple(args.sizes.split(",")), args.cycles)
    except RuntimeError as err:
        raise SystemExit(f"dmagate bench-cycle: {err}") from err
    for result in results:
        timing = "zero-delay device" if result["zero_delay"] else "device 1 ms + 1 GB/s"
        print(f"cycle {result['size']:>4}, {timing:<20}: median "
              f"{result['median_ns'] / 1000:6.0f} us, p90 {result['p90_ns'] / 1000:6.0f} us "
              f"over {result['cycles']} cycles ({result['accel']}, kernel {args.kernel}, "
              f"{setup.describe()})", flush=True)
    text = json.dumps({"kernel": args.kernel, "results": results}, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


def cmd_bench_boot(args: argparse.Namespace) -> int:
    paths = BuildPaths.discover()
    accel = resolve_accelerator(args.accel, paths.qemu)
    samples = []
    for i in range(args.boots):
        with VM(VMOptions(flavour=args.kernel, name=f"bench-{i}"), paths, accel) as vm:
            samples.append(asdict(vm.timing))
        print(f"boot {i + 1}/{args.boots}: init {samples[-1]['init_ready']:.2f} s, "
              f"ssh {samples[-1]['ssh_ready']:.2f} s", flush=True)
    result = {
        "accelerator": accel.name,
        "kernel": args.kernel,
        "boots": args.boots,
        "median_init_ready_s": statistics.median(s["init_ready"] for s in samples),
        "median_ssh_ready_s": statistics.median(s["ssh_ready"] for s in samples),
        "min_ssh_ready_s": min(s["ssh_ready"] for s in samples),
        "max_ssh_ready_s": max(s["ssh_ready"] for s in samples),
        "samples": samples,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(f"median boot-to-SSH {result['median_ssh_ready_s']:.2f} s over {args.boots} boots "
          f"({accel.name}, kernel {args.kernel})")
    return 0


def cmd_bench_device(args: argparse.Namespace) -> int:
    """FILL of 64 MiB in zero-delay mode, over qtest, next to a host memcpy."""
    size = 64 << 20
    paths = BuildPaths.discover()
    rates, copies = [], []
    source = bytearray(os.urandom(size))
    target = bytearray(size)  # touched once here, so the copies below fault no pages
    target[:] = source
    with tempfile.TemporaryDirectory(dir=paths.build) as tmp, QTestMachine(
        paths.qemu, ["-device", "dmagate,id=dg,addr=4,zero-delay=on"], Path(tmp)
    ) as machine:
        dev = Dmagate(machine, 4)
        dev.setup(0x100000, 64, 0x110000, 64, 0x120000)
        for seed in range(args.runs):
            started = time.perf_counter()
            dev.submit(HW["OP_FILL"], [(0x1000000, size)], param=seed)
            (done,) = dev.wait()
            rates.append(size / (time.perf_counter() - started) / 1e6)
            if done.status != HW["ST_OK"]:
                raise SystemExit(f"dmagate bench-device: FILL failed with status {done.status}")
            started = time.perf_counter()
            target[:] = source  # one 64 MiB memcpy
            copies.append(size / (time.perf_counter() - started) / 1e6)
    result = {
        "what": "FILL 64 MiB, zero-delay, doorbell to completion seen over qtest",
        "runs": args.runs,
        "median_fill_MBps": round(statistics.median(rates)),
        "median_host_memcpy_MBps": round(statistics.median(copies)),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"FILL 64 MiB zero-delay: {result['median_fill_MBps']} MB/s; host memcpy 64 MiB: "
          f"{result['median_host_memcpy_MBps']} MB/s (median of {args.runs})")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dmagate", description=__doc__.splitlines()[0])
    top.add_argument("--kernel", default=os.environ.get("KERNEL", DEFAULT_FLAVOUR),
                     help="kernel flavour (default: $KERNEL or %(default)s)")
    top.add_argument("--accel", default=os.environ.get("DMAGATE_ACCEL", "auto"),
                     choices=("auto", "kvm", "tcg"))
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="manifest summary and accelerator").set_defaults(func=cmd_info)
    boot = sub.add_parser("boot", help="boot and attach to the console")
    boot.add_argument("--no-console", action="store_true",
                      help="wait until SSH answers, then run until SIGINT/SIGTERM (scripts, CI)")
    boot.set_defaults(func=cmd_boot)
    ssh = sub.add_parser("ssh", help="run a command in the running VM")
    ssh.add_argument("--timeout", type=float, default=300.0)
    ssh.add_argument("command", nargs=argparse.REMAINDER, help="command and its arguments")
    ssh.set_defaults(func=cmd_ssh)
    qmp = sub.add_parser("qmp", help="run a QMP command in the running VM")
    qmp.add_argument("command")
    qmp.add_argument("arguments", nargs="?", help="JSON object of arguments")
    qmp.set_defaults(func=cmd_qmp)
    add_fault_parser(sub)
    sub.add_parser("demo", help="boot, show the device, shut down").set_defaults(func=cmd_demo)
    bench = sub.add_parser("bench-boot", help="median boot-to-SSH time")
    bench.add_argument("-n", "--boots", type=int, default=5)
    bench.add_argument("--out", type=Path)
    bench.set_defaults(func=cmd_bench_boot)
    device = sub.add_parser("bench-device", help="device DMA throughput over qtest")
    device.add_argument("-n", "--runs", type=int, default=5)
    device.add_argument("--out", type=Path)
    device.set_defaults(func=cmd_bench_device)
    cycle = sub.add_parser("bench-cycle", help="driver cycle time in a guest, 4 KiB and 4 MiB")
    cycle.add_argument("-n", "--cycles", type=int, default=500)
    cycle.add_argument("--sizes", default="4K,4M", help="comma-separated buffer sizes")
    cycle.add_argument("--dma-map", choices=("session", "transfer"), default="session",
                       help="the driver's dma_map parameter")
    cycle.add_argument("--iommu", action="store_true",
                       help="behind intel-iommu with strict invalidation")
    cycle.add_argument("--out", type=Path)
    cycle.set_defaults(func=cmd_bench_cycle)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ManifestError, VMError, FileNotFoundError) as err:
        print(f"dmagate: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
