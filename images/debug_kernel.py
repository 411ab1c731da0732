"""The debug kernel flavour (KERNEL=debug): Linux 6.12 from Debian's
linux-source-6.12 with KASAN, lockdep, DMA-API debug, kmemleak, debug
objects and fault injection (kernel-debug.config), and the patches in
kernel-debug-patches/ applied in name order.

The build is cached in ~/.cache/dmagate/kernels/debug-<key>, where the key
hashes the source package version, the config fragment, the patches and this
file, so a warm run reuses it; the cold build's wall time is kept beside it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from buildutil import BuildError, candidate, download, run, sha256_file
from kernel_inputs import KernelInputs, read_config

from dmagate.flavours import DEBUG_FLAVOUR
from dmagate.manifest import PackageInput

SOURCE_PACKAGE = "linux-source-6.12"
HERE = Path(__file__).resolve().parent
FRAGMENT = HERE / "kernel-debug.config"
PATCHES = HERE / "kernel-debug-patches"


def _patches() -> list[Path]:
    return sorted(PATCHES.glob("*.patch"))


def _key(version: str) -> str:
    digest = hashlib.sha256()
    parts = [version.encode(), FRAGMENT.read_bytes(), Path(__file__).read_bytes()]
    parts += [p.name.encode() + p.read_bytes() for p in _patches()]
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:16]


def _check_config(config: Path) -> None:
    """Every option of the fragment must have survived Kconfig."""
    have = read_config(config)
    lost = [f"{k}={v} (got {have.get(k, 'n')})" for k, v in read_config(FRAGMENT).items()
            if have.get(k, "n") != v]
    if lost:
        raise BuildError(
            f"{FRAGMENT.name}: options lost to Kconfig dependencies: {', '.join(lost)}"
        )


def debug_kernel(cache: Path) -> KernelInputs:
    version = candidate(SOURCE_PACKAGE)
    (deb,) = download([SOURCE_PACKAGE], version, cache / "downloads" / "debs")
    tree = cache / "kernels" / f"debug-{_key(version)}"
    src, build, root = tree / "src", tree / "build", tree / "root"
    stamp = tree / ".built"
    if not stamp.exists():
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "deb").mkdir(parents=True)
        started = time.monotonic()
        print(f"image: building the debug kernel from {SOURCE_PACKAGE} {version} "
              f"in {tree} (about 10 min on 2 cores)", flush=True)
        run(["dpkg-deb", "-x", deb, tree / "deb"])
        (tarball,) = (tree / "deb/usr/src").glob("linux-source-*.tar.xz")
        src.mkdir()
        run(["tar", "-xJf", tarball, "-C", src, "--strip-components=1"])
        shutil.rmtree(tree / "deb")
        for patch in _patches():
            run(["patch", "-p1", "--batch", "--forward", "-d", src, "-i", patch])
        jobs = f"-j{os.cpu_count() or 1}"
        make = ["make", "-C", str(src), f"O={build}", jobs]
        # Only what the fragment asks for: allnoconfig, then the fragment
        # with its dependencies resolved.
        run([*make, f"KCONFIG_ALLCONFIG={FRAGMENT}", "allnoconfig"])
        _check_config(build / ".config")
        log = tree / "build.log"
        with log.open("w") as out:
            result = subprocess.run([*make, "all"], stdout=out, stderr=subprocess.STDOUT,
                                    check=False)
        if result.returncode != 0:
            raise BuildError(f"debug kernel build failed; see {log}")
        run([*make, "modules_install", f"INSTALL_MOD_PATH={root}", "INSTALL_MOD_STRIP=1",
             "DEPMOD=/usr/sbin/depmod"])
        (tree / "build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
        stamp.touch()
    release = run(["make", "-s", "-C", str(src), f"O={build}", "kernelrelease"]).strip()
    print(f"image: kernel debug -> {release} ({SOURCE_PACKAGE} {version}, built in "
          f"{(tree / 'build-seconds').read_text().strip()} s)", flush=True)
    return KernelInputs(
        flavour=DEBUG_FLAVOUR,
        release=release,
        kdir=build,
        modules_root=root,
        bzimage=None,
        elf=build / "vmlinux",
        config=build / ".config",
        packages=(PackageInput(SOURCE_PACKAGE, version, sha256_file(deb)),),
        checkpatch=build / "source/scripts/checkpatch.pl",
        symbols=build / "vmlinux",
        tree=build,
    )
