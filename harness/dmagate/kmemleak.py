"""kmemleak (debug kernel): scan on demand, parse its reports."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from dmagate.vm import VM

KMEMLEAK = "/sys/kernel/debug/kmemleak"
# kmemleak does not report objects younger than 5 s (MSECS_MIN_AGE).
MIN_AGE_S = 5.5
_FRAME = re.compile(r"^\s+(?:\[<[0-9a-f]+>\]\s+)?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+"
                    r"(?:\s+\[(\w+)\])?")


@dataclass(frozen=True)
class Leak:
    report: str
    frames: tuple[str, ...]  # function names, innermost first
    modules: tuple[str, ...]  # modules named in the backtrace

    @property
    def title(self) -> str:
        skip = ("kmemleak_alloc", "__kmalloc", "kmalloc_trace", "__kmalloc_cache_noprof",
                "kmalloc_noprof", "kzalloc_noprof", "kmem_cache_alloc", "slab_post_alloc_hook",
                "__kmalloc_noprof", "kmem_cache_alloc_noprof")
        where = next((f for f in self.frames if not f.startswith(skip)), "?")
        return f"memory leak in {where}"


def parse(text: str) -> list[Leak]:
    """Reports in the format of /sys/kernel/debug/kmemleak."""
    leaks = []
    for block in re.split(r"(?m)^(?=unreferenced object )", text):
        if not block.startswith("unreferenced object"):
            continue
        frames, modules = [], []
        for line in block.splitlines():
            match = _FRAME.match(line)
            if match:
                frames.append(match.group(1))
                if match.group(2):
                    modules.append(match.group(2))
        leaks.append(Leak(block.strip(), tuple(frames), tuple(dict.fromkeys(modules))))
    return leaks


def available(vm: VM) -> bool:
    return vm.run(f"test -e {KMEMLEAK}").status == 0


def scan(vm: VM) -> list[Leak]:
    """Every current report, with what was allocated before the call.

    kmemleak reports an object that a scan finds unreferenced, older than
    its minimum age, and with the contents the scan before found: the first
    scan only records them (it needs no minimum age), the second waits until
    MIN_AGE_S have passed since the call (the first scan's own seconds count).
    """
    start = time.monotonic()
    vm.run(f"echo scan > {KMEMLEAK}", timeout=120, check=True)
    rest = MIN_AGE_S - (time.monotonic() - start)
    if rest > 0:
        vm.run(f"sleep {rest:.2f}", timeout=rest + 30, check=True)
    vm.run(f"echo scan > {KMEMLEAK}", timeout=120, check=True)
    return parse(vm.run(f"cat {KMEMLEAK}", check=True).stdout)


def clear(vm: VM) -> None:
    """Forget the current reports (say, the boot's own)."""
    vm.run(f"echo clear > {KMEMLEAK}", check=True)
