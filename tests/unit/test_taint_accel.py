from __future__ import annotations

import pytest

from dmagate import taint
from dmagate.accel import KVM, TCG, probe_firmware


def test_taint_letters() -> None:
    assert taint.letters(0) == ""
    assert taint.letters(12288) == "OE"  # what loading the project's modules sets
    assert taint.letters((1 << 9) | (1 << 12)) == "WO"
    assert taint.letters(1 << 30) == "#30"


def test_new_taint_ignores_only_module_bits_and_old_bits() -> None:
    warn = 1 << 9
    assert taint.new_taint(0, taint.OOT_MODULE | taint.UNSIGNED_MODULE) == 0
    assert taint.new_taint(0, warn | taint.OOT_MODULE) == warn
    assert taint.new_taint(warn, warn) == 0
    assert taint.new_taint(0, 1 << 7) == 1 << 7  # D: died (oops)


def test_probe_firmware_has_reset_vector_code() -> None:
    image = probe_firmware()
    assert len(image) == 64 * 1024
    # F000:FFF0 is the last 16 bytes: mov dx,0x3f8; mov al,'K'; out dx,al; hlt
    assert image[-16:-16 + 7] == b"\xba\xf8\x03\xb0K\xee\xf4"


def test_timeouts_scale_with_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DMAGATE_TIMEOUT_FACTOR", raising=False)
    assert KVM.scale(10) == 10
    assert TCG.scale(10) == 60
    monkeypatch.setenv("DMAGATE_TIMEOUT_FACTOR", "2")
    assert TCG.scale(10) == 120
