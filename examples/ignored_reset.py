#!/usr/bin/env python3
"""Make the device ignore its resets, hang a transfer, and watch the driver
give up on the device: its watchdog's reset is refused, it declares the
device dead, and it keeps the transfer's pages away from the program.

    dmagate boot                       # prints "QMP for scripts: SOCKET"
    python3 examples/ignored_reset.py SOCKET

The waiting program is told: its wait fails with EIO (nothing the device
holds will finish). The device is left wedged, and the module stays loaded
for good (it holds what the device may still write); boot again.
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
    qom_set,
)

WATCHDOG_MS = 1000


async def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    qmp = await connect("ignored-reset", args.qmp)
    device = await dmagate_device(qmp)
    await guest(args.dmagate, f"echo {WATCHDOG_MS} > /sys/module/dmagate/parameters/timeout_ms")
    with qmp.listener("DMAGATE_FAULT") as faults:
        await qom_set(qmp, device, "fault-ignore-reset", "both")
        await qom_set(qmp, device, "fault-stall", 1)
        # Submit, touch the range the device owns, wait 4 s for the completion.
        run = await guest(args.dmagate, "dmagatectl touch fill -s 64K --touch read -t 4000; "
                                        "echo touch=$?")
        cleared: list[Any] = faults.clear()
        events = [e["data"]["fault"] for e in cleared]
    dmesg = (await guest(args.dmagate, "dmesg | grep dmagate")).stdout
    print(run.stdout.strip())
    print(f"DMAGATE_FAULT events: {events}")
    print("driver said:\n  " + "\n  ".join(dmesg.strip().splitlines()[-3:]))
    if events[:1] != ["stall"] or "ignore-reset" not in events:
        fail("the driver's watchdog never tried to reset the device")
    if "device did not stop" not in dmesg:
        fail("the driver did not give up on the device")
    if "signal=SIGBUS" not in run.stdout:
        fail("the program could touch pages of a device that may still write them")
    if "wait=timeout" in run.stdout or "errno=EIO" not in run.stdout:
        fail("the waiting program was not told the device failed")
    print("the program's wait failed with EIO")
    await kernel_clean(args.dmagate)
    await qmp.disconnect()
    print("OK: the reset was ignored; the driver declared the device wedged, kept its "
          "pages revoked and told the waiter")


if __name__ == "__main__":
    asyncio.run(main())
