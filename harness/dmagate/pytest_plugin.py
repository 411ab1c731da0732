"""pytest plugin: VMs as fixtures, kernel health as a test outcome.

Fixtures
  ``dmagate_bench``  session: build paths, kernel flavour, accelerator
  ``vm``             a VM shared by the tests of one module (restarted if a
                     test killed it)
  ``fresh_vm``       a VM of the test's own
  ``make_vm``        factory for VMs with other options; all stopped after

Every test that uses a VM fails if the guest kernel printed a splat or picked
up a taint (other than O/E) while it ran, unless the test says it expects
exactly that with ``@pytest.mark.expect_splat("TITLE-REGEX")``. It fails too
if the ownership check (dmagate.ownership) finds a DMA access outside what
the driver had given the device, unless the test declares it with
``@pytest.mark.expect_ownership_violation("REGEX")``. A failing
test's report ends with the last console lines and the splats; its console
slice, QMP and SSH transcripts and QEMU command line are kept under
build/test-artifacts/<flavour>/<test>/.
"""

from __future__ import annotations

import os
import re
import sys
import weakref
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from dmagate import artifacts, gdb, memdump, snapshot
from dmagate.accel import Accelerator, resolve_accelerator
from dmagate.flavours import DEBUG_FLAVOUR, DEFAULT_FLAVOUR
from dmagate.health import HealthReport, HealthWatch, project_leaks
from dmagate.manifest import Manifest, ManifestError
from dmagate.ownership import Violation
from dmagate.ownership_watch import OwnershipRecordError, OwnershipWatch
from dmagate.paths import BuildPaths
from dmagate.splat import Splat, format_splats
from dmagate.vm import VM, VMOptions, kernel_timeout_factor

VM_FIXTURES = frozenset({"vm", "fresh_vm", "make_vm"})
CONSOLE_TAIL_LINES = 30


class KernelHealthError(AssertionError):
    """The guest kernel splatted or got tainted during the test."""


@dataclass
class Bench:
    """What every VM of a session shares."""

    paths: BuildPaths
    flavour: str
    accelerator: Accelerator
    gdb: bool = False  # every VM with QEMU's gdb stub (--gdb-on-failure)
    snapshots: bool = True  # fresh guests restored from a booted one's snapshot

    @cached_property
    def manifest(self) -> Manifest:
        return Manifest.load(self.paths.image(self.flavour))

    def scale(self, seconds: float) -> float:
        """A timeout written for KVM and a stock kernel, stretched for this bench."""
        return self.accelerator.scale(seconds) * kernel_timeout_factor(self.manifest)

    def options(self, **overrides: Any) -> VMOptions:
        return replace(VMOptions(flavour=self.flavour, gdb=self.gdb), **overrides)

    def new_vm(self, **overrides: Any) -> VM:
        return VM(self.options(**overrides), self.paths, self.accelerator)

    def start_vm(self, boot: bool = False, **overrides: Any) -> VM:
        """A running guest: restored from the snapshot of a booted one of
        the same options (dmagate.snapshot), made the first time they are
        asked for; ``boot`` (or the bench's ``snapshots`` off) boots it
        whatever, and so are guests with gdb's stub (a port of their own
        on the command line) and those of another flavour than the bench's
        (a test's own kernel tree)."""
        vm = self.new_vm(**overrides)
        if self.snapshots and not boot and not vm.options.gdb and \
                vm.options.flavour == self.flavour:
            return snapshot.restored(vm)
        return vm.start()


# Where each shared VM's last check ended, the next test's baseline on it
# (HealthWatch.resume); no value may hold the VM, or it would never go.
_Baselines = weakref.WeakKeyDictionary[VM, tuple[int, int, int]]


@dataclass
class _TestVMs:
    """The VMs one test touched, with the baseline taken for each."""

    watches: list[HealthWatch] = field(default_factory=list)

    def add(self, vm: VM, from_boot: bool, baselines: _Baselines) -> None:
        if all(w.vm is not vm for w in self.watches):
            ended = None if from_boot else baselines.pop(vm, None)
            self.watches.append(HealthWatch.resume(vm, ended) if ended else
                                HealthWatch.begin(vm, from_boot=from_boot))


