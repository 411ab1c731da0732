#!/usr/bin/env python3
"""Late write: the device writes a transfer's pages again after it has
completed it, when the driver has given them back to the program. Show
the program seeing its data change under it (a DMA after completion).

    dmagate boot                       # prints "QMP for scripts: SOCKET"
    python3 examples/late_write.py SOCKET

The driver cannot stop this with one DMA mapping per buffer (its default,
dma_map=session); with dma_map=transfer behind an IOMMU in strict mode the
pages are unmapped at completion and the write is refused
(tests/vm/test_rogue_device.py shows both).
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

DELAY_NS = 200_000_000
RECHECK_MS = 600


async def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    qmp = await connect("late-write", args.qmp)
    device = await dmagate_device(qmp)
    with qmp.listener("DMAGATE_FAULT") as faults:
        await qom_set(qmp, device, "fault-late-write-delay-ns", DELAY_NS)
        await qom_set(qmp, device, "fault-rules", "late-write:op=transform:times=1")
        # A TRANSFORM XORs in place: done again, it undoes itself.
        run = await guest(args.dmagate, f"dmagatectl xfer transform -s 64K "
                                        f"--recheck {RECHECK_MS}; echo xfer=$?")
        (status,) = await qom_get(qmp, device, "fault-rule-status")
        events: list[Any] = faults.clear()
    await qom_set(qmp, device, "fault-rules", "")
    print(run.stdout.strip())
    print(f"rule {status['rule']}: matched {status['matched']}, fired {status['fired']}")
    if [e["data"]["fault"] for e in events] != ["late-write"]:
        fail(f"expected one late-write event, got {events}")
    event = events[0]["data"]
    print(f"late write armed on sq[{event['sq-index']}] (tag {event['tag']}) at device time "
          f"{event['virtual-time-ns']} ns; it lands {DELAY_NS // 1_000_000} ms later")
    if "verified=yes" not in run.stdout:
        fail("the transfer itself was wrong: the late write came too early")
    if "recheck=changed" not in run.stdout:
        fail("the program did not see its data change after the completion")
    await kernel_clean(args.dmagate)
    await qmp.disconnect()
    print("OK: the device wrote the program's pages after the completion")


if __name__ == "__main__":
    asyncio.run(main())
