"""The debug kernel's checkers are really on, and the harness names what
they report (KERNEL=debug only)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dmagate.faultinject import fail_allocations
from dmagate.pytest_plugin import Bench
from dmagate.vm import VM

pytestmark = pytest.mark.debug_kernel

TRIGGER = "/sys/kernel/debug/dmagate_splat_test/trigger"


def trigger(vm: VM, what: str) -> None:
    vm.run("test -e /sys/module/dmagate_splat_test || insmod /lib/modules/dmagate_splat_test.ko",
           check=True)
    vm.run(f"echo {what} > {TRIGGER}", check=True)


@pytest.mark.expect_splat(r"^KASAN: slab-use-after-free Read in splat_test_uaf$")
def test_use_after_free(vm: VM) -> None:
    trigger(vm, "uaf")


@pytest.mark.expect_splat(r"^possible deadlock in splat_test_lock_inversion$")
def test_lock_order_inversion(make_vm: Callable[..., VM]) -> None:
    trigger(make_vm(), "lock")  # lockdep reports once per boot: a VM of its own


@pytest.mark.expect_splat(
    r"^BUG: sleeping function called from invalid context in splat_test_atomic_sleep$"
)
def test_sleep_in_atomic_context(vm: VM) -> None:
    trigger(vm, "sleep")


@pytest.mark.expect_splat(r"^DMA-API: device driver frees DMA memory with different size")
def test_dma_api_misuse(vm: VM) -> None:
    trigger(vm, "dma")


@pytest.mark.expect_splat(r"^memory leak in splat_test_leak$")
def test_leak(vm: VM) -> None:
    trigger(vm, "leak")


def test_fault_injection_hits_one_module(vm: VM) -> None:
    trigger(vm, "alloc")  # loads the module; works without injection
    command = f"sh -c 'echo alloc > {TRIGGER}'"
    failed = fail_allocations(vm, command, module="dmagate_splat_test")
    assert failed.command.status != 0
    assert "Cannot allocate memory" in failed.command.stderr
    assert failed.injected >= 1
    # The budget holds: one failure at most, whichever allocation it hits.
    assert fail_allocations(vm, command, module="dmagate_splat_test", times=1).injected == 1
    # Outside the command, and outside the module, nothing fails.
    vm.run(f"echo alloc > {TRIGGER}", check=True)
    unrelated = fail_allocations(vm, "ls /", module="dmagate_splat_test")
    assert unrelated.command.status == 0 and unrelated.injected == 0


def test_fault_injection_of_page_allocations(vm: VM) -> None:
    trigger(vm, "page")
    result = fail_allocations(vm, f"sh -c 'echo page > {TRIGGER}'", kind="page",
                              module="dmagate_splat_test")
    assert result.command.status != 0
    assert "Cannot allocate memory" in result.command.stderr
    assert result.injected >= 1


def test_a_leak_fails_its_module_at_the_end(dmagate_bench: Bench, tmp_path: Path) -> None:
    """The once-per-module kmemleak scan really fails the module."""
    holder = Path(__file__).parent / "holders" / "leak_in_module.py"
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(holder),
         "--kernel", dmagate_bench.flavour, "--accel", dmagate_bench.accelerator.name,
         "--basetemp", str(tmp_path / "child")],
        cwd=dmagate_bench.paths.root, capture_output=True, text=True, timeout=900,
        check=False,
    )
    out = child.stdout + child.stderr
    assert child.returncode != 0, out
    assert "1 passed, 1 error" in out, out
    assert "kmemleak, at the end of leak_in_module" in out, out
    assert "memory leak in splat_test_leak" in out, out