@dataclass
class _OwnershipTally:
    """The ownership check across the session, for the summary."""

    watches: weakref.WeakKeyDictionary[VM, OwnershipWatch] = field(
        default_factory=weakref.WeakKeyDictionary)
    tests: int = 0
    accesses: int = 0
    violations: int = 0
    declared: int = 0

    def watch(self, vm: VM) -> OwnershipWatch:
        if vm not in self.watches:
            self.watches[vm] = OwnershipWatch(vm)
        return self.watches[vm]


_VMS_KEY = pytest.StashKey[_TestVMs]()
_HEALTH_KEY = pytest.StashKey[list[HealthReport]]()
_OWNERSHIP_KEY = pytest.StashKey[_OwnershipTally]()
_TABLES_KEY = pytest.StashKey[list[tuple[str, str]]]()
_BASELINES_KEY = pytest.StashKey[_Baselines]()


def record_table(config: pytest.Config, title: str, text: str) -> None:
    """A table for the end of the test report (e.g. the fault matrix)."""
    config.stash.setdefault(_TABLES_KEY, []).append((title, text))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dmagate")
    group.addoption(
        "--kernel",
        default=os.environ.get("KERNEL", DEFAULT_FLAVOUR),
        help="guest kernel (KERNEL): 6.12, 6.1, 7.3, debug, or a built kernel tree's path",
    )
    group.addoption(
        "--no-ownership-check",
        action="store_true",
        help="skip the ownership check after each VM test (it costs a drain and a "
             "QMP read per VM)",
    )
    group.addoption(
        "--boot-every-vm",
        action="store_true",
        help="boot every VM; by default a fresh VM is restored from a snapshot of a booted "
             "one of the same options (dmagate.snapshot)",
    )
    group.addoption(
        "--no-memory-dump",
        action="store_true",
        help="do not dump a failed test's guest memory on a panic, hang or timeout "
             "(dmagate.memdump; one file of the guest's RAM size per VM)",
    )
    group.addoption(
        "--gdb-on-failure",
        action="store_true",
        help="boot every VM with QEMU's gdb stub; when a test fails, keep its VMs "
             "paused, print their gdb command lines and wait for Enter on the terminal",
    )
    group.addoption(
        "--accel",
        default=os.environ.get("DMAGATE_ACCEL", "auto"),
        help="accelerator: auto (KVM if it really runs guests), kvm or tcg",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "expect_splat(title_regex): the test provokes a kernel splat on purpose"
    )
    config.addinivalue_line(
        "markers", "debug_kernel: needs the debug kernel's checkers; not collected on others"
    )
    config.addinivalue_line(
        "markers", "real_boot: the test's VMs boot (the boot is what it tests), never "
        "restored from a snapshot; real_boot(False), on a test of a module so marked: "
        "its own VMs may be restored"
    )
    config.addinivalue_line(
        "markers",
        "stock_kernels_only(reason): deselected on the debug kernel, where the same code "
        "path runs in another test (its time is better spent there)",
    )
    config.addinivalue_line(
        "markers",
        f"default_kernel_only(reason): the harness's own behaviour, the same on every "
        f"kernel: collected on the default one ({DEFAULT_FLAVOUR}) only",
    )
    config.addinivalue_line(
        "markers",
        "pmd_pfnmap: needs a kernel that maps a driver's PFNs with PMD entries "
        "(CONFIG_ARCH_SUPPORTS_PMD_PFNMAP, 6.12 on); deselected on others",
    )
    config.addinivalue_line(
        "markers",
        "expect_ownership_violation(regex): the test makes the device touch memory the "
        "driver had not given it, on purpose",
    )
    config.stash[_OWNERSHIP_KEY] = _OwnershipTally()
    config.stash[_BASELINES_KEY] = weakref.WeakKeyDictionary()
    if config.getoption("gdb_on_failure"):
        try:
            Path("/dev/tty").open().close()
        except OSError as err:
            raise pytest.UsageError(
                f"--gdb-on-failure waits for Enter on a terminal; there is none ({err})"
            ) from err


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if VM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.vm)
    # Not skips: on a kernel without the checkers these tests mean nothing;
    # on the debug kernel, stock-only tests repeat what others run there; a
    # kernel without PMD-mapped PFNs has nothing for the PMD tests to see;
    # the harness's own tests would see the same on every other kernel.
    flavour = str(config.getoption("kernel"))
    manifest = _image_manifest(flavour)
    debug = manifest.has_checkers if manifest else flavour == DEBUG_FLAVOUR
    unfit_markers = ["stock_kernels_only" if debug else "debug_kernel"]
    if flavour != DEFAULT_FLAVOUR:
        unfit_markers.append("default_kernel_only")
    if manifest and not manifest.maps_pfns_with_pmds:
        unfit_markers.append("pmd_pfnmap")
    unfit = [item for item in items
             if any(item.get_closest_marker(name) for name in unfit_markers)]
    if unfit:
        config.hook.pytest_deselected(items=unfit)
        items[:] = [item for item in items if item not in unfit]


