"""Thousands of revoke/re-grant cycles against a toucher thread and a forked
toucher child: every touch gets the device's data or SIGBUS, nothing else."""

from __future__ import annotations

from dmagate.guesttool import EXIT_OK, dmagatectl
from dmagate.vm import VM

CYCLES = 2000


def test_cycles_against_concurrent_touchers(vm: VM) -> None:
    run = dmagatectl(vm, f"stress -s 256K -n {CYCLES}", timeout=600)
    assert run.status == EXIT_OK, run.describe()
    assert run["cycles"] == str(CYCLES)
    assert (run["errors"], run["unexpected"]) == ("0", "0")
    # The touchers really raced the device, from both places.
    for key in ("thread_reads", "thread_sigbus", "child_reads", "child_sigbus"):
        assert int(run[key]) > 0, run.describe()


def test_cycle_loop_verifies_every_transfer(vm: VM) -> None:
    run = dmagatectl(vm, "cycle -s 4M -n 20 --verify", timeout=300)
    assert run.status == EXIT_OK, run.describe()
    assert (run["cycles"], run["errors"], run["bad"]) == ("20", "0", "0")
