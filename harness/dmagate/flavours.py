"""Kernel flavours: the names `KERNEL=` takes, and where each one's image lives.

A flavour is one of the names below (Debian's cloud kernels, or the debug
kernel this project builds), or the path of a kernel tree a developer built
(`KERNEL=/path/to/linux`: bring your own kernel). The image build and the
harness both map a flavour to its image directory through ``image_dir_name``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

DEFAULT_FLAVOUR = "6.12"
DEBUG_FLAVOUR = "debug"
# Debian's cloud-amd64 kernels by series; images/build_image.py resolves each
# to the newest package of that series at build time.
DEBIAN_FLAVOURS = ("6.12", "6.1", "7.3")
FLAVOURS = (*DEBIAN_FLAVOURS, DEBUG_FLAVOUR)
# What the debug kernel runs slower by (KASAN, lockdep, ...) than a stock one.
CHECKERS_SLOWDOWN = 5.0


class FlavourError(ValueError):
    """KERNEL names neither a flavour nor a directory."""


def is_kernel_tree(flavour: str) -> bool:
    """A path (it has a slash), not a flavour name."""
    return "/" in flavour


def image_dir_name(flavour: str) -> str:
    """``image-<flavour>``; for a kernel tree, its base name and a hash of its
    absolute path, so that two trees never share an image."""
    if not is_kernel_tree(flavour):
        if flavour not in FLAVOURS:
            raise FlavourError(
                f"unknown KERNEL={flavour}: choose one of {', '.join(FLAVOURS)}, "
                "or the path of a built kernel tree"
            )
        return f"image-{flavour}"
    tree = Path(flavour).expanduser().resolve()
    digest = hashlib.sha256(str(tree).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", tree.name) or "root"
    return f"image-tree-{name}-{digest}"