def _image_manifest(flavour: str) -> Manifest | None:
    """The manifest of the flavour's image, if it is built."""
    try:
        return Manifest.load(BuildPaths.discover().image(flavour))
    except (ManifestError, FileNotFoundError):
        return None


def pytest_report_header(config: pytest.Config) -> str:
    return f"dmagate: kernel flavour {config.getoption('kernel')}"


@pytest.fixture(scope="session")
def dmagate_bench(request: pytest.FixtureRequest) -> Bench:
    paths = BuildPaths.discover()
    flavour = str(request.config.getoption("kernel"))
    accelerator = resolve_accelerator(str(request.config.getoption("accel")), paths.qemu)
    return Bench(paths, flavour, accelerator, gdb=bool(request.config.getoption("gdb_on_failure")),
                 snapshots=not request.config.getoption("boot_every_vm"))


def _watch(request: pytest.FixtureRequest, vm: VM, from_boot: bool) -> None:
    vms = request.node.stash.setdefault(_VMS_KEY, _TestVMs())
    vms.add(vm, from_boot, request.config.stash[_BASELINES_KEY])


@pytest.fixture(scope="module")
def _module_vm(dmagate_bench: Bench, request: pytest.FixtureRequest) -> Iterator[list[VM]]:
    holder: list[VM] = []
    yield holder
    leaks = []
    for vm in holder:
        if vm.is_running() and not vm.panicked():
            leaks += project_leaks(vm)  # the module's kmemleak scan (debug kernel)
        vm.shutdown()
    if leaks:
        raise KernelHealthError(
            f"kmemleak, at the end of {request.module.__name__}: {len(leaks)} leak(s) "
            f"involving the project's modules\n{format_splats(leaks)}"
        )


def _real_boot(node: pytest.Item | pytest.Collector) -> bool:
    marker = node.get_closest_marker("real_boot")
    return marker is not None and (not marker.args or bool(marker.args[0]))


@pytest.fixture
def vm(_module_vm: list[VM], dmagate_bench: Bench, request: pytest.FixtureRequest) -> VM:
    if _module_vm and (not _module_vm[0].is_running() or _module_vm[0].panicked()):
        _module_vm.pop().kill()
    if not _module_vm:
        name = re.sub(r"\W+", "-", request.module.__name__.rsplit(".", 1)[-1])
        # The module's marker, not the test's: the VM is the module's.
        module = request.node.getparent(pytest.Module) or request.node
        _module_vm.append(dmagate_bench.start_vm(boot=_real_boot(module), name=name))
    _watch(request, _module_vm[0], from_boot=False)
    return _module_vm[0]


@pytest.fixture
def fresh_vm(make_vm: Callable[..., VM]) -> VM:
    return make_vm()


@pytest.fixture
def make_vm(
    dmagate_bench: Bench, request: pytest.FixtureRequest
) -> Iterator[Callable[..., VM]]:
    made: list[VM] = []

    def factory(**overrides: Any) -> VM:
        overrides.setdefault("name", re.sub(r"\W+", "-", request.node.name)[:40])
        vm = dmagate_bench.start_vm(boot=_real_boot(request.node), **overrides)
        made.append(vm)
        _watch(request, vm, from_boot=True)
        return vm

    yield factory
    for vm in made:
        vm.shutdown()


def _expected(item: pytest.Item) -> list[re.Pattern[str]]:
    return [re.compile(str(m.args[0])) for m in item.iter_markers("expect_splat")]


