#!/usr/bin/env python3
"""Fail every 10th FILL with a DMA error while a workload runs, and check
that the driver reported exactly those transfers as failed and recovered.

    dmagate boot                       # prints "QMP for scripts: SOCKET"
    python3 examples/fail_every_10th_fill.py SOCKET
"""

from __future__ import annotations

import asyncio
from typing import Any

from example_support import (
    arguments,
    connect,
    dmagate_device,
    fail,
    guest,
    kernel_clean,
    qom_get,
    qom_set,
)

TRANSFERS = 30
EVERY = 10
# dmagatectl's exit status for a transfer that completed with an error
XFER_ERROR = 4


async def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    qmp = await connect("fail-every-10th-fill", args.qmp)
    device = await dmagate_device(qmp)
    with qmp.listener("DMAGATE_FAULT") as faults:
        await qom_set(qmp, device, "fault-rules", f"dma-error:op=fill:every={EVERY}")
        # A CHECKSUM between FILLs: the rule's op filter must let it pass.
        workload = (f"for i in $(seq {TRANSFERS}); do "
                    "dmagatectl xfer fill -s 64K >/dev/null; echo fill=$?; "
                    "dmagatectl xfer checksum -s 4K >/dev/null; echo checksum=$?; done")
        run = await guest(args.dmagate, workload)
        status = await qom_get(qmp, device, "fault-rule-status")
        await qom_set(qmp, device, "fault-rules", "")
        events: list[Any] = faults.clear()  # all in: QEMU sent them before its reply
    fills = [int(line.split("=")[1]) for line in run.stdout.split() if line.startswith("fill=")]
    checksums = [line for line in run.stdout.split() if line.startswith("checksum=")]
    failed = [i + 1 for i, code in enumerate(fills) if code]
    print(f"{len(fills)} FILLs, failed: {failed}; rule status: {status}")
    print(f"{len(events)} DMAGATE_FAULT events: "
          f"{[(e['data']['fault'], e['data'].get('sq-index')) for e in events]}")
    if len(fills) != TRANSFERS:
        fail(f"the workload ran {len(fills)} FILLs:\n{run.stdout}{run.stderr}")
    if failed != list(range(EVERY, TRANSFERS + 1, EVERY)):
        fail(f"expected FILLs {list(range(EVERY, TRANSFERS + 1, EVERY))} to fail")
    if {fills[i - 1] for i in failed} != {XFER_ERROR}:
        fail("a failed FILL was not reported as a transfer error")
    if any(c != "checksum=0" for c in checksums):
        fail("a CHECKSUM failed: the op filter did not hold")
    if len(events) != TRANSFERS // EVERY or any(e["data"]["rule"] != 0 for e in events):
        fail("not one event per injected error")
    after = await guest(args.dmagate, "dmagatectl xfer fill -s 1M -n 5")
    if after.returncode:
        fail(f"the driver did not recover:\n{after.stdout}{after.stderr}")
    await kernel_clean(args.dmagate)
    await qmp.disconnect()
    print("OK: every 10th FILL failed with an error the program saw; the driver recovered")


if __name__ == "__main__":
    asyncio.run(main())
