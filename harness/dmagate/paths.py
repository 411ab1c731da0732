"""Where the build puts what the harness boots."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dmagate.flavours import DEFAULT_FLAVOUR, image_dir_name


def cache_dir() -> Path:
    """What outlives a checkout (downloads, QEMU and kernel builds, guest
    keys, snapshots): $DMAGATE_CACHE, else ~/.cache/dmagate."""
    if env := os.environ.get("DMAGATE_CACHE"):
        return Path(env)
    return Path.home() / ".cache" / "dmagate"


def _find_root(start: Path) -> Path | None:
    for directory in (start, *start.parents):
        if (directory / "pyproject.toml").is_file() and (directory / "qemu-device").is_dir():
            return directory
    return None


@dataclass(frozen=True)
class BuildPaths:
    """The outputs of ``make qemu`` and ``make image`` in one checkout."""

    root: Path
    # Another QEMU to run instead of make qemu's, e.g. make qemu-asan's.
    qemu_override: Path | None = None

    @classmethod
    def discover(cls) -> BuildPaths:
        """$DMAGATE_ROOT, else the checkout around the cwd, else this package's;
        QEMU is $DMAGATE_QEMU if set."""
        qemu_env = os.environ.get("DMAGATE_QEMU")
        qemu = Path(qemu_env).resolve() if qemu_env else None
        if env := os.environ.get("DMAGATE_ROOT"):
            return cls(Path(env).resolve(), qemu)
        for start in (Path.cwd(), Path(__file__).resolve().parent):
            if root := _find_root(start):
                return cls(root, qemu)
        raise FileNotFoundError(
            "cannot find the dmagate checkout: run from inside it or set DMAGATE_ROOT"
        )

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def qemu(self) -> Path:
        return self.qemu_override or self.build / "qemu" / "qemu-system-x86_64"

    def image(self, flavour: str = DEFAULT_FLAVOUR) -> Path:
        return self.build / image_dir_name(flavour)

    @property
    def runs(self) -> Path:
        """Per-VM working directories: sockets, logs."""
        return self.build / "runs"

    @property
    def artifacts(self) -> Path:
        return self.build / "test-artifacts"
