"""`dmagate fault list|set|clear|show|wait`: the device's faults from the
command line, against the VM that `dmagate boot` runs or any QMP socket
(--qmp). A thin layer over dmagate.faultctl; docs/faults.md is the guide.

    dmagate fault list
    dmagate fault set dma-error:op=fill:every=10     # a rule, added
    dmagate fault set stall                          # the next descriptor
    dmagate fault set ignore-reset both              # a mode of the device
    dmagate fault wait dma-error --count 3 --timeout 60
    dmagate fault show
    dmagate fault clear                              # everything
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict

from dmagate.faultctl import DeviceFaults, FaultError, connect
from dmagate.paths import BuildPaths
from dmagate.session import load_session


def cmd_list(faults: DeviceFaults, args: argparse.Namespace) -> int:
    for knob in faults.knobs():
        how = {"count": "count", "mode": "mode", "delay": "delay"}[knob.kind]
        rules = "rules" if knob.rules else ""
        print(f"{knob.name:22} {how:5} {rules:5} {knob.description}")
    return 0


def cmd_set(faults: DeviceFaults, args: argparse.Namespace) -> int:
    faults.set(args.fault, args.value)
    return 0


def cmd_clear(faults: DeviceFaults, args: argparse.Namespace) -> int:
    faults.clear(args.fault)
    return 0


def cmd_show(faults: DeviceFaults, args: argparse.Namespace) -> int:
    state = faults.show()
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"device {state['device']}: stat-faults {state['stat-faults']}")
    for name, value in state["armed"].items():
        print(f"  {name:22} {value}")
    for i, rule in enumerate(state["rules"]):
        print(f"  rule {i}: {rule['rule']}  matched {rule['matched']} fired {rule['fired']}")
    return 0


def cmd_wait(faults: DeviceFaults, args: argparse.Namespace) -> int:
    # Connected: from here no event is missed (scripts may wait for this line).
    print(f"dmagate fault wait: listening on {faults.path}", file=sys.stderr, flush=True)
    try:
        events = faults.wait(args.fault, timeout=args.timeout, count=args.count)
    except TimeoutError as err:
        print(f"dmagate fault wait: {err}")
        return 1
    for event in events:
        print(json.dumps({k: v for k, v in asdict(event).items() if v is not None}))
    return 0


COMMANDS: dict[str, Callable[[DeviceFaults, argparse.Namespace], int]] = {
    "list": cmd_list, "set": cmd_set, "clear": cmd_clear, "show": cmd_show, "wait": cmd_wait,
}


def run(args: argparse.Namespace) -> int:
    socket = args.qmp or load_session(BuildPaths.discover(), args.kernel).qmp_socket
    try:
        with connect(socket, args.device) as faults:
            return COMMANDS[args.fault_command](faults, args)
    except FaultError as err:
        print(f"dmagate fault: {err}")
        return 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fault = sub.add_parser("fault", help="the device's faults: list, set, clear, show, wait")
    fault.add_argument("--qmp", help="QMP socket (default: the VM `dmagate boot` runs)")
    fault.add_argument("--device", help="dmagate device id or QOM path (default: the first)")
    actions = fault.add_subparsers(dest="fault_command", required=True)
    actions.add_parser("list", help="every fault the device offers")
    put = actions.add_parser("set", help="arm a fault: NAME [VALUE], or a rule FAULT:KEY=VALUE...")
    put.add_argument("fault")
    put.add_argument("value", nargs="?", help="a count (default 1; 'always'), or a mode's value")
    clear = actions.add_parser("clear", help="disarm a fault, or (with no name) every fault")
    clear.add_argument("fault", nargs="?")
    show = actions.add_parser("show", help="what is armed, and each rule's counts")
    show.add_argument("--json", action="store_true")
    wait = actions.add_parser("wait", help="wait for DMAGATE_FAULT events; print them as JSON")
    wait.add_argument("fault", nargs="?", help="only this fault (default: any)")
    wait.add_argument("--count", type=int, default=1)
    wait.add_argument("--timeout", type=float, default=60.0)
    fault.set_defaults(func=run)
