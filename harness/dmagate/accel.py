"""Choosing the accelerator: KVM only where it really runs a guest.

Opening /dev/kvm and creating a VM can succeed on hosts where every guest
then dies (nested virtualisation without the right support), so the probe
boots a 64 KiB firmware that writes one byte to the serial port and halts.
"""

from __future__ import annotations

import os
import select
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROBE_BYTE = b"K"
# Real-mode code at the reset vector (F000:FFF0):
#   mov dx, 0x3f8 ; mov al, 'K' ; out dx, al ; hlt ; jmp $-1
_RESET_CODE = b"\xba\xf8\x03\xb0" + PROBE_BYTE + b"\xee\xf4\xeb\xfd"
_BIOS_SIZE = 64 * 1024
_RESET_OFFSET = _BIOS_SIZE - 16


@dataclass(frozen=True)
class Accelerator:
    """An accelerator and how much slower than KVM guests run on it."""

    name: str  # "kvm" or "tcg"
    timeout_factor: float
    reason: str = ""

    def scale(self, seconds: float) -> float:
        """A timeout tuned for KVM, stretched for this accelerator.

        $DMAGATE_TIMEOUT_FACTOR stretches it further (loaded CI hosts).
        """
        extra = float(os.environ.get("DMAGATE_TIMEOUT_FACTOR", "1"))
        return seconds * self.timeout_factor * extra


KVM = Accelerator("kvm", 1.0)
TCG = Accelerator("tcg", 6.0)


def probe_firmware() -> bytes:
    image = bytearray(b"\xf4" * _BIOS_SIZE)
    image[_RESET_OFFSET : _RESET_OFFSET + len(_RESET_CODE)] = _RESET_CODE
    return bytes(image)


def kvm_runs_guests(qemu: Path, timeout: float = 5.0) -> tuple[bool, str]:
    """Boot the probe firmware under KVM; True if its byte reaches the console."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="dmagate-kvm-probe-") as tmp:
        bios = Path(tmp) / "probe.bin"
        bios.write_bytes(probe_firmware())
        proc = subprocess.Popen(
            [str(qemu), "-M", "q35", "-accel", "kvm", "-cpu", "host", "-nodefaults",
             "-display", "none", "-no-reboot", "-bios", str(bios), "-serial", "stdio"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        output = b""
        deadline = time.monotonic() + timeout
        try:
            while PROBE_BYTE not in output and time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 0.1)
                if ready:
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    output += chunk
        finally:
            proc.kill()
            proc.wait()
    if PROBE_BYTE in output:
        return True, "KVM ran the probe guest"
    detail = output.decode(errors="replace").strip().splitlines()
    return False, "KVM did not run the probe guest" + (f": {detail[0]}" if detail else "")


def resolve_accelerator(choice: str, qemu: Path) -> Accelerator:
    """Map "auto", "kvm" or "tcg" to the accelerator to use, saying why."""
    if choice == "tcg":
        return Accelerator(TCG.name, TCG.timeout_factor, "TCG requested")
    if choice not in ("auto", "kvm"):
        raise ValueError(f"unknown accelerator {choice!r}: use auto, kvm or tcg")
    works, why = kvm_runs_guests(qemu)
    if works:
        return Accelerator(KVM.name, KVM.timeout_factor, why)
    if choice == "kvm":
        raise RuntimeError(f"KVM requested but unusable: {why}")
    return Accelerator(TCG.name, TCG.timeout_factor, f"{why}; using TCG")
