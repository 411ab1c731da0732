"""The splat parser on whole console logs captured from this bench's guests
(tests/unit/fixtures/console-*.txt, raw serial output, shell prompts and
all): each deliberate breakage is found once, with a title naming the
function that broke; clean boots give nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmagate.splat import find_splats

FIXTURES = Path(__file__).parent / "fixtures"


def log(name: str) -> str:
    return (FIXTURES / f"console-{name}.txt").read_text()


@pytest.mark.parametrize("flavour", ["6.12", "6.1"])
def test_clean_boot_has_no_splats(flavour: str) -> None:
    assert find_splats(log(f"{flavour}-clean-boot")) == []


@pytest.mark.parametrize("flavour", ["6.12", "7.3"])
def test_warning_from_test_module(flavour: str) -> None:
    """7.x prints "WARNING: file:line at func+off/size [module], CPU#n: comm/pid"."""
    (splat,) = find_splats(log(f"{flavour}-warn"))
    assert splat.kind == "WARNING"
    assert splat.title == "WARNING in splat_test_warn"
    assert "deliberate warning" in splat.report
    assert "---[ end trace" in splat.report


def test_bug_from_test_module() -> None:
    splats = find_splats(log("6.12-bug"))
    assert splats, "BUG() not reported"
    assert splats[0].kind == "BUG"
    assert "splat_test_bug" in splats[0].title
    assert "kernel BUG at" in splats[0].report


def test_null_dereference_from_test_module() -> None:
    splats = find_splats(log("6.12-null"))
    assert splats, "NULL dereference not reported"
    assert "NULL pointer dereference" in splats[0].title
    assert "splat_test_null" in splats[0].title


def test_panic() -> None:
    splats = find_splats(log("6.12-panic"))
    assert [s.kind for s in splats] == ["PANIC"]
    assert splats[0].title == "kernel panic: sysrq triggered crash"


def test_report_line_points_at_header() -> None:
    text = log("6.12-warn")
    (splat,) = find_splats(text)
    assert "WARNING:" in text.splitlines()[splat.line]


def test_panic_report_includes_its_stack() -> None:
    (splat,) = find_splats(log("6.12-panic"))
    assert "panic+0x" in splat.report
    assert splat.report.splitlines()[-1].startswith("Kernel Offset:")


def test_debug_kernel_checkers_each_reported_once() -> None:
    """KASAN, DEBUG_ATOMIC_SLEEP and DMA-API debug on the debug kernel,
    provoked by the test-only module; the boot before them is clean."""
    splats = find_splats(log("debug-checkers"))
    assert [(s.kind, s.title) for s in splats] == [
        ("KASAN", "KASAN: slab-use-after-free Read in splat_test_uaf"),
        ("ATOMIC_SLEEP",
         "BUG: sleeping function called from invalid context in splat_test_atomic_sleep"),
        ("DMA_API",
         "DMA-API: device driver frees DMA memory with different size in splat_test_dma_misuse"),
    ]
    assert "Read of size 1" in splats[0].report


def test_debug_kernel_lockdep() -> None:
    (splat,) = find_splats(log("debug-lockdep"))
    assert splat.kind == "LOCKDEP"
    assert splat.title == "possible deadlock in splat_test_lock_inversion"
    assert "splat_lock_a" in splat.report and "splat_lock_b" in splat.report
