"""What the example scripts share, in plain qemu.qmp and the standard
library (no dmagate harness import): the command line, the VM's dmagate
device over QMP, and commands in the guest through `dmagate ssh`."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

SPLAT = re.compile(r"\bBUG\b|WARNING:|Oops|KASAN|UBSAN|Call Trace|hung_task|rcu.*stall")


def arguments(description: str) -> argparse.Namespace:
    cli = argparse.ArgumentParser(description=description)
    cli.add_argument("qmp", help="QMP socket for scripts, as `dmagate boot` prints it")
    cli.add_argument("--dmagate", default=_dmagate(), help="the dmagate command")
    return cli.parse_args()


def _dmagate() -> str:
    beside = Path(sys.executable).with_name("dmagate")
    return shutil.which("dmagate") or str(beside)


async def connect(name: str, socket: str) -> QMPClient:
    qmp = QMPClient(name)
    await qmp.connect(socket)
    return qmp


async def dmagate_device(qmp: QMPClient) -> str:
    """The QOM path of the VM's first dmagate device."""
    for container in ("/machine/peripheral", "/machine/peripheral-anon"):
        children: Any = await qmp.execute("qom-list", {"path": container})
        for child in children:
            if child["type"] == "child<dmagate>":
                return f"{container}/{child['name']}"
    raise SystemExit("the VM has no dmagate device")


async def qom_set(qmp: QMPClient, path: str, prop: str, value: Any) -> None:
    await qmp.execute("qom-set", {"path": path, "property": prop, "value": value})


async def qom_get(qmp: QMPClient, path: str, prop: str) -> Any:
    return await qmp.execute("qom-get", {"path": path, "property": prop})


async def guest(dmagate: str, command: str,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a shell command in the guest (in a thread: QMP events keep coming)."""
    argv = [dmagate, "ssh", "--", "sh", "-c", command]
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                   timeout=timeout, env=os.environ)


async def kernel_clean(dmagate: str) -> None:
    """Fail if the guest kernel logged a splat."""
    dmesg = (await guest(dmagate, "dmesg")).stdout
    found = [line for line in dmesg.splitlines() if SPLAT.search(line)]
    if found:
        fail("the guest kernel splatted:\n  " + "\n  ".join(found[:20]))


def fail(why: str) -> None:
    print(f"FAILED: {why}")
    raise SystemExit(1)