def judge(expected: list[re.Pattern[str]], reports: list[HealthReport]) -> str:
    """What is wrong with the kernel's behaviour in a test, or "".

    ``expected``: title patterns of splats the test provokes on purpose; each
    must appear, and then the taint they bring is no finding either.
    """
    problems = []
    seen: set[int] = set()
    for report in reports:
        unexpected = []
        for splat in report.splats:
            hits = [i for i, pattern in enumerate(expected) if pattern.search(splat.title)]
            seen.update(hits)
            if not hits:
                unexpected.append(splat)
        # A splat the test provoked taints the kernel (W, maybe D); that is
        # part of what it expected.
        rest = HealthReport(
            report.vm_name, unexpected, 0 if expected else report.new_taint, report.problem
        )
        if not rest.clean:
            problems.append(rest.describe())
    for i, pattern in enumerate(expected):
        if i not in seen:
            problems.append(f"expected a kernel splat matching {pattern.pattern!r}; none came")
    return "\n".join(problems)


def judge_ownership(expected: list[re.Pattern[str]], violations: list[Violation]) -> str:
    """What is wrong with the device's accesses in a test, or "".

    ``expected``: patterns of violations the test provokes on purpose; each
    must match one, and every violation must match one.
    """
    problems = []
    seen: set[int] = set()
    for violation in violations:
        text = violation.describe()
        hits = [i for i, pattern in enumerate(expected) if pattern.search(text)]
        seen.update(hits)
        if not hits:
            problems.append(f"ownership violated: {text}")
    for i, pattern in enumerate(expected):
        if i not in seen:
            problems.append(
                f"expected an ownership violation matching {pattern.pattern!r}; none came")
    return "\n".join(problems)


def _read_devices(item: pytest.Item, vms: _TestVMs) -> dict[VM, str]:
    """The first half of the ownership check: each running VM's device
    accesses (QMP), read before the health check's guest command drains the
    driver's record of them (``drain_command``); a VM whose log lost entries
    maps to what went wrong."""
    tally = item.config.stash[_OWNERSHIP_KEY]
    errors = {}
    for health in vms.watches:
        if health.vm.is_running():
            try:
                tally.watch(health.vm).read_device()
            except OwnershipRecordError as err:
                errors[health.vm] = str(err)
            except Exception as err:  # QMP trouble: the health check must run all the same
                errors[health.vm] = f"cannot read the device's DMA log: {err}"
    return errors


def _ownership_verdict(item: pytest.Item, vms: _TestVMs, read_errors: dict[VM, str]) -> str:
    tally = item.config.stash[_OWNERSHIP_KEY]
    expected = [re.compile(str(m.args[0]))
                for m in item.iter_markers("expect_ownership_violation")]
    violations: list[Violation] = []
    problems = list(read_errors.values())
    for health in vms.watches:
        if not health.vm.is_running() or health.vm in read_errors:
            continue
        watch = tally.watch(health.vm)
        before = watch.checked
        try:
            violations += watch.judge(health.also_output)
        except OwnershipRecordError as err:
            problems.append(str(err))
        tally.accesses += watch.checked - before
    tally.tests += 1
    tally.violations += len(violations)
    verdict = judge_ownership(expected, violations)
    if not verdict:
        tally.declared += len(violations)
    return "\n".join([*problems, verdict] if verdict else problems)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    ownership = ""
    # Only after a body that returned: an interrupted run (SIGINT) must not
    # wait on a guest that is going away.
    owned = False
    try:
        result = yield
        owned = not item.config.getoption("no_ownership_check")
    finally:
        vms = item.stash.get(_VMS_KEY, None) or _TestVMs()
        if any("memory leak" in p.pattern for p in _expected(item)):
            for watch in vms.watches:
                watch.scans_leaks = True  # the leak it provokes, seen in the test
        owned = owned and bool(vms.watches)
        read_errors = _read_devices(item, vms) if owned else {}
        tally = item.config.stash[_OWNERSHIP_KEY]
        item.stash[_HEALTH_KEY] = [
            w.check(also=tally.watch(w.vm).drain_command if owned and w.vm not in read_errors
                    else "")
            for w in vms.watches]
        for watch in vms.watches:
            if watch.ended:
                item.config.stash[_BASELINES_KEY][watch.vm] = watch.ended
    if owned:
        ownership = _ownership_verdict(item, vms, read_errors)
    verdict = "\n".join(v for v in (judge(_expected(item), item.stash[_HEALTH_KEY]),
                                     ownership) if v)
    if verdict:
        raise KernelHealthError(verdict)
    return result


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for title, text in config.stash.get(_TABLES_KEY, []):
        terminalreporter.section(title)
        terminalreporter.write_line(text)
    tally = config.stash.get(_OWNERSHIP_KEY, None)
    if tally and tally.tests:
        terminalreporter.write_line(
            f"dmagate ownership check: {tally.accesses} device accesses checked in "
            f"{tally.tests} tests; {tally.violations} violations "
            f"({tally.declared} declared by their tests)")



