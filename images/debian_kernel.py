"""Debian's cloud-amd64 kernels (KERNEL=6.12, 6.1, 7.3): resolved to the newest
package of their series at build time, downloaded into the cache and
unpacked there, never installed on the host.

6.12 and 6.1 come from the host's own archive (bookworm and its backports)
and their modules are built on the host. 7.3 comes from trixie-backports
through a private apt view, and its modules are built in a trixie build root
(trixie_root.py), where its kbuild runs and its compiler (gcc-14) is.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from buildutil import BuildError, candidate, depends, download, run, sha256_file
from kernel_inputs import KernelInputs
from trixie_root import Archive, build_root

from dmagate.manifest import PackageInput

# Metapackages that track a series in the host's archive. The 6.1 one is
# pinned to bookworm's own series by apt's default priorities (backports
# carry 6.12).
HOST_SERIES: dict[str, str] = {
    "6.12": "linux-image-6.12-cloud-amd64",
    "6.1": "linux-image-cloud-amd64",
}
# Series from trixie-backports: the newest linux-image-<series>.N+deb13-cloud-amd64.
TRIXIE_SERIES = ("7.3",)


@dataclass(frozen=True)
class KernelPackages:
    """The binary packages of one kernel ABI and their version."""

    release: str  # e.g. 6.12.117+deb12-cloud-amd64
    version: str  # Debian version of the packages, e.g. 6.12.117-1~deb12u1
    # What holds the kernel, its modules, config (6.x: linux-image; 7.x: the
    # linux-image metapackage's linux-binary, linux-modules and linux-base).
    kernel: tuple[str, ...]
    headers: str
    headers_common: str
    kbuild: str
    apt: tuple[str, ...] = ()  # options of the archive they come from

    @property
    def build_packages(self) -> tuple[str, ...]:
        return (self.headers, self.headers_common, self.kbuild)

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.kernel, *self.build_packages)


def _newest_in_series(series: str, archive: Archive) -> str:
    pattern = re.compile(rf"^linux-image-{re.escape(series)}\.(\d+)\+deb\d+-cloud-amd64$")
    found = [(int(m.group(1)), name) for name in archive.package_names(f"linux-image-{series}.")
             if (m := pattern.match(name))]
    if not found:
        raise BuildError(f"no linux-image-{series}.*-cloud-amd64 in trixie-backports")
    return max(found)[1]


def resolve_kernel(flavour: str, cache: Path) -> KernelPackages:
    apt: tuple[str, ...] = ()
    if flavour in HOST_SERIES:
        meta = HOST_SERIES[flavour]
        image = next((d for d in depends(meta) if d.startswith("linux-image-")), None)
        if image is None:
            raise BuildError(f"{meta} names no linux-image package")
    elif flavour in TRIXIE_SERIES:
        archive = Archive(cache / "apt" / "trixie")
        archive.update()
        apt = archive.options
        image = _newest_in_series(flavour, archive)
    else:
        raise BuildError(f"no Debian kernel series {flavour}")
    release = image.removeprefix("linux-image-").removesuffix("-unsigned")
    # From 6.19 on, linux-image is a metapackage of binary, modules and base.
    parts = [d for d in depends(image, apt)
             if re.match(rf"^linux-(binary|modules|base)-{re.escape(release)}$", d)]
    headers = f"linux-headers-{release}"
    deps = depends(headers, apt)
    common = next(d for d in deps if d.startswith("linux-headers-") and d.endswith("-common"))
    kbuild = next(d for d in deps if d.startswith("linux-kbuild-"))
    return KernelPackages(
        release=release,
        version=candidate(image, apt),
        kernel=tuple(parts) if parts else (image,),
        headers=headers,
        headers_common=common,
        kbuild=kbuild,
        apt=apt,
    )


def unpack_kernel(kernel: KernelPackages, debs: Sequence[Path], cache: Path) -> Path:
    """Unpack the kernel packages into a private root and fix its paths."""
    root = cache / "kernels" / kernel.release
    stamp = root / ".unpacked"
    if stamp.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for deb in debs:
        run(["dpkg-deb", "-x", deb, root])
    # 7.x ships its modules under /usr/lib only (merged /usr); depmod looks in /lib.
    if not (root / "lib").exists() and (root / "usr/lib/modules").is_dir():
        (root / "lib").symlink_to("usr/lib")
    # Debian's flavour Makefile includes the common tree by absolute path.
    flavour_makefile = root / "usr/src" / kernel.headers / "Makefile"
    text = flavour_makefile.read_text()
    flavour_makefile.write_text(text.replace("/usr/src/", f"{root}/usr/src/"))
    # Packages ship no modules.dep: apt's postinst would make it.
    run(["/usr/sbin/depmod", "-b", root, kernel.release])
    stamp.touch()
    return root


def _first(root: Path, candidates: Sequence[str]) -> Path:
    for name in candidates:
        if (root / name).exists():
            return root / name
    raise BuildError(f"none of {', '.join(candidates)} in the kernel packages ({root})")


def checkpatch_from_source(series: str, version: str, apt: Sequence[str], cache: Path) -> Path:
    """checkpatch.pl and the files it reads, taken from linux-source-<series>."""
    dest = cache / "checkpatch" / f"{series}-{version}"
    script = dest / "scripts/checkpatch.pl"
    if script.exists():
        return script
    package = f"linux-source-{series}"
    (deb,) = download([package], candidate(package, apt), cache / "downloads" / "debs", apt)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    wanted = ("scripts/checkpatch.pl", "scripts/spelling.txt", "scripts/const_structs.checkpatch")
    # The deb holds one tarball of the tree; take those three files out of it.
    pipeline = (f"dpkg-deb --fsys-tarfile '{deb}' | tar -xO ./usr/src/{package}.tar.xz | "
                f"tar -xJ -C '{dest}' --strip-components=1 --wildcards "
                + " ".join(f"'*/{w}'" for w in wanted))
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0 or not script.exists():
        shutil.rmtree(dest, ignore_errors=True)
        raise BuildError(f"cannot take checkpatch.pl out of {deb.name}: {proc.stderr[-1000:]}")
    return script


def debian_kernel(flavour: str, cache: Path) -> KernelInputs:
    """A Debian cloud kernel: packages downloaded and unpacked, never installed."""
    kernel = resolve_kernel(flavour, cache)
    print(f"image: kernel {flavour} -> {kernel.release} ({kernel.version})", flush=True)
    debs = download(kernel.names, kernel.version, cache / "downloads" / "debs", kernel.apt)
    kroot = unpack_kernel(kernel, debs, cache)
    packages = tuple(
        PackageInput(name=deb.name.split("_")[0], version=kernel.version, sha256=sha256_file(deb))
        for deb in debs
    )
    boot = [f"boot/vmlinuz-{kernel.release}", f"usr/lib/modules/{kernel.release}/vmlinuz"]
    config = [f"boot/config-{kernel.release}", f"usr/lib/modules/{kernel.release}/config"]
    inputs = KernelInputs(
        flavour=flavour,
        release=kernel.release,
        kdir=kroot / "usr/src" / kernel.headers,
        modules_root=kroot,
        bzimage=_first(kroot, boot),
        elf=None,
        config=_first(kroot, config),
        packages=packages,
    )
    if not kernel.apt:
        return inputs
    # A trixie kernel: its modules are built in the trixie build root, where
    # its headers and kbuild sit at their own paths.
    root = build_root(cache)
    root.unpack([d for d in debs if d.name.split("_")[0] in kernel.build_packages])
    return replace(
        inputs,
        kdir=Path("/usr/src") / kernel.headers,
        build_root=root,
        packages=(*packages, *root.packages()),
        checkpatch=checkpatch_from_source(flavour, kernel.version, kernel.apt, cache),
        module_build=root.description,
    )
