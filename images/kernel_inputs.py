"""What a guest image needs of a kernel, whatever built it: a Debian package
(debian_kernel.py), this project's debug build (debug_kernel.py) or a
developer's own tree (kernel_tree.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trixie_root import BuildRoot

from dmagate.manifest import PackageInput


def read_config(path: Path) -> dict[str, str]:
    """A kernel .config (or fragment): CONFIG_X -> value ("y", "m", a string);
    options unset or "is not set" are absent."""
    options = {}
    for line in path.read_text().splitlines():
        if line.startswith("CONFIG_"):
            name, _, value = line.partition("=")
            options[name] = value
    return options


@dataclass(frozen=True)
class KernelInputs:
    """A kernel ready to boot and to build modules against, whatever its origin."""

    flavour: str
    release: str
    kdir: Path  # where `make M=...` builds out-of-tree modules (inside build_root if set)
    modules_root: Path  # holds lib/modules/RELEASE (with modules.dep)
    bzimage: Path | None  # a bzImage to unpack for PVH boot, or
    elf: Path | None  # the ELF kernel itself
    config: Path
    packages: tuple[PackageInput, ...]
    # Modules are built chrooted in here (a kernel newer than the host's Debian).
    build_root: BuildRoot | None = None
    # The kernel's own checkpatch.pl, when its source is at hand.
    checkpatch: Path | None = None
    # How the modules were built, for the manifest.
    module_build: str = "the host's gcc and the kernel's kbuild"
    # An unstripped vmlinux for gdb, if there is one.
    symbols: Path | None = None
    # The built kernel tree, for a kernel built from source (KERNEL=PATH takes it).
    tree: Path | None = None

    def config_options(self) -> dict[str, str]:
        return read_config(self.config)

    @property
    def maps_pfns_with_pmds(self) -> bool:
        """Takes a driver's PMD entries for PFN mappings (Linux 6.12 on, with
        transparent huge pages): the driver's huge_fault is built."""
        return self.config_options().get("CONFIG_ARCH_SUPPORTS_PMD_PFNMAP") == "y"

    @property
    def has_checkers(self) -> bool:
        """Built with the checkers the debug flavour has (KASAN, lockdep, kmemleak)."""
        opts = self.config_options()
        return all(opts.get(o) == "y" for o in ("CONFIG_KASAN", "CONFIG_PROVE_LOCKING",
                                                  "CONFIG_DEBUG_KMEMLEAK"))
