"""What a guest image needs of a kernel, whatever built it: a Debian
package (build_image.py) or this project's debug build (debug_kernel.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dmagate.manifest import PackageInput


@dataclass(frozen=True)
class KernelInputs:
    """A kernel ready to boot and to build modules against, whatever its origin."""

    flavour: str
    release: str
    kdir: Path  # where `make M=...` builds out-of-tree modules
    modules_root: Path  # holds lib/modules/RELEASE (with modules.dep)
    bzimage: Path | None  # a bzImage to unpack for PVH boot, or
    elf: Path | None  # the ELF kernel itself
    config: Path
    packages: tuple[PackageInput, ...]
