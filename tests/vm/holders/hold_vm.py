"""Not collected on its own: test_no_orphans.py runs it in a child pytest,
which it then kills while this test holds a VM."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dmagate.vm import VM


def test_hold_vm_until_killed(fresh_vm: VM) -> None:
    Path(os.environ["DMAGATE_HOLDER_PIDFILE"]).write_text(f"{fresh_vm.pid}\n")
    time.sleep(600)
