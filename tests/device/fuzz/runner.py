"""The run: chaos and checked phases in turn until the operations are done,
the device brought back between them, and what to say when QEMU dies."""

from __future__ import annotations

import collections
import contextlib
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from dmagate.devdriver import PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY
from dmagate.hwregs import HW
from dmagate.qmp import ExecuteError
from dmagate.qtest import QTestError, QTestMachine

from .aims import aims
from .board import Board
from .chaos import Chaos
from .checked_probes import CheckedPhase
from .layout import (
    BAR0,
    BAR2,
    CTRL_ENABLE,
    CTRL_RESET,
    INT_ALL,
    MAX_BANDWIDTH_MBPS,
    MAX_MIGRATIONS,
    PCI_PM_CTRL,
    STATUS_DEFINED,
)
from .properties import Properties
from .report import FuzzFailure, PhaseAbort, Reporter


def signal_name(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-returncode).name
    return f"exit status {returncode}"


class Fuzzer:
    """Alternates chaos and checked phases until the operations are done,
    bringing the device back between them."""

    def __init__(self, make_machine: Callable[..., QTestMachine], tmp: Path,
                 rep: Reporter) -> None:
        self.rep = rep
        self.rng = random.Random(rep.seed)
        self.options: dict[str, Any] = self.rng.choice((
            {"zero-delay": True},
            {"latency-ns": 1, "bandwidth-mbps": 0},
            {"latency-ns": 100, "bandwidth-mbps": MAX_BANDWIDTH_MBPS},
            {"latency-ns": 1000, "bandwidth-mbps": 10_000},
        ))
        rep.log(f"device options {self.options}")
        self.board = Board(make_machine, tmp, self.options, rep)
        self.props = Properties(self.board, rep)
        self.aims = aims(self.board.topo)
        self.chaos = Chaos(self)
        self.phases: collections.Counter[str] = collections.Counter()

    def run(self) -> None:
        migrate_p = min(0.5, MAX_MIGRATIONS * 450 / max(self.rep.total, 1))
        while self.rep.op < self.rep.total:
            left = self.rep.total - self.rep.op
            migrate = self.board.migrations < MAX_MIGRATIONS and self.rng.random() < migrate_p
            if self.rng.random() < 0.45:
                self.chaos_phase(min(left, self.rng.randint(30, 600)), migrate)
            else:
                self.checked_phase(min(left, self.rng.randint(40, 1200)), migrate)
        self.checked_phase(1, False)  # and the device still works

    def chaos_phase(self, budget: int, migrate: bool) -> None:
        self.enter("chaos", budget)
        with contextlib.suppress(PhaseAbort):
            self.chaos.run(budget, self.rng.randrange(budget) if migrate else None)
        self.leave("chaos")

    def checked_phase(self, budget: int, migrate: bool) -> None:
        self.enter("checked", budget)
        with contextlib.suppress(PhaseAbort):
            CheckedPhase(self).run(budget, self.rng.randrange(3) if migrate else None,
                                   allow_large=budget > 1)
        self.leave("checked")

    def enter(self, kind: str, budget: int) -> None:
        self.phases[kind] += 1
        self.rep.phase = f"{kind} #{self.phases[kind]}"
        self.rep.log(f"{kind} phase of {budget} operations")

    def leave(self, kind: str) -> None:
        self.rep.phase = f"after {kind} #{self.phases[kind]}"
        self.recover(after_chaos=kind == "chaos")

    def quick_program(self) -> None:
        """Memory decode and bus mastering on, D0, BARs in place (mid-chaos)."""
        board = self.board
        if board.topo.pm:
            board.cfg.write16(board.topo.pm + PCI_PM_CTRL, 0)
        board.cfg.write16(PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        board.cfg.write32(0x10, BAR0)
        board.cfg.write32(0x18, BAR2)

    def recover_device(self) -> None:
        """The platform back, the device there (re-added if it went), quiet
        and programmed."""
        board = self.board
        for _ in range(20):
            # Work chaos left queued still runs whenever QEMU's main loop does
            # (a QMP or qtest command is enough), and chaos may have aimed its
            # DMA or MSI-X at the root port's slot control or bus numbers:
            # bus mastering off as soon as the device answers, then the
            # platform again, over whatever it wrote before that.
            board.platform()
            if not board.device_exists():
                self.rep.notes["device gone at recovery: device_add"] += 1
                self.rep.log("the device is gone: device_add")
                board.add_device()
            try:
                self.props.clear_rogue()  # a dead device would not come back; none is modelled
            except ExecuteError:
                if board.device_exists():
                    raise
                continue
            if board.visible():
                board.cfg.set_command(PCI_COMMAND_MASTER, on=False)
                board.platform()
                if board.visible() and board.device_exists():
                    break
            board.qt.clock_step(100_000)
        else:
            raise FuzzFailure(self.rep.message(
                "the device is not visible at 1:0.0 after recovery (config dword 0 = "
                f"{board.cfg.read32(0):#x})"))
        board.program()

    def recover(self, *, after_chaos: bool) -> None:
        """Between phases: QEMU alive, the registers within their defined
        bits, then CTRL.RESET brings the device to its reset state."""
        rep, board = self.rep, self.board
        if not board.qt.alive():
            raise QTestError("QEMU is gone")
        self.recover_device()
        dev = board.dev
        if dev.read("ID") != HW["ID_VALUE"]:
            raise FuzzFailure(rep.message("BAR0 does not decode after recovery"))
        if after_chaos:
            for reg, defined in (("STATUS", STATUS_DEFINED), ("CTRL", CTRL_ENABLE),
                                 ("INT_STATUS", INT_ALL), ("INT_MASK", INT_ALL)):
                value = dev.read(reg)
                if value & ~defined:
                    rep.violation("reserved-bits", f"{reg}={value:#x} after chaos: bits "
                                  f"outside {defined:#x}", abort=False)
        dev.write("CTRL", CTRL_RESET)
        for reg in ("STATUS", "CTRL", "INT_STATUS", "INT_MASK", "SQ_SIZE", "CQ_TAIL", "ERROR"):
            value = dev.read(reg)
            if value:
                rep.violation("reset", f"{reg}={value:#x} right after CTRL.RESET", abort=False)
        dev.write("INT_ACK", INT_ALL)
        board.sync_irqs()
        board.line.level, board.line.trusted = False, True
        rep.tick(8)


def crash_report(rep: Reporter, board: Board, err: BaseException) -> NoReturn:
    """QEMU died or stopped answering: the signal, what the fuzz was doing,
    the end of QEMU's stderr."""
    qt = board.qt
    deadline = time.monotonic() + 5
    while qt.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    findings = f"\n{rep.summary()}" if rep.findings else ""
    if qt.alive():
        raise FuzzFailure(rep.message(f"QEMU stopped answering: {err!r}{findings}")) from err
    log = qt.workdir / "qemu-stderr.log"
    tail = [line[:200] for line in log.read_text(errors="replace").splitlines()[-12:]]
    raise FuzzFailure(rep.message(
        f"QEMU died: {signal_name(qt.proc.returncode)} (its stderr: {log})\n  "
        + "\n  ".join(tail) + findings)) from err


def run(make_machine: Callable[..., QTestMachine], tmp: Path, rep: Reporter) -> None:
    """A whole run, then its summary printed. What it found, QEMU dying and
    the fuzz itself failing all end in FuzzFailure, with the replay line."""
    started = time.monotonic()
    fuzz = Fuzzer(make_machine, tmp, rep)
    try:
        fuzz.run()
    except FuzzFailure:
        raise
    except Exception as err:
        if not fuzz.board.qt.alive() or isinstance(err, QTestError | OSError | EOFError):
            crash_report(rep, fuzz.board, err)
        raise FuzzFailure(rep.message(f"the fuzz itself failed: {err!r}")) from err
    elapsed = time.monotonic() - started
    print(f"fuzz seed {rep.seed}: {rep.op} operations in {elapsed:.1f} s, phases "
          f"{dict(fuzz.phases)}, {fuzz.board.migrations} migrations, "
          f"{fuzz.board.hotplugs} device_add")
    for note, count in sorted(rep.notes.items()):
        print(f"  {count:>5}  {note}")
    if rep.findings:
        raise FuzzFailure(rep.message(rep.summary()))
