"""Bring your own kernel (KERNEL=/path/to/linux): a kernel tree a developer
built, in place or with O=, booted with this project's initramfs.

The tree must hold a built kernel (vmlinux with CONFIG_PVH, or
arch/x86/boot/bzImage), its .config and what `make M=...` needs
(Module.symvers, include/generated). Its modules, if it has any, are
installed into the cache with the tree's own `make modules_install`.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from buildutil import BuildError, run
from kernel_inputs import KernelInputs, read_config

# What the guest's init, sshd and the driver need, as (option, accepted values).
GUEST_NEEDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("CONFIG_MODULES", ("y",)),
    ("CONFIG_PCI_MSI", ("y",)),
    ("CONFIG_BLK_DEV_INITRD", ("y",)),
    ("CONFIG_DEVTMPFS", ("y",)),
    ("CONFIG_TMPFS", ("y",)),
    ("CONFIG_UNIX98_PTYS", ("y",)),
    ("CONFIG_SERIAL_8250_CONSOLE", ("y",)),
    ("CONFIG_INET", ("y",)),
    ("CONFIG_VIRTIO_PCI", ("y", "m")),
    ("CONFIG_VIRTIO_NET", ("y", "m")),
    ("CONFIG_DEBUG_FS", ("y",)),
    ("CONFIG_FTRACE", ("y",)),
)


def _missing(kernel: KernelInputs, has_bzimage: bool) -> list[str]:
    opts = kernel.config_options()
    missing = [f"{name}={'|'.join(values)}" for name, values in GUEST_NEEDS
               if opts.get(name) not in values]
    if not has_bzimage and opts.get("CONFIG_PVH") != "y":
        missing.insert(0, "CONFIG_PVH=y (or build arch/x86/boot/bzImage)")
    return missing


def kernel_from_tree(path: str, cache: Path) -> KernelInputs:
    tree = Path(path).expanduser().resolve()
    if not (tree / ".config").is_file() or not (tree / "Makefile").is_file():
        raise BuildError(f"KERNEL={path}: not a configured kernel tree (no .config or Makefile)")
    vmlinux, bzimage = tree / "vmlinux", tree / "arch/x86/boot/bzImage"
    if not vmlinux.is_file() and not bzimage.is_file():
        raise BuildError(f"KERNEL={path}: no vmlinux or arch/x86/boot/bzImage: build it first "
                         "(make -j$(nproc))")
    if not (tree / "Module.symvers").is_file():
        raise BuildError(f"KERNEL={path}: no Module.symvers: build the tree with modules "
                         "(make -j$(nproc), or make modules_prepare)")
    release_file = tree / "include/config/kernel.release"
    release = (release_file.read_text().strip() if release_file.is_file() else
               run(["make", "-s", "-C", tree, "kernelrelease"]).strip())
    key = hashlib.sha256(str(tree).encode()).hexdigest()[:8]
    root = cache / "kernels" / f"tree-{key}" / "root"
    source = tree / "source" if (tree / "source").is_dir() else tree
    checkpatch = source / "scripts/checkpatch.pl"
    pvh = vmlinux.is_file() and read_config(tree / ".config").get("CONFIG_PVH") == "y"
    kernel = KernelInputs(
        flavour=str(tree),
        release=release,
        kdir=tree,
        modules_root=root,
        bzimage=None if pvh else bzimage,
        elf=vmlinux if pvh else None,
        config=tree / ".config",
        packages=(),
        checkpatch=checkpatch if checkpatch.is_file() else None,
        module_build=f"the host's gcc and the tree's kbuild ({tree})",
        symbols=vmlinux if vmlinux.is_file() else None,
        tree=tree,
    )
    missing = _missing(kernel, bzimage.is_file())
    if missing:
        raise BuildError(f"KERNEL={path} lacks what the guest needs: {', '.join(missing)}")
    print(f"image: kernel tree {tree} -> {release}", flush=True)
    # The tree may have been rebuilt since the last image: install afresh.
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    run(["make", "-s", "-C", tree, "modules_install", f"INSTALL_MOD_PATH={root}",
         "INSTALL_MOD_STRIP=1", "DEPMOD=/usr/sbin/depmod"])
    return kernel
