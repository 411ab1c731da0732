"""The VM that `dmagate boot` runs: how other commands (ssh, qmp, fault)
and scripts find it. `boot` writes build/runs/session.json while the VM
lives and removes it when the VM stops."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from dmagate.paths import BuildPaths

SESSION_FILE = "session.json"


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
        session_path(paths).write_text(json.dumps(asdict(self)))


def session_path(paths: BuildPaths) -> Path:
    return paths.runs / SESSION_FILE


def load_session(paths: BuildPaths) -> Session:
    """The running session; SystemExit naming the fix if there is none."""
    try:
        session = Session(**json.loads(session_path(paths).read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        session = None
    if session is None or not session.alive():
        raise SystemExit("dmagate: no VM is running: start one with `make shell` or `dmagate boot`")
    return session
