"""Did the kernel stay clean while a piece of work ran in the guest?

A ``HealthWatch`` takes a baseline of a VM (console position, taint) and
later reports every kernel splat printed since and every taint bit picked
up since, other than the module bits O and E.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dmagate import kmemleak
from dmagate import taint as taint_flags
from dmagate.console import ConsoleTimeout
from dmagate.splat import Splat, format_splats
from dmagate.vm import TAINT_COMMAND, VM

# Ends the taint in check()'s output, where what ``also`` printed begins.
ALSO_MARK = "@@also"
# Leaks count when their backtrace passes through one of the project's modules.
PROJECT_MODULE_PREFIX = "dmagate"


@dataclass
class HealthReport:
    vm_name: str
    splats: list[Splat] = field(default_factory=list)
    new_taint: int = 0
    problem: str = ""  # the VM itself is gone or unreachable

    @property
    def clean(self) -> bool:
        return not self.splats and not self.new_taint and not self.problem

    def describe(self) -> str:
        lines = []
        if self.problem:
            lines.append(f"{self.vm_name}: {self.problem}")
        if self.new_taint:
            lines.append(
                f"{self.vm_name}: kernel picked up taint "
                f"{taint_flags.letters(self.new_taint)} (0x{self.new_taint:x})"
            )
        if self.splats:
            lines.append(f"{self.vm_name}: {len(self.splats)} kernel splat(s)")
            lines.append(format_splats(self.splats))
        return "\n".join(lines)


def project_leaks(vm: VM) -> list[Splat]:
    """kmemleak's reports that involve the project's modules (debug kernel),
    each reported once: what was seen is cleared."""
    if not vm.manifest.has_checkers:
        return []
    found = [
        Splat("KMEMLEAK", leak.title, -1, leak.report)
        for leak in kmemleak.scan(vm)
        if any(m.startswith(PROJECT_MODULE_PREFIX) for m in leak.modules)
    ]
    kmemleak.clear(vm)
    return found


@dataclass
class HealthWatch:
    vm: VM
    console_mark: int
    log_mark: int
    taint: int
    # Scan for leaks in check(): for a VM of the test's own (it ends with
    # the test) or a test that leaks on purpose. A VM shared by a module is
    # scanned once, when the module is done with it (a scan takes ~16 s on
    # the debug kernel under TCG).
    scans_leaks: bool = True
    # After a clean check: where its look ended (console, log, taint), the
    # baseline for the next piece of work on this VM (``resume``). That
    # saves the debug guest a taint read per test, and nothing the kernel
    # prints between two tests goes unseen.
    ended: tuple[int, int, int] | None = None
    # What check()'s ``also`` printed (None: it did not run to its end).
    also_output: str | None = None

    @classmethod
    def begin(cls, vm: VM, from_boot: bool = False) -> HealthWatch:
        """Baseline now, or (``from_boot``) from the VM's start."""
        if from_boot:
            return cls(vm, 0, 0, vm.boot_taint)
        return cls(vm, vm.console.mark(), vm.console.log_mark(), vm.taint(), scans_leaks=False)

    @classmethod
    def resume(cls, vm: VM, ended: tuple[int, int, int]) -> HealthWatch:
        """Baseline where an earlier watch's check on ``vm`` ended."""
        return cls(vm, *ended, scans_leaks=False)

    def check(self, also: str = "") -> HealthReport:
        """``also``: a command to run after the check's own in the same SSH
        round trip (in the SSH shell itself); its output goes to
        ``also_output``."""
        report = HealthReport(self.vm.options.name)
        self.also_output = None
        running = self.vm.is_running()
        state = self.vm.run_state() if running else ""
        lagging = ""
        taint_now: int | None = None
        caught_up: tuple[int, int] | None = None
        output = ""
        if state == "running":
            # ``also`` failing must not fail the check's own command (its
            # caller sees that in its output).
            then = (f"{TAINT_COMMAND} && echo {ALSO_MARK} && {{ {also} || true; }}" if also
                    else TAINT_COMMAND)
            try:
                output = self.vm.console_caught_up(then=then)
                taint_now = int(output.partition(f"{ALSO_MARK}\n")[0])
                caught_up = self.vm.console.mark(), self.vm.console.log_mark()
            except ConsoleTimeout as err:
                lagging = f"the console never showed the kernel's latest line: {err}"
                output = err.output
            except Exception:  # SSH trouble: the taint read below reports it
                pass
        # Kept whatever else failed: what ``also`` did (a drain) is done.
        _, marked, rest = output.partition(f"{ALSO_MARK}\n")
        if also and marked:
            self.also_output = rest
        report.splats = self.vm.splats(self.console_mark, caught_up[0] if caught_up else None)
        if not running:
            if not self.vm.stopped:
                report.problem = "QEMU exited during the test"
            return report
        if state != "running":
            report.problem = f"the guest is not running (QEMU: {state})"
            return report
        try:
            if taint_now is None:
                taint_now = self.vm.taint()
            report.new_taint = taint_flags.new_taint(self.taint, taint_now)
            if self.scans_leaks:
                report.splats += project_leaks(self.vm)
        except Exception as err:  # any failure to ask is a finding
            report.problem = f"cannot ask the guest over SSH: {err}"
        report.problem = report.problem or lagging
        # Only after a clean check: a splat the kernel printed on its own
        # between the taint read and the console mark would leave its taint
        # to the next test.
        if caught_up and taint_now is not None and report.clean:
            self.ended = (*caught_up, taint_now)
        return report
