"""What a failed VM test leaves behind, in build/test-artifacts/<test>/:
each VM's console log from the test's start, its QEMU command line, the QMP
and SSH transcripts, and one line that runs the test again alone."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from dmagate.vm import CMDLINE_FILE, VM

REPRO_FILE = "repro.txt"


def artifact_name(nodeid: str) -> str:
    """The directory name of the test ``nodeid``'s artifacts."""
    return re.sub(r"[^\w.-]+", "_", nodeid).strip("_")


def artifact_dir(root: Path, nodeid: str) -> Path:
    """An empty directory for the test ``nodeid`` under ``root``."""
    directory = root / artifact_name(nodeid)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def repro_command(repo: Path, nodeid: str, flavour: str, python: str) -> str:
    """One line that runs one test alone, as the suite ran it."""
    return (shlex.join(["cd", str(repo)]) + " && "
            + shlex.join([python, "-m", "pytest", nodeid, "--kernel", flavour]))


def save_vm(vm: VM, console_log: str, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "console.log").write_text(console_log)
    for path in (vm.workdir / CMDLINE_FILE,
                 *(t.path for t in (vm.qmp_log, vm.ssh_log) if t is not None)):
        if path.exists():
            shutil.copyfile(path, directory / path.name)
