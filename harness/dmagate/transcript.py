"""Append-only, host-timestamped logs (QMP and SSH transcripts)."""

from __future__ import annotations

import threading
import time
from pathlib import Path


class Transcript:
    def __init__(self, path: Path, started: float | None = None) -> None:
        self.path = path
        self._started = time.monotonic() if started is None else started
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def write(self, kind: str, text: str) -> None:
        stamp = f"[+{time.monotonic() - self._started:10.6f}] {kind}: "
        body = text.rstrip("\n").replace("\n", "\n" + " " * len(stamp))
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(stamp + body + "\n")

    def position(self) -> int:
        return self.path.stat().st_size

    def slice(self, start: int, end: int | None = None) -> str:
        with self.path.open("rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(max(end - start, 0))
        return data.decode("utf-8", errors="replace")
