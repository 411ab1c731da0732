"""An image built again in another directory is the same bytes
(images/build_image.py): what lets one snapshot of a booted guest serve
every checkout on the machine (dmagate.snapshot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dmagate.manifest import Manifest
from dmagate.pytest_plugin import Bench


def test_the_image_built_again_elsewhere_is_the_same_bytes(dmagate_bench: Bench,
                                                           tmp_path: Path) -> None:
    paths = dmagate_bench.paths
    out = tmp_path / paths.image(dmagate_bench.flavour).name
    build = subprocess.run(
        [sys.executable, str(paths.root / "images/build_image.py"),
         "--flavour", dmagate_bench.flavour, "--out", str(out),
         "--qemu-build-info", str(paths.build / "qemu/build-info.json")],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    again = {f.path: f.sha256 for f in Manifest.load(out).files}
    bench = {f.path: f.sha256 for f in dmagate_bench.manifest.files}
    assert again == bench, (f"{paths.image(dmagate_bench.flavour)} and a build of the same "
                            "sources differ (or the bench's image is older than the sources: "
                            "make image)")
