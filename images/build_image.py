"""Build a bootable dmagate guest: kernel + initramfs + manifest.

    python images/build_image.py --flavour 6.12 --out build/image-6.12 \
        --qemu-build-info build/qemu/build-info.json

The kernel is a Debian cloud kernel resolved to the newest of its series at
build time (debian_kernel.py), the debug kernel built here (debug_kernel.py),
or a developer's own tree (kernel_tree.py). The guest driver and the
test-only modules are built against its headers with W=1,
the guest tools statically, and everything goes into an uncompressed newc
initramfs together with busybox, dropbear and an init script.

The image is the same bytes in every checkout of the same sources on one
machine (so a snapshot of its booted guest, dmagate.snapshot, serves them
all): the SSH keys are made once per machine and kept in the cache, modules
are compiled in one directory per image name (module_source_dir), and the
initramfs carries fixed file times.
"""

from __future__ import annotations

import argparse
import datetime
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from buildutil import (
    BuildError,
    exclusive,
    installed_version,
    run,
    run_both,
    sha256_file,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from debian_kernel import debian_kernel
from debug_kernel import debug_kernel
from kernel_inputs import KernelInputs
from kernel_tree import kernel_from_tree

from dmagate.cmdline import FAST_BIOS, FIRMWARE_DIRS
from dmagate.flavours import DEBUG_FLAVOUR, FLAVOURS, FlavourError, image_dir_name, is_kernel_tree
from dmagate.manifest import FileOutput, Manifest, PackageInput
from dmagate.paths import cache_dir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GUEST_DRIVER = ROOT / "guest-driver"
# A compiler warning about a source file (not Kbuild's own chatter).
COMPILER_WARNING = re.compile(r"\.[ch]:\d+:\d+: warning:")
CHECKPATCH_SOURCES = (GUEST_DRIVER / "dmagate.c", GUEST_DRIVER / "include/uapi/dmagate.h")

# Kernel modules the guest needs from the image package (whatever of them is
# not built in), loaded with their dependencies before the project's; and
# those it uses where the kernel has them (pvpanic: a panic pauses the guest
# for a memory dump instead of ending QEMU).
GUEST_MODULES = ("virtio_pci", "virtio_net")
OPTIONAL_GUEST_MODULES = ("pvpanic-pci",)
USERLAND_PACKAGES = ("busybox-static", "dropbear-bin", "qemu-system-data", "seabios")
# The file time of everything in the initramfs (the guest has no use for
# build times, and they would make every build's archive different).
INITRAMFS_MTIME = 0


def module_source_dir(out: Path, kernel: KernelInputs, cache: Path) -> Path:
    """Where the modules of the image ``out`` are compiled, as the compiler
    sees it: the same directory for that image in every checkout, so no
    checkout's path gets into a module (WARN()'s file names, KASAN's and
    UBSAN's source locations, debug info). gdb's substitute-path maps it to
    ``out``/modules-build."""
    if kernel.build_root is None:
        return cache / "module-builds" / out.name
    return Path("/build") / out.name


def build_modules(kernel: KernelInputs, out: Path, cache: Path) -> list[Path]:
    """Build every module under guest-driver/ against the kernel's headers,
    in its build root if it has one; the result goes to ``out``/modules-build."""
    build = out / "modules-build"
    shutil.rmtree(build, ignore_errors=True)
    sources = shutil.ignore_patterns("*.o", "*.ko", "*.mod*", ".*", "tools")
    inside = module_source_dir(out, kernel, cache)
    where = inside
    if kernel.build_root is not None:
        where = kernel.build_root.path / inside.relative_to("/")
    # No BTF in the modules: pahole writes it in a different order each time
    # (its -j, which the 6.1 kbuild always asks for), and the guest has no
    # BPF tools that would read it.
    make = ["make", "-C", str(kernel.kdir), f"M={inside}", "W=1",
            "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules", f"-j{os.cpu_count() or 1}"]
    with exclusive(where.with_name(f"{where.name}.lock")):
        shutil.rmtree(where, ignore_errors=True)
        shutil.copytree(GUEST_DRIVER, where, ignore=sources)
        _, log = run_both(make) if kernel.build_root is None else kernel.build_root.run(make)
        shutil.copytree(where, build)
        shutil.rmtree(where)
    # The driver is held to a warning-free W=1 build on every kernel flavour.
    warnings = [line for line in log.splitlines() if COMPILER_WARNING.search(line)]
    if warnings:
        raise BuildError("guest-driver: the W=1 build warns:\n" + "\n".join(warnings))
    return sorted(build.rglob("*.ko"))


def check_style(checkpatch: Path) -> None:
    """The driver is clean under the kernel's checkpatch.pl --strict."""
    for source in CHECKPATCH_SOURCES:
        proc = subprocess.run(
            ["perl", str(checkpatch), "--strict", "--no-tree", "--terse", "-f", str(source)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise BuildError(f"checkpatch.pl --strict {source.name}:\n{proc.stdout}")


def build_tools(out: Path) -> list[Path]:
    """Build the guest tools as static binaries."""
    made = []
    dest = out / "tools"
    dest.mkdir(parents=True, exist_ok=True)
    for source in sorted((GUEST_DRIVER / "tools").glob("*.c")):
        binary = dest / source.stem
        run(
            ["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror",
             f"-I{GUEST_DRIVER / 'include'}", "-o", binary, source]
        )
        made.append(binary)
    return made


def shared_libraries(binary: Path) -> list[Path]:
    libs = []
    for line in run(["ldd", binary]).splitlines():
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


KEY_FILES = ("client_key", "client_key.pub", "dropbear_ed25519_host_key", "host_key.pub")


def machine_ssh_keys(cache: Path) -> Path:
    """The harness's client key and the guest's host key, made once per
    machine (the guest is reachable from 127.0.0.1 only) and kept in
    ``cache``/guest-ssh; returns that directory."""
    keys = cache / "guest-ssh"
    if all((keys / name).exists() for name in KEY_FILES):
        return keys
    with exclusive(cache / "guest-ssh.lock"):
        if not all((keys / name).exists() for name in KEY_FILES):
            made = Path(tempfile.mkdtemp(prefix="guest-ssh-", dir=cache))
            try:
                _generate_ssh_keys(made)
                shutil.rmtree(keys, ignore_errors=True)
                made.rename(keys)  # whole, or not there
            except BaseException:
                shutil.rmtree(made, ignore_errors=True)
                raise
    return keys


def _generate_ssh_keys(ssh: Path) -> None:
    client = ed25519.Ed25519PrivateKey.generate()
    private = client.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    key_path = ssh / "client_key"
    key_path.write_bytes(private)
    key_path.chmod(0o600)
    public = client.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode() + " dmagate-harness"
    (ssh / "client_key.pub").write_text(public + "\n")
    host_key = ssh / "dropbear_ed25519_host_key"
    keygen = run(["dropbearkey", "-t", "ed25519", "-f", host_key])
    host_public = next(line for line in keygen.splitlines() if line.startswith("ssh-ed25519"))
    (ssh / "host_key.pub").write_text(host_public + "\n")


def install_ssh_keys(out: Path, cache: Path) -> tuple[str, str]:
    """Copy the machine's keys into ``out``/ssh; returns the client public
    key line and the host public key line."""
    ssh = out / "ssh"
    shutil.rmtree(ssh, ignore_errors=True)
    shutil.copytree(machine_ssh_keys(cache), ssh)
    return ((ssh / "client_key.pub").read_text().strip(),
            (ssh / "host_key.pub").read_text().strip())


def module_load_order(kroot: Path, release: str, wanted: Sequence[str],
                      optional: Sequence[str] = ()) -> list[Path]:
    """Module files (relative to lib/modules/RELEASE) to load for ``wanted``
    and those of ``optional`` the kernel ships, dependencies first; built-in
    ones are left out."""
    moddir = kroot / "lib/modules" / release
    builtin = {Path(line).name.split(".")[0] for line in
               (moddir / "modules.builtin").read_text().split()}
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[module] = needs.split()
    by_name = {Path(m).name.split(".")[0]: m for m in deps}
    order: list[str] = []

    def visit(module: str) -> None:
        if module in order:
            return
        for dependency in deps[module]:
            visit(dependency)
        order.append(module)

    for name in (*wanted, *optional):
        if name in builtin or (name in optional and name not in by_name):
            continue
        if name not in by_name:
            raise BuildError(f"module {name} is neither built into {release} nor shipped")
        visit(by_name[name])
    return [moddir / m for m in order]


def decompressed_module(path: Path, dest: Path) -> None:
    """busybox insmod takes plain .ko files only."""
    tool = {".xz": "xz", ".zst": "zstd"}.get(path.suffix)
    if tool is None:
        shutil.copyfile(path, dest)
        return
    dest.write_bytes(subprocess.run([tool, "-dc", path], capture_output=True, check=True).stdout)


def populate_rootfs(
    rootfs: Path,
    *,
    kernel: KernelInputs,
    modules: list[Path],
    tools: list[Path],
    out: Path,
    client_public: str,
) -> list[str]:
    """Lay out the initramfs tree; return the module load order for init."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/dropbear", "root/.ssh", "proc", "sys",
              "dev", "tmp", "run", "var/log", "lib/modules", "mnt"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    busybox = Path("/bin/busybox")
    shutil.copy2(busybox, rootfs / "bin/busybox")
    for applet in run([busybox, "--list-full"]).split():
        link = rootfs / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath("/bin/busybox", "/" + str(Path(applet).parent)))
    dropbear = Path("/usr/sbin/dropbear")
    shutil.copy2(dropbear, rootfs / "usr/sbin/dropbear")
    for lib in shared_libraries(dropbear):
        dest = rootfs / lib.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib.resolve(), dest)
    shutil.copy2(out / "ssh/dropbear_ed25519_host_key", rootfs / "etc/dropbear/")
    (rootfs / "root/.ssh/authorized_keys").write_text(client_public + "\n")
    (rootfs / "root/.ssh").chmod(0o700)
    (rootfs / "root/.ssh/authorized_keys").chmod(0o600)
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (rootfs / "etc/group").write_text("root:x:0:\n")
    (rootfs / "etc/shells").write_text("/bin/sh\n")
    (rootfs / "etc/hostname").write_text("dmagate-guest\n")
    order = []
    for path in module_load_order(kernel.modules_root, kernel.release, GUEST_MODULES,
                                  OPTIONAL_GUEST_MODULES):
        name = path.name.split(".")[0]
        decompressed_module(path, rootfs / "lib/modules" / f"{name}.ko")
        order.append(name)
    (rootfs / "etc/guest-modules").write_text("".join(f"{m}\n" for m in order))
    for ko in modules:
        # Debug info stays in build/image-*/modules-build for people and gdb.
        run(["strip", "--strip-debug", "-o", rootfs / "lib/modules" / ko.name, ko])
    for tool in tools:
        shutil.copy2(tool, rootfs / "usr/bin" / tool.name)
    init = rootfs / "init"
    shutil.copy2(HERE / "init", init)
    init.chmod(0o755)
    return order


def write_cpio(rootfs: Path, dest: Path) -> None:
    """An uncompressed newc archive: the kernel unpacks it fastest under TCG."""
    for path in (rootfs, *rootfs.rglob("*")):
        os.utime(path, (INITRAMFS_MTIME, INITRAMFS_MTIME), follow_symlinks=False)
    names = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*"))
    with dest.open("wb") as archive:
        subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"],
            input="\n".join(names).encode(),
            cwd=rootfs,
            stdout=archive,
            check=True,
        )


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
XZ_MAGIC = b"\xfd7zXZ\x00"


def extract_vmlinux(bzimage: Path, dest: Path) -> bool:
    """Write the ELF kernel inside a bzImage to ``dest``, stripped of symbols.

    QEMU boots an ELF kernel with a PVH entry note directly in 32-bit mode:
    no real-mode setup and, above all, no decompression, which under TCG
    costs two seconds of every boot. Returns False if ``bzimage`` carries no
    PVH-capable ELF (then boot the bzImage).
    """
    data = bzimage.read_bytes()
    setup_sects = data[0x1F1] or 4
    start = (setup_sects + 1) * 512
    offset, length = struct.unpack_from("<II", data, 0x248)
    payload = data[start + offset : start + offset + length]
    tool = {ZSTD_MAGIC: "zstd", LZ4_LEGACY_MAGIC: "lz4"}.get(payload[:4])
    if tool is not None:
        # Kbuild appends the uncompressed size (4 bytes) after the frame.
        elf = subprocess.run(
            [tool, "-dcq"], input=payload[:-4], capture_output=True, check=True
        ).stdout
    elif payload.startswith(XZ_MAGIC):
        elf = lzma.LZMADecompressor().decompress(payload)
    else:
        return False
    if not elf.startswith(b"\x7fELF"):
        return False
    dest.write_bytes(elf)
    run(["strip", "--strip-all", dest])
    # XEN_ELFNOTE_PHYS32_ENTRY (18): the PVH entry point.
    notes = run(["readelf", "--notes", dest])
    pvh_note = r"Xen\s+0x[0-9a-f]+\s+(Unknown note type: \(0x00000012\)|XEN_ELFNOTE_PHYS32_ENTRY)"
    if not re.search(pvh_note, notes):
        dest.unlink()
        return False
    return True


def boot_kernel(kernel: KernelInputs, out: Path) -> Path:
    """The file QEMU boots: a PVH ELF where there is one (fast under TCG)."""
    vmlinux = out / "vmlinux"
    if kernel.elf is not None:
        run(["strip", "--strip-all", "-o", vmlinux, kernel.elf])
        return vmlinux
    assert kernel.bzimage is not None
    vmlinuz = out / "vmlinuz"
    shutil.copyfile(kernel.bzimage, vmlinuz)
    return vmlinux if extract_vmlinux(vmlinuz, vmlinux) else vmlinuz


def build(
    flavour: str, out: Path, cache: Path, qemu_info: Path | None, driver_only: bool = False
) -> Manifest | None:
    """Build the image; with ``driver_only``, stop after modules and tools."""
    if is_kernel_tree(flavour):
        kernel = kernel_from_tree(flavour, cache)
    elif flavour == DEBUG_FLAVOUR:
        kernel = debug_kernel(cache)
    else:
        kernel = debian_kernel(flavour, cache)
    out.mkdir(parents=True, exist_ok=True)

    modules = build_modules(kernel, out, cache)
    # Held to the checkpatch.pl of each kernel whose source is at hand.
    if kernel.checkpatch is not None:
        check_style(kernel.checkpatch)
    tools = build_tools(out)
    if driver_only:
        return None
    assert qemu_info is not None
    client_public, host_public = install_ssh_keys(out, cache)

    boot_file = boot_kernel(kernel, out)

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        rootfs = Path(tmp) / "rootfs"
        net_order = populate_rootfs(
            rootfs,
            kernel=kernel,
            modules=modules,
            tools=tools,
            out=out,
            client_public=client_public,
        )
        write_cpio(rootfs, out / "initramfs.cpio")

    firmware = {"bios": FAST_BIOS, "dirs": ":".join(str(d) for d in FIRMWARE_DIRS)}
    firmware["bios_sha256"] = sha256_file(FIRMWARE_DIRS[0] / FAST_BIOS)
    firmware["qemu-system-data"] = installed_version("qemu-system-data")
    firmware["seabios"] = installed_version("seabios")

    qemu = {str(k): str(v) for k, v in json.loads(qemu_info.read_text()).items()}
    packages = list(kernel.packages)
    packages += [PackageInput(name=p, version=installed_version(p)) for p in USERLAND_PACKAGES]
    files = [
        FileOutput(path=str(p.relative_to(out)), sha256=sha256_file(p), size=p.stat().st_size)
        for p in (boot_file, out / "initramfs.cpio", *modules, *tools)
    ]
    manifest = Manifest(
        flavour=flavour,
        kernel_release=kernel.release,
        kernel_config_sha256=sha256_file(kernel.config),
        packages=tuple(packages),
        files=tuple(files),
        qemu=qemu,
        firmware=firmware,
        modules=tuple([*net_order, *(m.stem for m in modules)]),
        built_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        extra={
            "host_key": host_public,
            "client_key": "ssh/client_key",
            "boot_kernel": boot_file.name,
            "checkers": "yes" if kernel.has_checkers else "no",
            "pmd_pfnmap": "yes" if kernel.maps_pfns_with_pmds else "no",
            "module_build": kernel.module_build,
            "module_source": str(module_source_dir(out, kernel, cache)),
            **({"checkpatch": str(kernel.checkpatch)} if kernel.checkpatch else {}),
            **({"kernel_tree": str(kernel.tree)} if kernel.tree is not None else {}),
            # The unstripped kernel, for gdb (dmagate.gdb): the debug build's own.
            **({"symbols": str(kernel.symbols)} if kernel.symbols is not None else {}),
        },
    )
    (out / "manifest.json").write_text(manifest.to_json())
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", default="6.12",
                        help=f"kernel flavour ({', '.join(FLAVOURS)}) or a built kernel tree")
    parser.add_argument("--out", type=Path, default=None,
                        help="image directory (default: build/image-<flavour>, as the harness "
                        "looks for it)")
    parser.add_argument("--qemu-build-info", type=Path, default=None)
    parser.add_argument("--driver-only", action="store_true",
                        help="build the modules and guest tools only")
    parser.add_argument(
        "--cache",
        type=Path,
        default=cache_dir(),
    )
    args = parser.parse_args(argv)
    if args.qemu_build_info is None and not args.driver_only:
        parser.error("--qemu-build-info is required unless --driver-only")
    try:
        out = (args.out or ROOT / "build" / image_dir_name(args.flavour)).resolve()
        manifest = build(args.flavour, out, args.cache, args.qemu_build_info, args.driver_only)
    except (BuildError, FlavourError) as err:
        print(f"image: {err}", file=sys.stderr)
        return 1
    if manifest is None:
        print(f"image: modules and tools for {args.flavour} built in {out}")
        return 0
    print(f"image: {out} ready ({manifest.kernel_release}, modules: "
          f"{', '.join(manifest.modules)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