@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    vms = item.stash.get(_VMS_KEY, None)
    if vms is None or not report.failed:
        return report
    health = {h.vm_name: h for h in item.stash.get(_HEALTH_KEY, [])}
    paths = BuildPaths.discover()
    flavour = str(item.config.getoption("kernel"))
    directory = artifacts.artifact_dir(paths.artifacts, flavour, item.nodeid)
    repro = artifacts.repro_command(paths.root, item.nodeid, flavour, sys.executable)
    (directory / artifacts.REPRO_FILE).write_text(repro + "\n")
    for watch in vms.watches:
        vm = watch.vm
        name = vm.options.name
        tail = "\n".join(vm.console.since(watch.console_mark).splitlines()[-CONSOLE_TAIL_LINES:])
        report.sections.append((f"dmagate {name}: last console lines", tail))
        if name in health and health[name].splats:
            report.sections.append((f"dmagate {name}: kernel splats", health[name].describe()))
        artifacts.save_vm(vm, vm.console.log_slice(watch.log_mark), directory / name)
        if not item.config.getoption("no_memory_dump"):
            splats = health[name].splats if name in health else []
            if dumped := _dump_memory(vm, splats, report.longreprtext, directory / name):
                report.sections.append((f"dmagate {name}: memory dump", dumped))
    report.sections.append(("dmagate artifacts", f"{directory}\nrun it alone: {repro}"))
    if item.config.getoption("gdb_on_failure"):
        _hold_for_gdb(item, [w.vm for w in vms.watches])
    return report


def _dump_memory(vm: VM, splats: list[Splat], failure: str, directory: Path) -> str:
    """Dump a failed test's VM after a panic, a hang or a timeout; what was
    written, or "" if nothing was."""
    if not vm.is_running():
        return ""
    try:
        reason = memdump.why_dump(vm.run_state(), splats, failure)
        if not reason:
            return ""
        dump = memdump.dump_guest_memory(vm, directory / memdump.DUMP_FILE)
    except Exception as err:  # a QEMU that cannot dump any more is no test failure
        return f"no memory dump: {err}"
    note = memdump.how_to_open(vm.manifest, dump, reason)
    (directory / memdump.NOTE_FILE).write_text(note)
    return note


def _hold_for_gdb(item: pytest.Item, vms: list[VM]) -> None:
    """Pause the failed test's VMs and wait at the terminal while someone
    debugs them; they run on (or are torn down) after Enter."""
    held = [vm for vm in vms if vm.is_running() and vm.gdb_port]
    if not held:
        return
    lines = []
    for vm in held:
        # What the guest prints for being held (an RCU stall) is no next test's.
        item.config.stash[_BASELINES_KEY].pop(vm, None)
        command = gdb.describe(vm)  # the module addresses, read while it runs
        vm.qmp.cmd("stop")
        lines.append(f"dmagate {vm.options.name}: paused, gdb stub on "
                     f"{gdb.GDB_HOST}:{vm.gdb_port}; debug it with:\n  {command}")
    capture = item.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled(), Path("/dev/tty").open() as tty:
        print(f"\n{item.nodeid} failed.", *lines, sep="\n")
        print("dmagate: press Enter to go on", flush=True)
        tty.readline()
    for vm in held:
        if vm.is_running():
            vm.qmp.cmd("cont")


