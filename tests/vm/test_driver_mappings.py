"""How the driver maps a buffer back, and its benchmark switch
(docs/driver.md, "Mappings" and "Benchmark switch"): PMD entries for whole
2 MiB where the kernel maps PFNs that way, a buffer split over many VMAs or
shared with forked children, mprotect on top of the protocol, and the
switch that turns revocation off (off unless a benchmark sets it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dmagate.devicefaults import device_faults
from dmagate.guesttool import EXIT_MISMATCH, EXIT_OK, dmagatectl, driver_param
from dmagate.vm import VM

UNSAFE_SWITCH = "/sys/kernel/debug/dmagate/unsafe_no_revoke"
WINDOW_NS = 300_000_000
PMD_PAGES = 512


@pytest.fixture
def unsafe(vm: VM) -> Iterator[VM]:
    vm.run(f"echo 1 > {UNSAFE_SWITCH}", check=True)
    try:
        yield vm
    finally:
        vm.run(f"echo 0 > {UNSAFE_SWITCH}", check=True)


def test_revocation_is_on_unless_the_unsafe_switch_is_set(vm: VM) -> None:
    assert vm.run(f"cat {UNSAFE_SWITCH}", check=True).stdout.strip() == "N"
    touch = "touch fill --touch read --at 0x40000 -s 1M -o 0x40000 -l 0x40000"
    with device_faults(vm, **{"fault-extra-delay-ns": WINDOW_NS}):
        revoked = dmagatectl(vm, touch)
        vm.run(f"echo 1 > {UNSAFE_SWITCH}", check=True)
        try:
            unprotected = dmagatectl(vm, touch)
        finally:
            vm.run(f"echo 0 > {UNSAFE_SWITCH}", check=True)
    assert revoked.status == EXIT_OK and revoked["signal"] == "SIGBUS", revoked.describe()
    # The program read a page the device was writing, and nothing stopped it.
    assert unprotected.status == EXIT_MISMATCH, unprotected.describe()
    assert unprotected["signal"] == "none" and unprotected["verified"] == "yes"
    dmesg = vm.run("dmesg | grep dmagate", check=True).stdout
    assert "unsafe_no_revoke: programs keep their pages during DMA" in dmesg, dmesg


@pytest.fixture
def faulting(vm: VM) -> Iterator[VM]:
    """Pages come back by faults only: read() and WAIT map nothing."""
    with driver_param(vm, "map_on_wait", "N"):
        yield vm


def test_a_64m_regrant_takes_32_faults_and_pmd_entries_where_the_kernel_can(
        faulting: VM) -> None:
    vm = faulting
    run = dmagatectl(vm, "cycle -s 64M -n 3 --verify")
    assert run.status == EXIT_OK, run.describe()
    assert run["kernel_parts"] == "yes" and run["bad"] == "0", run.describe()
    chunks = (64 << 20) // (PMD_PAGES * 4096)
    assert int(run["faults"]) == chunks, run.describe()
    assert int(run["pmds"]) == (chunks if vm.manifest.maps_pfns_with_pmds else 0), run.describe()


@pytest.mark.parametrize(("layout", "faults"), [("--vmas 16", 16), ("--children 4", 2)])
def test_revocation_covers_split_and_inherited_mappings(faulting: VM, layout: str,
                                                         faults: int) -> None:
    # 4 MiB: two 2 MiB runs in one VMA, or 16 VMAs that each fault alone.
    run = dmagatectl(faulting, f"cycle -s 4M -n 3 --verify {layout}")
    assert run.status == EXIT_OK, run.describe()
    assert run["bad"] == "0" and run["errors"] == "0"
    assert int(run["faults"]) == faults, run.describe()


@pytest.mark.parametrize("layout", ["", "--vmas 16"])
def test_the_read_maps_the_range_back_into_the_readers_mappings(vm: VM, layout: str) -> None:
    # 1 MiB (64 KiB chunks, PTEs): after the read, touching it all faults never.
    run = dmagatectl(vm, f"cycle -s 1M -n 3 --verify {layout}".rstrip())
    assert run.status == EXIT_OK, run.describe()
    assert run["bad"] == "0" and run["errors"] == "0"
    assert run["faults"] == "0" and int(run["wait_map_ns"]) > 0, run.describe()


@pytest.mark.pmd_pfnmap
def test_stretches_one_pmd_maps_are_left_to_fault(vm: VM) -> None:
    # 4 MiB in one mapping: two whole 2 MiB stretches, one PMD fault each.
    run = dmagatectl(vm, "cycle -s 4M -n 3 --verify")
    assert run.status == EXIT_OK, run.describe()
    assert run["faults"] == "2" and run["pmds"] == "2", run.describe()
    # 16 VMAs of 256 KiB: no stretch a PMD can map, so the read maps them all.
    split = dmagatectl(vm, "cycle -s 4M -n 3 --verify --vmas 16")
    assert split.status == EXIT_OK, split.describe()
    assert split["faults"] == "0", split.describe()


def test_mprotect_around_transfers_works_with_the_switch(unsafe: VM) -> None:
    run = dmagatectl(unsafe, "cycle -s 4M -n 3 --verify --protect mprotect")
    assert run.status == EXIT_OK, run.describe()
    assert run["bad"] == "0" and int(run["protect_ns"]) > 0
    # No revocation: nothing to fault back in.
    assert run["faults"] == "0" and run["zap_ns"] == "0", run.describe()
