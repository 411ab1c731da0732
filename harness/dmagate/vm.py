"""A dmagate guest: QEMU built from source, a Debian kernel, the project's
initramfs; console, QMP and SSH attached.

    with VM(VMOptions()) as vm:
        status, out, err = vm.run("lspci -n")

No QEMU outlives its VM object or the Python process that started it: QEMU
leads its own process group (pexpect makes it a session leader), its parent-
death signal is SIGKILL, and the object kills the group on exit, on
exceptions and when garbage-collected or at interpreter exit.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shlex
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pexpect

from dmagate import gdb
from dmagate import splat as splat_parser
from dmagate.accel import Accelerator, resolve_accelerator
from dmagate.cmdline import GuestSpec, build_command, ssh_forward_port
from dmagate.console import Console, ConsoleTimeout
from dmagate.flavours import CHECKERS_SLOWDOWN, DEFAULT_FLAVOUR
from dmagate.manifest import Manifest
from dmagate.paths import BuildPaths
from dmagate.process import die_with_parent, kill_group
from dmagate.qmp import QMP
from dmagate.ssh import SSH, CommandResult
from dmagate.transcript import Transcript

READY_LINE = re.compile(r"dmagate-init: ready")
# SLUB leaves each allocated object holding a stale free-list pointer to the
# object allocated after it, and kmemleak takes that for a reference: a
# single leaked kmalloc() was reported in 3 of 12 scans. Zeroing every
# allocation removes those pointers (42 of 42).
DEBUG_KERNEL_ARGS = ("init_on_alloc=1",)
# Run in the SSH shell itself (SSH.run, own_shell=False). cat, not the read
# builtin: read takes a byte at a time, and a sysctl file answers a read at
# offset 0 only.
TAINT_COMMAND = "cat /proc/sys/kernel/tainted"
# In the VM's workdir: the QEMU command line, shell-quoted.
CMDLINE_FILE = "qemu-cmdline.txt"

# Base timeouts in seconds for a KVM guest; Accelerator.scale stretches them.
BOOT_TIMEOUT = 15.0
SHUTDOWN_TIMEOUT = 5.0
QMP_TIMEOUT = 10.0
MIGRATION_TIMEOUT = 30.0


def kernel_timeout_factor(manifest: Manifest) -> float:
    """A kernel with the checkers runs about five times slower (KASAN, lockdep, ...)."""
    return CHECKERS_SLOWDOWN if manifest.has_checkers else 1.0


class VMError(RuntimeError):
    """The VM could not be started, reached or stopped as asked."""


@dataclass(frozen=True)
class VMOptions:
    flavour: str = DEFAULT_FLAVOUR
    accel: str = "auto"
    cpus: int = 2
    # 0: what the kernel flavour needs. The debug kernel gets 1 GiB: at 512 MiB
    # each kmemleak scan costs 1 s less (it walks every page), but the first
    # debug half took 392 CPU-s alone against 335 (KASAN, lockdep under pressure).
    memory_mib: int = 0
    devices: tuple[str, ...] = ("dmagate",)
    kernel_args: tuple[str, ...] = ()
    extra_qemu_args: tuple[str, ...] = ()
    name: str = "vm"
    # A second QMP monitor for people and their fault-injection scripts; the
    # harness keeps the first one to itself.
    user_qmp: bool = False
    # QEMU's gdb stub on 127.0.0.1 (dmagate.gdb); the guest boots with nokaslr.
    gdb: bool = False


@dataclass
class Timing:
    """Host seconds from QEMU's start to each milestone."""

    qmp: float = 0.0
    init_ready: float = 0.0
    ssh_ready: float = 0.0


