"""How `dmagate ssh|qmp|fault` find the VM `dmagate boot` runs: one session
file per kernel flavour, so that suites running side by side (make test)
each reach their own VM."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dmagate.paths import BuildPaths
from dmagate.session import Session, load_session, session_path


def _paths(tmp_path: Path) -> BuildPaths:
    paths = BuildPaths(root=tmp_path)
    paths.runs.mkdir(parents=True)
    return paths


def _session(pid: int, flavour: str, port: int) -> Session:
    return Session(pid, flavour, port, f"/run/{flavour}.qmp", "/tmp/w")


def test_each_flavour_finds_its_own_vm(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    for port, flavour in enumerate(("6.12", "6.1", "debug"), start=2200):
        _session(os.getpid(), flavour, port).save(paths)
    assert session_path(paths, "6.1") != session_path(paths, "6.12")
    assert load_session(paths, "6.1").ssh_port == 2201
    assert load_session(paths, "debug").ssh_port == 2202


def test_the_only_running_vm_serves_any_flavour(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    _session(os.getpid(), "debug", 2222).save(paths)
    assert load_session(paths, "6.12").flavour == "debug"


def test_several_running_vms_ask_for_a_choice(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    _session(os.getpid(), "6.1", 2201).save(paths)
    _session(os.getpid(), "debug", 2202).save(paths)
    with pytest.raises(SystemExit,
                       match=r"kernels 6\.1, debug are running: pick one with --kernel"):
        load_session(paths, "6.12")


def test_a_dead_vms_session_is_not_used(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    child = subprocess.Popen(["true"])
    child.wait()
    _session(child.pid, "6.12", 2200).save(paths)
    with pytest.raises(SystemExit, match="no VM is running"):
        load_session(paths, "6.12")
