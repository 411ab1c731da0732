"""`dmagate fault list|set|clear|show|wait` (dmagate.faultcli over
dmagate.faultctl) against a real QEMU's second QMP socket, as a script
author runs it with --qmp; the device's side read back over the harness's
own QMP."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dmagate.devdriver import Dmagate
from dmagate.hwregs import HW
from dmagate.qtest import QTestMachine

from .conftest import CQ, DATA, RING, SG, SLOT, SQ

PATH = "/machine/peripheral/dg"


@dataclass
class Bench:
    dev: Dmagate
    socket: Path

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dmagate.cli", "fault", "--qmp",
                               str(self.socket), *args], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def background(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "dmagate.cli", "fault", "--qmp",
                                 str(self.socket), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def get(self, prop: str) -> Any:
        return self.dev.qt.qmp.cmd("qom-get", path=PATH, property=prop)


@pytest.fixture
def bench(make_machine: Callable[..., QTestMachine]) -> Iterator[Bench]:
    with tempfile.TemporaryDirectory(prefix="dmagate-cli-") as scratch:
        socket = Path(scratch) / "scripts.sock"
        machine = make_machine("zero-delay=on",
                               extra=("-qmp", f"unix:{socket},server=on,wait=off"))
        dev = Dmagate(machine, SLOT)
        dev.setup(SQ, RING, CQ, RING, SG)
        yield Bench(dev, socket)


def test_list_names_every_fault_the_device_has(bench: Bench) -> None:
    run = bench.cli("list")
    assert run.returncode == 0, run.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in run.stdout.splitlines()}
    assert rows["dma-error"] == ["count", "rules"]
    assert rows["late-write"] == ["count", "rules"]
    assert rows["spurious-irq"][0] == "count" and "rules" not in rows["spurious-irq"]
    for mode in ("ignore-reset", "dead", "irq-storm", "extra-delay"):
        assert rows[mode][0] == "mode", mode
    assert rows["late-write-delay-ns"][0] == "delay"


def test_set_counts_modes_and_rules(bench: Bench) -> None:
    for args in (("partial", "3"), ("corrupt", "always"), ("stall",), ("ignore-reset", "soft"),
                 ("dead",), ("irq-storm", "50000"), ("late-write-delay-ns", "7000"),
                 ("dma-error:op=fill:every=2",), ("corrupt:probability=0.5:seed=3",)):
        run = bench.cli("set", *args)
        assert run.returncode == 0, (args, run.stdout, run.stderr)
    assert (bench.get("fault-partial"), bench.get("fault-corrupt"), bench.get("fault-stall")) \
        == (3, 0xFFFFFFFF, 1)
    assert (bench.get("fault-ignore-reset"), bench.get("fault-dead")) == ("soft", True)
    assert (bench.get("fault-irq-storm-ns"), bench.get("fault-late-write-delay-ns")) \
        == (50000, 7000)
    assert bench.get("fault-rules") == ("dma-error:op=fill:skip=0:every=2;"
                                        "corrupt:skip=0:probability=0.5:seed=3")
    shown = json.loads(bench.cli("show", "--json").stdout)
    assert shown["armed"]["partial"] == 3 and shown["armed"]["dead"] is True
    assert [r["fault"] for r in shown["rules"]] == ["dma-error", "corrupt"]


def test_bad_names_and_values_name_the_problem(bench: Bench) -> None:
    run = bench.cli("set", "nope")
    assert run.returncode == 2 and "no fault 'nope'" in run.stdout and "late-write" in run.stdout
    run = bench.cli("set", "irq-storm", "5")
    assert run.returncode == 2 and "out of range" in run.stdout
    run = bench.cli("set", "stall:every=0")
    assert run.returncode == 2 and "at least 1" in run.stdout
    assert bench.get("fault-rules") == ""
    run = bench.cli("--device", "dg9", "show")
    assert run.returncode == 2 and "no dmagate device 'dg9'" in run.stdout


def test_clear_one_fault_or_all(bench: Bench) -> None:
    for args in (("partial", "2"), ("dma-error:every=3",), ("partial:times=1",), ("dead",)):
        assert bench.cli("set", *args).returncode == 0
    assert bench.cli("clear", "partial").returncode == 0
    assert bench.get("fault-partial") == 0
    assert bench.get("fault-rules") == "dma-error:skip=0:every=3"
    assert bench.get("fault-dead") is True
    assert bench.cli("clear").returncode == 0
    assert (bench.get("fault-rules"), bench.get("fault-dead")) == ("", False)


def test_wait_sees_the_event_of_a_fault_that_fires(bench: Bench) -> None:
    assert bench.cli("set", "dma-error:op=fill:every=2").returncode == 0
    waiter = bench.background("wait", "dma-error", "--timeout", "20")
    try:
        assert waiter.stdout is not None
        assert "listening" in waiter.stdout.readline()
        for _ in range(2):
            bench.dev.submit(HW["OP_FILL"], [(DATA, 4096)])
            bench.dev.wait()
        out, _ = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, out
    event = json.loads(out.splitlines()[-1])
    assert (event["fault"], event["sq_index"], event["rule"], event["path"]) == (
        "dma-error", 1, 0, PATH), "not the second FILL's"


def test_wait_times_out_with_status_1(bench: Bench) -> None:
    run = bench.cli("wait", "--timeout", "0.5")
    assert run.returncode == 1 and "0 of 1 fault events" in run.stdout
