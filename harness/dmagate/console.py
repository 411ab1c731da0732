"""The guest's serial console: QEMU's stdio on a pty, read by pexpect.

One reader thread drains the pty for the whole life of the VM, so QEMU
never blocks on a full console however long nobody looks, and keeps:
- the raw text in memory, for matching (``wait_for``) and splat scans;
- a log file with a host timestamp on every line, for people.
Positions in the text are plain character offsets, so a test can take a
``mark()`` and later look at exactly what was printed since.
"""

from __future__ import annotations

import codecs
import os
import re
import select
import sys
import termios
import threading
import time
import tty
from pathlib import Path
from typing import IO, Protocol

import pexpect

ESCAPE_KEY = b"\x1d"  # Ctrl-], as telnet and virsh console


class ConsoleTimeout(TimeoutError):
    """The console did not print what was waited for."""

    # What the SSH command that was to show up there printed
    # (VM.console_caught_up): it ran, and may have drained something.
    output = ""


class _Readable(Protocol):
    def read_nonblocking(self, size: int, timeout: float) -> bytes: ...
    def send(self, data: bytes | str) -> int: ...


class Console:
    def __init__(self, child: _Readable, log_path: Path, started: float | None = None) -> None:
        self._child = child
        self._started = time.monotonic() if started is None else started
        self._text: list[str] = []
        self._length = 0
        self._log_bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self._echo: IO[str] | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.log_path = log_path
        self._log = log_path.open("w", encoding="utf-8")
        header = (
            f"# console of QEMU started {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; "
            "[+seconds] is host time since start\n"
        )
        self._log.write(header)
        self._log_bytes = len(header.encode())
        self._at_line_start = True
        self._thread = threading.Thread(target=self._reader, name="dmagate-console", daemon=True)
        self._thread.start()

    # -- reading ---------------------------------------------------------------

    def _reader(self) -> None:
        while True:
            try:
                data = self._child.read_nonblocking(65536, timeout=0.2)
            except pexpect.TIMEOUT:
                continue
            except (pexpect.EOF, OSError, ValueError):
                break
            self._append(self._decoder.decode(data))
        self._append(self._decoder.decode(b"", final=True))
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._log.close()

    def _append(self, chunk: str) -> None:
        if not chunk:
            return
        chunk = chunk.replace("\r\n", "\n").replace("\r", "")
        self._write_log(chunk)
        if self._echo is not None:
            self._echo.write(chunk)
            self._echo.flush()
        with self._cond:
            self._text.append(chunk)
            self._length += len(chunk)
            self._cond.notify_all()

    def _write_log(self, chunk: str) -> None:
        stamp = f"[+{time.monotonic() - self._started:10.6f}] "
        out = []
        for piece in chunk.splitlines(keepends=True):
            if self._at_line_start:
                out.append(stamp)
            out.append(piece)
            self._at_line_start = piece.endswith("\n")
        text = "".join(out)
        self._log.write(text)
        self._log.flush()
        with self._cond:
            self._log_bytes += len(text.encode())

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def mark(self) -> int:
        """The current end of the console text, for ``since`` and ``wait_for``."""
        with self._cond:
            return self._length

    def log_mark(self) -> int:
        """The current size of the timestamped log, for slicing it later."""
        with self._cond:
            return self._log_bytes

    def log_slice(self, start: int) -> str:
        with self.log_path.open("rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", errors="replace")

    def text(self) -> str:
        with self._cond:
            joined = "".join(self._text)
            self._text = [joined]
            return joined

    def since(self, mark: int) -> str:
        return self.text()[mark:]

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float, start: int | None = None
    ) -> re.Match[str]:
        """Wait until ``pattern`` appears after ``start`` (default: now)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        begin = self.mark() if start is None else start
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                joined = "".join(self._text)
                self._text = [joined]
                match = regex.search(joined, begin)
                if match:
                    return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    why = "console closed" if self._closed else f"{timeout:.0f} s passed"
                    tail = "\n".join(joined[begin:].splitlines()[-25:])
                    raise ConsoleTimeout(
                        f"{regex.pattern!r} not seen on the console ({why}); last lines:\n{tail}"
                    )
                self._cond.wait(min(remaining, 1.0))

    # -- writing ---------------------------------------------------------------

    def send(self, text: str) -> None:
        self._child.send(text.encode())

    def sendline(self, line: str) -> None:
        self.send(line + "\n")

    # -- people ----------------------------------------------------------------

    def interact(self) -> None:
        """Connect the terminal to the console until Ctrl-] or QEMU exits."""
        stdin = sys.stdin.fileno()
        saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
        self._echo = sys.stdout
        try:
            if saved is not None:
                tty.setraw(stdin)
            while not self.closed:
                ready, _, _ = select.select([stdin], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(stdin, 1024)
                if not data or ESCAPE_KEY in data:
                    break
                self._child.send(data)
        finally:
            self._echo = None
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
