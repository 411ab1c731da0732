"""`QMP.events` hands back every event QEMU sent, however they arrived."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dmagate.qmp import QMP
from dmagate.transcript import Transcript

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 10},
                                "package": ""}, "capabilities": []}}


def _event(name: str, **data: str) -> dict[str, object]:
    return {"event": name, "data": data, "timestamp": {"seconds": 1, "microseconds": 0}}


def _commands(conn: socket.socket) -> Iterator[dict[str, Any]]:
    """The commands a client sends: JSON objects, newline or not (as QEMU's
    streaming parser takes them)."""
    decoder = json.JSONDecoder()
    pending = ""
    while chunk := conn.recv(4096):
        pending += chunk.decode()
        while pending.strip():
            try:
                command, end = decoder.raw_decode(pending.lstrip())
            except json.JSONDecodeError:
                break
            pending = pending.lstrip()[end:]
            yield command


def _serve(listener: socket.socket, burst: list[dict[str, object]]) -> None:
    """Greet, answer every command with an empty return and, a moment after
    the first command past negotiation, send ``burst`` in one write: events
    that come while the client is between commands, as an unplug's do."""
    conn, _ = listener.accept()
    with conn:
        conn.sendall(json.dumps(GREETING).encode() + b"\n")
        sent = False
        for command in _commands(conn):
            conn.sendall(json.dumps({"return": {}, "id": command.get("id")}).encode() + b"\n")
            if command["execute"] != "qmp_capabilities" and not sent:
                time.sleep(0.1)
                conn.sendall(b"".join(json.dumps(e).encode() + b"\n" for e in burst))
                sent = True


@pytest.fixture
def qmp_with_burst(tmp_path: Path) -> Iterator[tuple[QMP, list[dict[str, object]]]]:
    burst = [_event("ACPI_DEVICE_OST"), _event("NIC_RX_FILTER_CHANGED", path="/n"),
             _event("DEVICE_DELETED", device="dg0", path="/machine/peripheral/dg0")]
    sock_path = tmp_path / "qmp.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    listener.listen(1)
    server = threading.Thread(target=_serve, args=(listener, burst), daemon=True)
    server.start()
    qmp = QMP(sock_path, Transcript(tmp_path / "qmp.log"))
    qmp.connect(timeout=10)
    try:
        yield qmp, burst
    finally:
        qmp.close()
        listener.close()
        server.join(timeout=10)


def test_events_that_arrive_together_are_all_returned(
        qmp_with_burst: tuple[QMP, list[dict[str, object]]]) -> None:
    qmp, burst = qmp_with_burst
    qmp.cmd("device_del", id="dg0")
    time.sleep(0.3)
    seen: list[dict[str, object]] = []
    deadline = time.monotonic() + 5
    while len(seen) < len(burst) and time.monotonic() < deadline:
        seen += qmp.events()
    assert [e["event"] for e in seen] == [e["event"] for e in burst]
    assert qmp.events() == []
