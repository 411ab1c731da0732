"""QEMU's gdb stub on a dmagate guest: where it listens, and a gdb command
line that loads the kernel's symbols (where the image has them: the debug
flavour's own vmlinux) and each project module's at the addresses it was
loaded to (/sys/module/<name>/sections, read as root in the guest).

Stock Debian kernels have no symbols here (their -dbg packages are about a
gigabyte each); gdb still breaks on the driver's functions and reads its
data through the module's own symbols. The guest boots with ``nokaslr``
when the stub is on, so kernel addresses match vmlinux.
"""

from __future__ import annotations

import shlex
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dmagate.vm import VM

GDB_HOST = "127.0.0.1"
# The module sections gdb places (the rest hold no code or data it resolves).
_SECTION_PREFIXES = (".text", ".data", ".bss", ".rodata")


def free_port(host: str = GDB_HOST) -> int:
    """A TCP port nothing listens on now (QEMU's -gdb takes no port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def qemu_args(port: int) -> tuple[str, ...]:
    return ("-gdb", f"tcp:{GDB_HOST}:{port}")


def parse_sections(text: str) -> dict[str, int]:
    """``name address`` lines (as the guest prints them) as a mapping."""
    sections = {}
    for line in text.splitlines():
        name, _, address = line.strip().partition(" ")
        if name.startswith(_SECTION_PREFIXES) and address.startswith("0x"):
            sections[name] = int(address, 16)
    return sections


def module_sections(vm: VM, module: str) -> dict[str, int]:
    out = vm.run(f"cd /sys/module/{module}/sections && for s in .*; do "
                 "printf '%s %s\\n' \"$s\" \"$(cat \"$s\")\"; done", check=True).stdout
    return parse_sections(out)


def add_symbol_file(ko: Path, sections: Mapping[str, int]) -> str:
    """gdb's add-symbol-file for a module loaded at ``sections``."""
    if ".text" not in sections:
        raise ValueError(f"{ko.name}: no .text address among {sorted(sections)}")
    others = " ".join(f"-s {name} {address:#x}" for name, address in sorted(sections.items())
                      if name != ".text")
    return f"add-symbol-file {ko} {sections['.text']:#x} {others}".rstrip()


def gdb_command(port: int, modules: Mapping[Path, Mapping[str, int]],
                vmlinux: Path | None = None,
                sources: tuple[str, Path] | None = None) -> list[str]:
    """``sources``: where the modules were compiled and where their sources
    are now (build_image compiles them in a directory of its own)."""
    argv = ["gdb", "-q", "-iex", "set confirm off", "-iex", "set pagination off"]
    if sources is not None:
        argv += ["-iex", f"set substitute-path {sources[0]} {sources[1]}"]
    if vmlinux is not None:
        argv.append(str(vmlinux))
    argv += ["-ex", f"target remote {GDB_HOST}:{port}"]
    for ko, sections in modules.items():
        argv += ["-ex", add_symbol_file(ko, sections)]
    return argv


def vm_gdb_command(vm: VM) -> list[str]:
    """The gdb command line for ``vm``: its stub, its kernel's symbols if the
    image has them, and every project module loaded in it (none if the guest
    does not answer SSH: a hung guest still has its stub)."""
    if vm.gdb_port is None:
        raise ValueError(f"{vm.options.name}: started without the gdb stub (VMOptions.gdb)")
    modules = {}
    try:
        loaded = vm.run("cut -d' ' -f1 /proc/modules", timeout=10, check=True).stdout.split()
        for entry in vm.manifest.files:
            ko = vm.image_dir / entry.path
            if ko.suffix == ".ko" and ko.stem in loaded:
                modules[ko] = module_sections(vm, ko.stem)
    except (OSError, TimeoutError, RuntimeError):
        modules = {}
    symbols = vm.manifest.extra.get("symbols")
    vmlinux = Path(symbols) if symbols and Path(symbols).exists() else None
    compiled_in = vm.manifest.extra.get("module_source")
    sources = (compiled_in, vm.image_dir / "modules-build") if compiled_in else None
    return gdb_command(vm.gdb_port, modules, vmlinux, sources)


def describe(vm: VM) -> str:
    """What to type to debug ``vm``, one command."""
    return shlex.join(vm_gdb_command(vm))