class VM:
    def __init__(
        self,
        options: VMOptions | None = None,
        paths: BuildPaths | None = None,
        accelerator: Accelerator | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.options = options or VMOptions()
        self.paths = paths or BuildPaths.discover()
        self.image_dir = self.paths.image(self.options.flavour)
        self.manifest = Manifest.load(self.image_dir)
        if not self.paths.qemu.exists():
            raise VMError(f"no QEMU at {self.paths.qemu}: run `make qemu`")
        self.accel = accelerator or resolve_accelerator(self.options.accel, self.paths.qemu)
        debug = self.manifest.has_checkers
        self.kernel_factor = kernel_timeout_factor(self.manifest)
        self.paths.runs.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir or Path(
            tempfile.mkdtemp(prefix=f"{self.options.name}-", dir=self.paths.runs)
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        # unix socket paths are limited to 107 bytes; keep it short.
        self.qmp_socket = Path(tempfile.mkdtemp(prefix="dmagate-")) / "qmp.sock"
        self.gdb_port = gdb.free_port() if self.options.gdb else None
        self.spec = GuestSpec(
            qemu=self.paths.qemu,
            kernel=self.image_dir / self.manifest.extra.get("boot_kernel", "vmlinuz"),
            initrd=self.image_dir / "initramfs.cpio",
            firmware_dirs=tuple(Path(d) for d in self.manifest.firmware["dirs"].split(":")),
            bios=self.manifest.firmware["bios"],
            accel=self.accel.name,
            cpus=self.options.cpus,
            memory_mib=self.options.memory_mib or (1024 if debug else 512),
            kernel_args=(*(DEBUG_KERNEL_ARGS if debug else ()),
                         *(("nokaslr",) if self.options.gdb else ()),
                         *self.options.kernel_args),
            devices=self.options.devices,
            extra_args=(*self.options.extra_qemu_args,
                        *(gdb.qemu_args(self.gdb_port) if self.gdb_port else ())),
        )
        self.user_qmp_socket = (
            self.qmp_socket.with_name("user-qmp.sock") if self.options.user_qmp else None
        )
        self.argv = build_command(self.spec, self.qmp_socket, self.user_qmp_socket)
        self.timing = Timing()
        self._child: pexpect.spawn | None = None
        self._finalizer: weakref.finalize[[int], VM] | None = None
        self._console: Console | None = None
        self._qmp: QMP | None = None
        self._ssh: SSH | None = None
        self._started = 0.0
        self.ssh_port = 0
        self.qmp_log: Transcript | None = None
        self.ssh_log: Transcript | None = None
        self.boot_taint = 0
        # Set once the harness itself stopped QEMU: its exit is no finding.
        self.stopped = False

    # -- lifecycle -------------------------------------------------------------

    def start(self, wait: bool = True, restore: Path | None = None) -> VM:
        """Start QEMU, attach console and QMP; with ``wait``, also SSH.

        ``restore``: instead of booting, load a guest that ``save_snapshot``
        wrote from a VM of the same options (dmagate.snapshot); it runs on
        from where it was saved, SSH-ready.
        """
        if restore is not None:
            self.argv = [*self.argv, "-incoming", "defer"]
        (self.workdir / CMDLINE_FILE).write_text(shlex.join(self.argv) + "\n")
        self._started = time.monotonic()
        try:
            self._child = pexpect.spawn(
                self.argv[0],
                self.argv[1:],
                echo=False,
                preexec_fn=die_with_parent(),
                dimensions=(50, 200),
            )
        except pexpect.ExceptionPexpect as err:
            raise VMError(f"cannot start {self.argv[0]}: {err}") from err
        pid = self._child.pid
        self._finalizer = weakref.finalize(self, kill_group, pid)
        self._console = Console(self._child, self.workdir / "console.log", self._started)
        self.qmp_log = Transcript(self.workdir / "qmp.log", self._started)
        self.ssh_log = Transcript(self.workdir / "ssh.log", self._started)
        try:
            self._qmp = QMP(self.qmp_socket, self.qmp_log)
            try:
                self._qmp.connect(self.scale(QMP_TIMEOUT), alive=self.is_running)
            except (ConnectionError, TimeoutError) as err:
                time.sleep(0.2)  # let the console reader catch QEMU's last words
                raise VMError(f"{err}; QEMU said:\n{self.console.tail(15)}") from err
            self.timing.qmp = time.monotonic() - self._started
            if restore is not None:
                self._load(restore)
            self.ssh_port = self._discover_ssh_port()
            if wait:
                self.wait_ready(booted=restore is None)
        except BaseException:
            self.kill()
            raise
        return self

    def _discover_ssh_port(self) -> int:
        usernet = self.qmp.hmp("info usernet")
        port = ssh_forward_port(usernet)
        if port is None:
            raise VMError(f"no SSH forward in 'info usernet':\n{usernet}")
        return port

    def _load(self, snapshot: Path) -> None:
        """Load a saved guest into this (-incoming defer) QEMU and run it."""
        self.qmp.cmd("migrate-incoming", uri=f"file:{snapshot}")
        self._wait_migration("restoring from", snapshot)
        self.qmp.cmd("cont")

    def save_snapshot(self, dest: Path) -> None:
        """Write the running guest to ``dest`` (a migration stream), for
        ``start(restore=dest)``. The SSH session is closed first: a restored
        guest must not hold a connection its new QEMU never had. The guest
        stays paused; the VM is of no more use than to be shut down."""
        if self._ssh is not None:
            self._ssh.close()
            self._ssh = None
        self.qmp.cmd("stop")
        self.qmp.cmd("migrate", uri=f"file:{dest}")
        self._wait_migration("saving to", dest)

    def _wait_migration(self, what: str, path: Path) -> None:
        deadline = time.monotonic() + self.scale(MIGRATION_TIMEOUT)
        while True:
            info = self.qmp.cmd("query-migrate")
            status = info.get("status", "none")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise VMError(f"{what} {path}: migration {status}: {info.get('error-desc', '')}")
            if time.monotonic() > deadline:
                raise VMError(f"{what} {path}: migration still {status} after "
                              f"{self.scale(MIGRATION_TIMEOUT):.0f} s")
            time.sleep(0.02)

    def wait_ready(self, booted: bool = True) -> None:
        """Wait for init's ready line (after a boot), then for SSH; record both
        times."""
        timeout = self.scale(BOOT_TIMEOUT)
        if booted:
            try:
                self.console.wait_for(READY_LINE, timeout, start=0)
            except TimeoutError as err:
                raise VMError(f"guest did not finish booting: {err}") from err
        self.timing.init_ready = time.monotonic() - self._started
        assert self.ssh_log is not None
        self._ssh = SSH(
            self.ssh_port,
            self.image_dir / self.manifest.extra["client_key"],
            self.manifest.extra["host_key"],
            self.ssh_log,
        )
        self._ssh.connect(timeout)
        self.timing.ssh_ready = time.monotonic() - self._started
        self.boot_taint = self.taint()

    @property
    def pid(self) -> int:
        if self._child is None:
            raise VMError("VM not started")
        return int(self._child.pid)

    def is_running(self) -> bool:
        if self._child is None:
            return False
        if self._console is not None and not self._console.closed:
            # Its reader thread asks pexpect too (read_nonblocking reaps the
            # child when it ends): two threads in waitpid race, and the loser
            # gets ECHILD. The console closes only when QEMU is gone.
            return True
        return bool(self._child.isalive())

    def run_state(self) -> str:
        """QEMU's run state: "running", "paused", "guest-panicked", ..."""
        return str(self.qmp.cmd("query-status")["status"])

    def panicked(self) -> bool:
        """QEMU holds the guest where its kernel panicked (pvpanic), or cannot
        say: either way the guest is of no more use."""
        try:
            return self.is_running() and self.run_state() == "guest-panicked"
        except Exception:  # QMP gone with a QEMU on its way out
            return True

    def guest_running(self) -> bool:
        """The vCPUs run (QEMU has not paused the guest for a panic or gdb)."""
        return self.run_state() == "running"

    def shutdown(self) -> int | None:
        """Power off from inside the guest; escalate to QMP quit, then SIGKILL.

        Returns QEMU's exit status (None if it had to be killed).
        """
        if self._child is None:
            return None
        self.stopped = True
        timeout = self.scale(SHUTDOWN_TIMEOUT)
        asked = False
        with contextlib.suppress(Exception):
            # A paused guest (panicked, or held for gdb) would never answer.
            if self._ssh is not None and self.is_running() and self.guest_running():
                # The command cannot report back: the guest is gone at once.
                self._ssh.client.exec_command("poweroff -f")
                asked = True
        status = self._wait_exit(timeout if asked else 0.1)
        if status is None and self.is_running():
            with contextlib.suppress(Exception):
                self.qmp.cmd("quit")
            status = self._wait_exit(timeout)
        if status is None:
            self.kill()
        self._close_channels()
        return status

    def _wait_exit(self, timeout: float) -> int | None:
        assert self._child is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():  # reaps it and sets exitstatus
                return self._child.exitstatus  # type: ignore[no-any-return]
            time.sleep(0.05)
        return None

    def kill(self) -> None:
        """SIGKILL QEMU's whole process group and reap it."""
        self.stopped = True
        if self._child is not None:
            kill_group(self._child.pid)
            if self._console is not None:
                self._console.join(5.0)  # before close() reaps: see is_running
            with contextlib.suppress(Exception):
                self._child.close(force=True)
        if self._finalizer is not None:
            self._finalizer.detach()
        self._close_channels()

    def _close_channels(self) -> None:
        for closer in (self._ssh, self._qmp):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        self._ssh = None
        self._qmp = None
        if self._console is not None:
            self._console.join(2.0)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.qmp_socket.parent)

    def __enter__(self) -> VM:
        return self.start() if self._child is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.shutdown()
        else:
            self.kill()

    # -- channels --------------------------------------------------------------

    @property
    def console(self) -> Console:
        if self._console is None:
            raise VMError("VM not started")
        return self._console

    @property
    def qmp(self) -> QMP:
        if self._qmp is None:
            raise VMError("QMP not connected")
        return self._qmp

    @property
    def ssh(self) -> SSH:
        if self._ssh is None:
            raise VMError("SSH not connected (start with wait=True or call wait_ready)")
        return self._ssh

    def scale(self, seconds: float) -> float:
        """A timeout written for KVM and a stock kernel, stretched for this VM."""
        return self.accel.scale(seconds) * self.kernel_factor

    def run(self, command: str, timeout: float = 30.0, check: bool = False,
            own_shell: bool = True) -> CommandResult:
        """Run a shell command in the guest; the timeout scales with the
        accelerator. ``own_shell``: see SSH.run."""
        return self.ssh.run(command, timeout=self.scale(timeout), check=check,
                            own_shell=own_shell)

    # -- kernel health ---------------------------------------------------------

    def console_caught_up(self, timeout: float = 10.0, then: str = "") -> str:
        """Wait until the console holds everything the guest kernel printed
        so far: an SSH command can return before the kernel's messages about
        it have left the UART. A line written to the kernel log now comes out
        after them. ``timeout`` is scaled for the VM.

        ``then`` runs in the same SSH command, after that line; its output
        is returned. Both run in the SSH shell itself (SSH.run, own_shell):
        the ``sh -c`` would cost the debug guest ~30 ms more CPU."""
        token = f"dmagate-console-sync-{secrets.token_hex(4)}"
        start = self.console.mark()
        run = self.run(f"echo {token} > /dev/kmsg" + (f" && {then}" if then else ""),
                       check=True, own_shell=False)
        try:
            self.console.wait_for(re.escape(token), self.scale(timeout), start)
        except ConsoleTimeout as err:
            err.output = run.stdout
            raise
        return run.stdout

    def splats(self, since: int = 0, until: int | None = None) -> list[splat_parser.Splat]:
        """Kernel reports printed on the console since a ``console.mark()``
        (and before another)."""
        return splat_parser.find_splats(self.console.since(since)[:None if until is None
                                                                  else until - since])

    def taint(self) -> int:
        return int(self.run(TAINT_COMMAND, check=True, own_shell=False).stdout.strip())

    def describe(self) -> str:
        return (
            f"{self.options.name}: pid {self.pid}, {self.accel.name}, kernel "
            f"{self.manifest.kernel_release}, ssh 127.0.0.1:{self.ssh_port}, "
            f"qmp {self.qmp_socket}"
        )
