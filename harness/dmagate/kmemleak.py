"""kmemleak (debug kernel): scan on demand, parse its reports."""

from __future__ import annotations

import re
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
    """Wait until what was allocated just now is old enough to be reported,
    scan (twice: kmemleak reports an object only once it stays unreferenced
    across scans) and return every current report."""
    vm.run(f"sleep {MIN_AGE_S}", timeout=MIN_AGE_S + 30, check=True)
    for _ in range(2):
        vm.run(f"echo scan > {KMEMLEAK}", timeout=120, check=True)
    return parse(vm.run(f"cat {KMEMLEAK}", check=True).stdout)


def clear(vm: VM) -> None:
    """Forget the current reports (say, the boot's own)."""
    vm.run(f"echo clear > {KMEMLEAK}", check=True)
