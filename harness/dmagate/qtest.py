"""QEMU's qtest protocol: drive a machine with no guest OS.

QEMU runs with ``-accel qtest``; the client reads and writes guest memory,
does port I/O, steps the virtual clock and sees interrupt lines, one text
line per command (docs/devel/qtest.rst). Used by the device tests.

QEMU starts with the sanitizers' options (dmagate.sanitizer); once it is
gone, ``sanitizer_reports()`` reads what a sanitizer build reported.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from dmagate.cmdline import FAST_BIOS, FIRMWARE_DIRS
from dmagate.process import die_with_parent, kill_group
from dmagate.qmp import QMP
from dmagate.sanitizer import SanitizerReport, sanitizer_options, scan_log
from dmagate.transcript import Transcript


class QTestError(RuntimeError):
    pass


class QTestMachine:
    """A qtest-driven QEMU: ``machine.writel(addr, v)``, ``machine.qmp.cmd(...)``."""

    def __init__(
        self,
        qemu: Path,
        args: Sequence[str],
        workdir: Path,
        memory_mib: int = 512,
        timeout: float = 30.0,
    ) -> None:
        self.workdir = workdir
        self.timeout = timeout
        workdir.mkdir(parents=True, exist_ok=True)
        self._sockdir = Path(tempfile.mkdtemp(prefix="dmagate-qt-"))
        qtest_path = self._sockdir / "qtest.sock"
        qmp_path = self._sockdir / "qmp.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(qtest_path))
        listener.listen(1)
        self.argv = [
            str(qemu), "-machine", "q35", "-accel", "qtest", "-nodefaults",
            "-display", "none", "-m", str(memory_mib),
            *(arg for d in FIRMWARE_DIRS for arg in ("-L", str(d))), "-bios", FAST_BIOS,
            "-qtest", f"unix:{qtest_path}", "-qtest-log", "/dev/null",
            "-qmp", f"unix:{qmp_path},server=on,wait=off",
            *args,
        ]
        sanitizers = sanitizer_options(os.environ)
        # With the variables in front, the line reruns QEMU as the test did.
        assignments = (f"{name}={value}" for name, value in sanitizers.items())
        (workdir / "qemu-cmdline.txt").write_text(shlex.join((*assignments, *self.argv)) + "\n")
        self.stderr_log = workdir / "qemu-stderr.log"
        self._log = self.stderr_log.open("w")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **sanitizers},
            start_new_session=True, preexec_fn=die_with_parent()  # noqa: PLW1509 - one prctl, see die_with_parent,
        )
        try:
            self._sock = self._accept(listener, timeout)
        finally:
            listener.close()
        self._buffer = b""
        self.irq_events: list[tuple[str, int]] = []
        self.qmp = QMP(qmp_path, Transcript(workdir / "qmp.log"))
        try:
            self.qmp.connect(timeout, alive=self.alive)
        except ConnectionError as err:
            self.kill()
            raise QTestError(f"QEMU exited at start: {self._last_words()}") from err

    # -- plumbing -------------------------------------------------------------

    def stderr(self) -> str:
        self._log.flush()
        return (self.workdir / "qemu-stderr.log").read_text()[-3000:]

    def sanitizer_reports(self) -> list[SanitizerReport]:
        """ASan, LSan and UBSan reports in QEMU's stderr. Complete only once
        QEMU is gone (LeakSanitizer reports at exit): call close() first."""
        return scan_log(self.stderr_log)

    def _accept(self, listener: socket.socket, timeout: float) -> socket.socket:
        """QEMU's qtest connection; fails at once if QEMU exits first (a
        refused -device option, say) instead of waiting out ``timeout``."""
        listener.settimeout(0.05)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return listener.accept()[0]
            except TimeoutError:
                if not self.alive() or time.monotonic() > deadline:
                    break
        self.kill()
        raise QTestError(f"QEMU did not connect to qtest: {self._last_words()}")

    def _gone(self) -> QTestError:
        return QTestError(f"QEMU closed qtest; it said:\n{self._last_words()}")

    def _last_words(self) -> str:
        """Why QEMU went away: a sanitizer report if it printed one (it is
        long, its start is what matters), else the end of its stderr."""
        reports = self.sanitizer_reports()
        return reports[0].excerpt if reports else self.stderr()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _readline(self) -> str:
        # Chunks are joined once per line: replies to b64read run to many MB.
        chunks = [self._buffer]
        while b"\n" not in chunks[-1]:
            self._sock.settimeout(self.timeout)
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError as err:
                raise QTestError("qtest: no answer") from err
            except OSError as err:  # ECONNRESET: QEMU died with our command unread
                raise self._gone() from err
            if not data:
                raise self._gone()
            chunks.append(data)
        line, _, self._buffer = b"".join(chunks).partition(b"\n")
        return line.decode()

    def command(self, line: str) -> list[str]:
        """Send one command; return the words of its OK reply."""
        try:
            self._sock.sendall(line.encode() + b"\n")
        except OSError as err:  # EPIPE or ECONNRESET: QEMU died since the last reply
            raise self._gone() from err
        while True:
            reply = self._readline()
            if reply.startswith("IRQ "):
                _, what, num = reply.split()
                self.irq_events.append((what, int(num)))
                continue
            words = reply.split()
            if not words or words[0] != "OK":
                raise QTestError(f"{line[:80]!r}: {reply}")
            return words[1:]

    # -- memory and I/O ---------------------------------------------------------

    def readl(self, addr: int) -> int:
        return int(self.command(f"readl 0x{addr:x}")[0], 16)

    def writel(self, addr: int, value: int) -> None:
        self.command(f"writel 0x{addr:x} 0x{value & 0xFFFFFFFF:x}")

    def readw(self, addr: int) -> int:
        return int(self.command(f"readw 0x{addr:x}")[0], 16)

    def readb(self, addr: int) -> int:
        return int(self.command(f"readb 0x{addr:x}")[0], 16)

    def writeb(self, addr: int, value: int) -> None:
        self.command(f"writeb 0x{addr:x} 0x{value & 0xFF:x}")

    def writew(self, addr: int, value: int) -> None:
        self.command(f"writew 0x{addr:x} 0x{value & 0xFFFF:x}")

    def writeq(self, addr: int, value: int) -> None:
        self.command(f"writeq 0x{addr:x} 0x{value & (1 << 64) - 1:x}")

    def memread(self, addr: int, size: int) -> bytes:
        if size == 0:
            return b""
        return base64.b64decode(self.command(f"b64read 0x{addr:x} 0x{size:x}")[0])

    def memwrite(self, addr: int, data: bytes) -> None:
        if data:
            encoded = base64.b64encode(data).decode()
            self.command(f"b64write 0x{addr:x} 0x{len(data):x} {encoded}")

    def memset(self, addr: int, size: int, value: int) -> None:
        if size:
            self.command(f"memset 0x{addr:x} 0x{size:x} 0x{value:x}")

    def outl(self, port: int, value: int) -> None:
        self.command(f"outl 0x{port:x} 0x{value:x}")

    def inl(self, port: int) -> int:
        return int(self.command(f"inl 0x{port:x}")[0], 16)

    def outw(self, port: int, value: int) -> None:
        self.command(f"outw 0x{port:x} 0x{value:x}")

    def inw(self, port: int) -> int:
        return int(self.command(f"inw 0x{port:x}")[0], 16)

    def outb(self, port: int, value: int) -> None:
        self.command(f"outb 0x{port:x} 0x{value:x}")

    def inb(self, port: int) -> int:
        return int(self.command(f"inb 0x{port:x}")[0], 16)

    # -- time and interrupts ----------------------------------------------------

    def clock_step(self, ns: int | None = None) -> int:
        """Advance the virtual clock by ``ns`` (or to the next deadline)."""
        return int(self.command("clock_step" if ns is None else f"clock_step {ns}")[0])

    def irq_intercept_in(self, qom_path: str) -> None:
        self.command(f"irq_intercept_in {qom_path}")

    def take_irq_events(self) -> list[tuple[str, int]]:
        self.command("readb 0x0")  # a round trip: async lines sent before it arrive
        events, self.irq_events = self.irq_events, []
        return events

    # -- lifetime ---------------------------------------------------------------

    def kill(self) -> None:
        kill_group(self.proc.pid)
        self.proc.wait()

    def close(self) -> None:
        """Quit QEMU (QMP quit, then SIGKILL); return when it is gone. Idempotent."""
        if self._log.closed:
            return
        with contextlib.suppress(Exception):
            self.qmp.cmd("quit")
        deadline = time.monotonic() + 5
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.alive():
            self.kill()
        self.qmp.close()
        with contextlib.suppress(OSError):
            self._sock.close()
        self._log.close()
        for leftover in self._sockdir.iterdir():
            leftover.unlink()
        self._sockdir.rmdir()

    def __enter__(self) -> QTestMachine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
