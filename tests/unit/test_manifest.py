from __future__ import annotations

import json
from pathlib import Path

import pytest

from dmagate.manifest import Manifest, ManifestError

# A manifest written by images/build_image.py for the 6.12 flavour.
REAL = Path(__file__).parent / "fixtures" / "manifest-6.12.json"


def test_real_manifest_round_trips() -> None:
    manifest = Manifest.from_json(REAL.read_text())
    assert manifest.flavour == "6.12"
    assert manifest.kernel_release.endswith("-cloud-amd64")
    assert manifest.package(f"linux-image-{manifest.kernel_release}").sha256
    assert len(manifest.qemu["tarball_sha256"]) == 64
    assert manifest.file("initramfs.cpio").size > 0
    assert "dmagate" in manifest.modules
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_summary_names_kernel_qemu_and_packages() -> None:
    manifest = Manifest.from_json(REAL.read_text())
    text = manifest.summary()
    assert manifest.kernel_release in text
    assert manifest.qemu["source_package"] in text
    assert "busybox-static" in text


def test_other_schema_is_refused_with_the_fix() -> None:
    raw = json.loads(REAL.read_text())
    raw["schema"] = 99
    with pytest.raises(ManifestError, match="make image"):
        Manifest.from_json(json.dumps(raw))


def test_missing_field_is_named() -> None:
    raw = json.loads(REAL.read_text())
    del raw["kernel_release"]
    with pytest.raises(ManifestError, match="kernel_release"):
        Manifest.from_json(json.dumps(raw))


def test_missing_image_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="make image"):
        Manifest.load(tmp_path)
