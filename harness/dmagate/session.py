"""The VMs that `dmagate boot` runs: how other commands (ssh, qmp, fault)
and scripts find them. `boot` writes build/runs/session-<flavour>.json
while its VM lives and removes it when the VM stops: one per kernel
flavour, since make test runs the flavours' suites (and their CLI tests)
side by side."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from dmagate.flavours import image_dir_name
from dmagate.paths import BuildPaths

SESSION_GLOB = "session-*.json"


@dataclass(frozen=True)
class Session:
    """How to reach the VM that `boot` is running."""

    pid: int
    flavour: str
    ssh_port: int
    qmp_socket: str
    workdir: str

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def save(self, paths: BuildPaths) -> None:
        session_path(paths, self.flavour).write_text(json.dumps(asdict(self)))


def session_path(paths: BuildPaths, flavour: str) -> Path:
    return paths.runs / f"session-{image_dir_name(flavour).removeprefix('image-')}.json"


def _read(path: Path) -> Session | None:
    try:
        session = Session(**json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None
    return session if session.alive() else None


def load_session(paths: BuildPaths, flavour: str) -> Session:
    """The VM `boot` runs with ``flavour``, else the only VM it runs of any
    flavour; SystemExit naming the fix if there is none or a choice."""
    own = _read(session_path(paths, flavour))
    if own is not None:
        return own
    running = [s for p in sorted(paths.runs.glob(SESSION_GLOB)) if (s := _read(p))]
    if len(running) == 1:
        return running[0]
    if running:
        raise SystemExit("dmagate: VMs of kernels " + ", ".join(s.flavour for s in running)
                         + " are running: pick one with --kernel")
    raise SystemExit("dmagate: no VM is running: start one with `make shell` or `dmagate boot`")
