"""The dmagate device's fault-injection knobs and statistics on a running
VM, over QMP (docs/device.md, section 8).

    with device_faults(vm, **{"fault-extra-delay-ns": 300_000_000}):
        ...  # every transfer now takes 300 ms longer
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dmagate.faultctl import QOM_CONTAINERS
from dmagate.qmp import ExecuteError
from dmagate.vm import VM


def dmagate_paths(vm: VM, missing_ok: bool = False) -> list[str]:
    """QOM paths of the VM's dmagate devices, in creation order."""
    paths = []
    for container in QOM_CONTAINERS:
        for child in vm.qmp.cmd("qom-list", path=container):
            if child["type"] == "child<dmagate>":
                paths.append(f"{container}/{child['name']}")
    if not paths and not missing_ok:
        raise LookupError("the VM has no dmagate device")
    return paths


def get_knob(vm: VM, name: str, device: int = 0) -> Any:
    return vm.qmp.cmd("qom-get", path=dmagate_paths(vm)[device], property=name)


@contextmanager
def device_faults(vm: VM, device: int = 0, /, **knobs: Any) -> Iterator[None]:
    """Set knobs for the duration of a block, then restore what they were
    (unless the block unplugged the device)."""
    path = dmagate_paths(vm)[device]
    before = {name: vm.qmp.cmd("qom-get", path=path, property=name) for name in knobs}
    try:
        for name, value in knobs.items():
            vm.qmp.cmd("qom-set", path=path, property=name, value=value)
        yield
    finally:
        if vm.is_running():
            _restore_knobs(vm, path, before)


def _restore_knobs(vm: VM, path: str, values: dict[str, Any]) -> None:
    """Put ``values`` back on the device at ``path``, unless it is gone: a
    device_del the guest is still carrying out can take it at any moment."""
    for name, value in values.items():
        try:
            vm.qmp.cmd("qom-set", path=path, property=name, value=value)
        except ExecuteError:
            if path in dmagate_paths(vm, missing_ok=True):
                raise
            return
