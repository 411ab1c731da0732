"""What a failed VM test leaves behind, in
build/test-artifacts/<flavour>/<test>/: each VM's console log from the
test's start, its QEMU command line, the QMP and SSH transcripts, and one
line that runs the test again alone. One folder per kernel flavour, since
make test runs the flavours' suites side by side."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from dmagate.flavours import image_dir_name
from dmagate.vm import CMDLINE_FILE, VM

REPRO_FILE = "repro.txt"


def artifact_name(nodeid: str) -> str:
    """The directory name of the test ``nodeid``'s artifacts."""
    return re.sub(r"[^\w.-]+", "_", nodeid).strip("_")


def artifact_path(root: Path, flavour: str, nodeid: str) -> Path:
    """Where the artifacts of the test ``nodeid`` on ``flavour`` go."""
    return root / image_dir_name(flavour).removeprefix("image-") / artifact_name(nodeid)


def artifact_dir(root: Path, flavour: str, nodeid: str) -> Path:
    """An empty directory for the test ``nodeid`` on ``flavour`` under ``root``."""
    directory = artifact_path(root, flavour, nodeid)
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
