"""QMP to the VM's QEMU, through qemu.qmp, with a transcript."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from dmagate.transcript import Transcript

__all__ = ["QMP", "ExecuteError"]


class QMP:
    """A synchronous QMP session; every command and reply is logged."""

    def __init__(self, socket_path: Path, transcript: Transcript) -> None:
        self.socket_path = socket_path
        self._transcript = transcript
        self._monitor: QEMUMonitorProtocol | None = None

    def connect(self, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
        """Connect once QEMU has made its socket; give up if ``alive()`` turns False."""
        deadline = time.monotonic() + timeout
        while True:
            # Waiting for the socket to exist first keeps qemu.qmp from
            # logging an error for every early attempt.
            if not self.socket_path.exists():
                if not alive():
                    raise ConnectionError("QEMU exited before QMP answered")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"QEMU made no QMP socket at {self.socket_path}")
                time.sleep(0.02)
                continue
            monitor = QEMUMonitorProtocol(str(self.socket_path))
            try:
                greeting = monitor.connect(negotiate=True)
            except (ConnectError, OSError) as err:
                monitor.close()
                if not alive():
                    raise ConnectionError("QEMU exited before QMP answered") from err
                if time.monotonic() > deadline:
                    raise TimeoutError(f"QMP at {self.socket_path} not answering: {err}") from err
                time.sleep(0.05)
                continue
            monitor.settimeout(timeout)
            self._monitor = monitor
            self._transcript.write("greeting", json.dumps(greeting))
            return

    @property
    def monitor(self) -> QEMUMonitorProtocol:
        if self._monitor is None:
            raise RuntimeError("QMP is not connected")
        return self._monitor

    def cmd(self, command: str, **arguments: Any) -> Any:
        """Execute ``command``; return its result or raise ExecuteError."""
        self._transcript.write(">", json.dumps({"execute": command, "arguments": arguments}))
        try:
            result = self.monitor.cmd(command, **arguments)
        except ExecuteError as err:
            self._transcript.write("<", f"error: {err}")
            raise
        self._transcript.write("<", json.dumps(result))
        return result

    def hmp(self, command_line: str) -> str:
        """Run a human monitor command (for what QMP does not expose)."""
        return str(self.cmd("human-monitor-command", **{"command-line": command_line}))

    def events(self) -> list[dict[str, Any]]:
        """Events received so far, removed from the queue."""
        # One at a time: get_events() hands back only the first of the
        # events one read brought in (and clear_events() would drop the
        # rest), which lost DEVICE_DELETED behind ACPI's and the NIC's.
        events = []
        while (event := self.monitor.pull_event(wait=False)) is not None:
            events.append(event)
        for event in events:
            self._transcript.write("event", json.dumps(event))
        return [dict(e) for e in events]

    def close(self) -> None:
        if self._monitor is not None:
            # After "quit" QEMU is gone: the reader's EOF is no error.
            with contextlib.suppress(EOFError, OSError, ConnectError):
                self._monitor.close()
            self._monitor = None
