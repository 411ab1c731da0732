"""The device's data rate: FILL, CHECKSUM and TRANSFORM of 64 MiB in
zero-delay mode, over qtest (no guest OS), next to what the host does with
the same bytes in the same run: a memcpy for FILL and TRANSFORM, zlib's
CRC-32 for CHECKSUM."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from dmagate.devdriver import Dmagate
from dmagate.hwregs import HW
from dmagate.paths import BuildPaths
from dmagate.qtest import QTestMachine

SIZE = 64 << 20
DATA_AT = 0x1000000  # guest-physical, above the rings and SG list
# What the host does with the same bytes, per operation.
HOST_BASELINES = {"FILL": "memcpy", "CHECKSUM": "crc32", "TRANSFORM": "memcpy"}


@dataclass(frozen=True)
class DeviceRate:
    op: str
    device_MBps: float
    baseline: str  # memcpy or crc32
    host_MBps: float
    runs: int

    @property
    def ratio(self) -> float:
        """The device's rate as a fraction of the host's."""
        return self.device_MBps / self.host_MBps

    def as_result(self) -> dict[str, object]:
        return {**asdict(self), "ratio": self.ratio}


def _median_rate(runs: int, once: Callable[[int], None]) -> float:
    rates = []
    for i in range(runs):
        started = time.perf_counter()
        once(i)
        rates.append(SIZE / (time.perf_counter() - started) / 1e6)
    return statistics.median(rates)


def host_rates(runs: int) -> dict[str, float]:
    """MB/s of a 64 MiB memcpy and a 64 MiB CRC-32 on this host."""
    source = bytearray(os.urandom(SIZE))
    target = bytearray(SIZE)
    target[:] = source  # touched once, so the timed copies fault no pages

    def copy(_: int) -> None:
        target[:] = source

    def crc(_: int) -> None:
        zlib.crc32(source)

    return {"memcpy": _median_rate(runs, copy), "crc32": _median_rate(runs, crc)}


def measure_device(paths: BuildPaths, runs: int) -> list[DeviceRate]:
    """Each operation over 64 MiB, ``runs`` times, doorbell to completion."""
    host = host_rates(runs)
    results = []
    with tempfile.TemporaryDirectory(dir=paths.build) as tmp, QTestMachine(
        paths.qemu, ["-device", "dmagate,id=dg,addr=4,zero-delay=on"], Path(tmp),
        memory_mib=256,
    ) as machine:
        dev = Dmagate(machine, 4)
        dev.setup(0x100000, 64, 0x110000, 64, 0x120000)
        for op, baseline in HOST_BASELINES.items():
            def once(seed: int, op: str = op) -> None:
                dev.submit(HW[f"OP_{op}"], [(DATA_AT, SIZE)], param=seed + 1)
                (done,) = dev.wait()
                if done.status != HW["ST_OK"]:
                    raise RuntimeError(f"{op} of 64 MiB failed with status {done.status}")

            once(0)  # the first pass maps the guest's RAM in the host
            results.append(DeviceRate(op, _median_rate(runs, once), baseline, host[baseline],
                                      runs))
    return results
