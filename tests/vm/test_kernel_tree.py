"""Bring your own kernel (KERNEL=/path/to/linux): a kernel tree built here,
the debug flavour's own, passed as a path gets an image of its own (the
project's initramfs, the driver built against the tree) and runs the
protocol; docs/harness.md, "Your own kernel"."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from dmagate.guesttool import EXIT_OK, dmagatectl
from dmagate.manifest import Manifest
from dmagate.pytest_plugin import Bench
from dmagate.vm import VM

# The debug flavour's tree is the one kernel tree every CI run builds.
pytestmark = pytest.mark.debug_kernel


def test_a_kernel_tree_boots_with_the_projects_image(dmagate_bench: Bench,
                                                     make_vm: Callable[..., VM]) -> None:
    tree = dmagate_bench.manifest.extra["kernel_tree"]
    paths = dmagate_bench.paths
    build = subprocess.run(
        [sys.executable, str(paths.root / "images/build_image.py"), "--flavour", tree,
         "--qemu-build-info", str(paths.build / "qemu/build-info.json")],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    image = paths.image(tree)
    assert image != paths.image(dmagate_bench.flavour)
    manifest = Manifest.load(image)
    assert manifest.flavour == tree
    assert manifest.kernel_release == dmagate_bench.manifest.kernel_release
    assert manifest.has_checkers and manifest.extra["kernel_tree"] == tree
    assert tree in manifest.extra["module_build"]

    guest = make_vm(flavour=tree)
    assert guest.run("uname -r", check=True).stdout.strip() == manifest.kernel_release
    run = dmagatectl(guest, "xfer fill -s 1M -o 64K -l 256K -p 0x7ee")
    assert run.status == EXIT_OK, run.describe()
    assert (run["verified"], run["outside"]) == ("yes", "ok")
