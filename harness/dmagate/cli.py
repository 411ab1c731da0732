"""dmagate command line: a thin layer over the library.

    dmagate info                 manifest summary and the accelerator in use
    dmagate boot                 boot and attach to the serial console (Ctrl-] quits)
    dmagate ssh CMD...           run a command in the VM that `boot` started
    dmagate qmp CMD [JSON]       run a QMP command there
    dmagate fault ...            the device's faults there (dmagate.faultcli)
    dmagate demo                 boot, show the device, report timings, shut down
    dmagate bench [--out DIR]    every benchmark, JSON and plots (dmagate.bench.cli)
    dmagate bench-boot|bench-device|bench-cycle   one of them
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from dmagate import gdb
from dmagate.accel import resolve_accelerator
from dmagate.bench.cli import add_parsers as add_bench_parsers
from dmagate.devicefaults import device_faults
from dmagate.faultcli import add_parser as add_fault_parser
from dmagate.flavours import DEFAULT_FLAVOUR
from dmagate.health import HealthWatch
from dmagate.manifest import Manifest, ManifestError
from dmagate.paths import BuildPaths
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
    vm = VM(_options(args, user_qmp=True, name="shell", gdb=args.gdb), paths)
    stop = _stop_on_signals()
    # The gdb command line names where the modules are: that needs SSH.
    vm.start(wait=args.no_console or args.gdb)
    try:
        assert vm.user_qmp_socket is not None
        Session(vm.pid, args.kernel, vm.ssh_port, str(vm.user_qmp_socket),
                str(vm.workdir)).save(paths)
        print(f"dmagate: {vm.accel.name}, kernel {vm.manifest.kernel_release}")
        print(f"dmagate: QMP for scripts: {vm.user_qmp_socket}")
        print(f"dmagate: SSH: dmagate ssh CMD (127.0.0.1:{vm.ssh_port}); logs in {vm.workdir}")
        if args.gdb:
            print(f"dmagate: gdb stub on 127.0.0.1:{vm.gdb_port}; debug with:\n"
                  f"  {gdb.describe(vm)}", flush=True)
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
        session_path(paths, args.kernel).unlink(missing_ok=True)
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
    session = load_session(paths, args.kernel)
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
    session = load_session(BuildPaths.discover(), args.kernel)
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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dmagate", description=__doc__.splitlines()[0])
    top.add_argument("--kernel", default=os.environ.get("KERNEL", DEFAULT_FLAVOUR),
                     help="kernel flavour (6.12, 6.1, 7.3, debug) or the path of a built kernel "
                     "tree (default: $KERNEL or %(default)s)")
    top.add_argument("--accel", default=os.environ.get("DMAGATE_ACCEL", "auto"),
                     choices=("auto", "kvm", "tcg"))
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="manifest summary and accelerator").set_defaults(func=cmd_info)
    boot = sub.add_parser("boot", help="boot and attach to the console")
    boot.add_argument("--no-console", action="store_true",
                      help="wait until SSH answers, then run until SIGINT/SIGTERM (scripts, CI)")
    boot.add_argument("--gdb", action="store_true",
                      help="QEMU's gdb stub on 127.0.0.1; prints the gdb command line "
                      "with the kernel's and the driver's symbols")
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
    add_bench_parsers(sub)
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
