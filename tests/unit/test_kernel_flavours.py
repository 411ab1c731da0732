"""Kernel flavours and bring-your-own kernel trees: image directories, the
check of a tree's configuration, and the mirrors the trixie archive reuses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dmagate.flavours import FlavourError, image_dir_name, is_kernel_tree
from dmagate.manifest import Manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images"))

from build_image import main
from kernel_inputs import KernelInputs
from kernel_tree import GUEST_NEEDS, _missing
from trixie_root import host_mirrors


def test_named_flavours_have_their_own_image() -> None:
    assert image_dir_name("6.12") == "image-6.12"
    assert image_dir_name("7.3") == "image-7.3"
    assert image_dir_name("debug") == "image-debug"
    with pytest.raises(FlavourError, match=r"unknown KERNEL=6\.13.*kernel tree"):
        image_dir_name("6.13")


def test_two_trees_of_one_name_get_two_images(tmp_path: Path) -> None:
    one, two = tmp_path / "a" / "linux", tmp_path / "b" / "linux"
    assert is_kernel_tree(str(one)) and not is_kernel_tree("6.1")
    assert image_dir_name(str(one)).startswith("image-tree-linux-")
    assert image_dir_name(str(one)) != image_dir_name(str(two))
    assert image_dir_name(str(one)) == image_dir_name(str(one) + "/")


def _tree_kernel(tmp_path: Path, config: str) -> KernelInputs:
    (tmp_path / ".config").write_text(config)
    return KernelInputs(flavour=str(tmp_path), release="7.3.0", kdir=tmp_path,
                        modules_root=tmp_path, bzimage=None, elf=None,
                        config=tmp_path / ".config", packages=())


def test_a_tree_with_what_the_guest_needs_passes(tmp_path: Path) -> None:
    config = "".join(f"{name}={values[-1]}\n" for name, values in GUEST_NEEDS)
    assert _missing(_tree_kernel(tmp_path, config + "CONFIG_PVH=y\n"), has_bzimage=False) == []
    assert _missing(_tree_kernel(tmp_path, config), has_bzimage=True) == []


def test_a_tree_lacking_options_names_each(tmp_path: Path) -> None:
    config = "".join(f"{name}={values[0]}\n" for name, values in GUEST_NEEDS
                     if name not in ("CONFIG_VIRTIO_NET", "CONFIG_PCI_MSI"))
    config += "# CONFIG_PCI_MSI is not set\n"
    missing = _missing(_tree_kernel(tmp_path, config), has_bzimage=False)
    assert missing == ["CONFIG_PVH=y (or build arch/x86/boot/bzImage)", "CONFIG_PCI_MSI=y",
                       "CONFIG_VIRTIO_NET=y|m"]


def test_checkers_come_from_the_config(tmp_path: Path) -> None:
    plain = _tree_kernel(tmp_path, "CONFIG_KASAN=y\n")
    assert not plain.has_checkers
    debug = _tree_kernel(tmp_path, "CONFIG_KASAN=y\nCONFIG_PROVE_LOCKING=y\n"
                                   "CONFIG_DEBUG_KMEMLEAK=y\n")
    assert debug.has_checkers
    manifest = Manifest(flavour=str(tmp_path), kernel_release="7.3.0", kernel_config_sha256="",
                        packages=(), files=(), qemu={}, firmware={}, modules=(), built_at="",
                        extra={"checkers": "yes"})
    assert manifest.has_checkers


def test_mirrors_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n")
    assert host_mirrors((tmp_path / "none", parts)) == (
        "http://mirror.example/debian", "http://mirror.example/debian-security")
    (parts / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert host_mirrors((tmp_path / "sources.list", parts)) == (
        "http://other.example/debian", "http://other.example/debian-security")


def test_a_tree_without_pvh_or_virtio_gets_one_line_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tmp_path / "linux"
    (tree / "include/config").mkdir(parents=True)
    (tree / "Makefile").write_text("")
    (tree / "vmlinux").write_bytes(b"\x7fELF")
    (tree / "Module.symvers").write_text("")
    (tree / "include/config/kernel.release").write_text("7.3.0-mine\n")
    (tree / ".config").write_text("CONFIG_MODULES=y\nCONFIG_PCI_MSI=y\n")
    assert main(["--flavour", str(tree), "--driver-only", "--cache", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"image: KERNEL={tree} lacks what the guest needs: CONFIG_PVH=y")
    assert "CONFIG_VIRTIO_NET=y|m" in err and "CONFIG_DEVTMPFS=y" in err
    assert "CONFIG_PCI_MSI" not in err


def test_pmd_mapped_pfns_come_from_the_kernels_config(tmp_path: Path) -> None:
    with_pmds = _tree_kernel(tmp_path, "CONFIG_TRANSPARENT_HUGEPAGE=y\n"
                                       "CONFIG_ARCH_SUPPORTS_PMD_PFNMAP=y\n")
    assert with_pmds.maps_pfns_with_pmds
    # 6.1 has transparent huge pages, but no PMD entries for a driver's PFNs.
    assert not _tree_kernel(tmp_path, "CONFIG_TRANSPARENT_HUGEPAGE=y\n").maps_pfns_with_pmds
    manifest = Manifest(flavour="6.1", kernel_release="6.1.0", kernel_config_sha256="",
                        packages=(), files=(), qemu={}, firmware={}, modules=(), built_at="",
                        extra={"pmd_pfnmap": "no"})
    assert not manifest.maps_pfns_with_pmds
    assert not manifest.has_checkers
