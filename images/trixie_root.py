"""Debian 13 (trixie) for kernels newer than this Debian 12 host can build
modules for (KERNEL=7.3).

Debian builds its 7.x kernels in trixie: their kbuild tools (fixdep, modpost,
objtool) need glibc 2.38 (bookworm has 2.36), and their headers ask for
gcc-14, the compiler the kernel was built with (bookworm has gcc-12, which
lacks options the kernel's config turned on). So modules for them are built
in a trixie build root made by debootstrap, with the kernel's own headers
and kbuild packages unpacked into it at their usual paths: exactly Debian's
own module build, with nothing of the host's in it.

Both parts live in the cache and leave the host's apt state alone:
- ``Archive``: a private apt view of trixie, trixie-updates,
  trixie-backports and trixie-security, on the mirrors the host already uses;
- ``BuildRoot``: ``~/.cache/dmagate/buildroots/trixie-<key>``; commands run in
  it through chroot, with /proc mounted in a mount namespace of their own (so
  nothing stays mounted when they end). Root only.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from buildutil import BuildError, run, run_both

from dmagate.manifest import PackageInput

SUITE = "trixie"
SUITES = ("trixie", "trixie-updates", "trixie-backports")
# What a kernel's module build runs: the compiler, make, and the libraries
# of linux-kbuild's tools (pahole for the modules' BTF).
ROOT_PACKAGES = ("gcc-14", "make", "libc6-dev", "libelf1t64", "libssl3t64", "zlib1g", "pahole")
# Packages whose versions the image manifest records.
RECORDED = ("gcc-14", "libc6", "binutils", "make", "pahole")
LIST_MAX_AGE_S = 6 * 3600
HOST_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


def host_mirrors(sources: tuple[Path, Path] = HOST_SOURCES) -> tuple[str, str]:
    """(main, security) URIs of the bookworm archive this host is configured
    with, from sources.list and sources.list.d (one-line and deb822 entries)."""
    main = security = ""
    listing, parts = sources
    files = [listing, *sorted(parts.glob("*.sources")), *sorted(parts.glob("*.list"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        pairs: list[tuple[str, str]] = []
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
                if uris and suites:
                    pairs += [(uris.group(1), s) for s in suites.group(1).split()]
        else:
            for match in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
                pairs.append((match.group(1), match.group(2)))
        for uri, suite in pairs:
            if suite == "bookworm" and not main:
                main = uri
            elif suite == "bookworm-security" and not security:
                security = uri
    if not main:
        raise BuildError("no Debian bookworm entry in /etc/apt/sources.list{,.d}: add one")
    return main, security or main.removesuffix("/debian") + "/debian-security"


@dataclass(frozen=True)
class Archive:
    """apt options that point apt-get and apt-cache at trixie's package lists,
    kept in ``state`` instead of the host's /var/lib/apt."""

    state: Path

    @property
    def options(self) -> tuple[str, ...]:
        return (
            "-o", "Dir::Etc::sourcelist=/dev/null",
            "-o", f"Dir::Etc::sourceparts={self.state / 'sources'}",
            "-o", f"Dir::State::Lists={self.state / 'lists'}",
            "-o", f"Dir::Cache={self.state / 'cache'}",
            "-o", "Dir::State::status=/dev/null",
            "-o", "APT::Architecture=amd64",
        )

    def update(self) -> None:
        """Refresh the lists when they are missing or older than six hours."""
        stamp = self.state / "updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < LIST_MAX_AGE_S:
            return
        main, security = host_mirrors()
        for d in ("sources", "lists/partial", "cache/archives/partial"):
            (self.state / d).mkdir(parents=True, exist_ok=True)
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        (self.state / "sources" / "trixie.sources").write_text(
            f"Types: deb\nURIs: {main}\nSuites: {' '.join(SUITES)}\nComponents: main\n"
            f"Signed-By: {keyring}\n\n"
            f"Types: deb\nURIs: {security}\nSuites: {SUITE}-security\nComponents: main\n"
            f"Signed-By: {keyring}\n"
        )
        run(["apt-get", *self.options, "-o", "APT::Sandbox::User=root", "-qq", "update"])
        stamp.touch()

    def package_names(self, prefix: str) -> list[str]:
        return run(["apt-cache", *self.options, "pkgnames", prefix]).split()


def _key() -> str:
    return hashlib.sha256(" ".join((SUITE, *ROOT_PACKAGES)).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class BuildRoot:
    path: Path

    def run(self, cmd: Sequence[str]) -> tuple[str, str]:
        """Run ``cmd`` chrooted in the build root, with its own /proc (objtool
        reads it); the mount ends with the command's mount namespace."""
        script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
        return run_both(["unshare", "--mount", "--propagation", "private",
                         "sh", "-c", script, str(self.path), *cmd])

    def unpack(self, debs: Sequence[Path]) -> None:
        """Unpack packages at their own paths (not installed: no maintainer
        scripts), once each."""
        done = self.path / "var/lib/dmagate-unpacked"
        done.mkdir(parents=True, exist_ok=True)
        for deb in debs:
            if not (done / deb.name).exists():
                run(["dpkg-deb", "-x", deb, self.path])
                (done / deb.name).touch()

    def packages(self) -> tuple[PackageInput, ...]:
        admin = self.path / "var/lib/dpkg"
        out = run(["dpkg-query", f"--admindir={admin}", "-W", "-f=${Package} ${Version}\\n",
                   *RECORDED])
        return tuple(PackageInput(name=f"{SUITE}-root:{name}", version=version)
                     for name, version in (line.split() for line in out.splitlines()))

    @property
    def description(self) -> str:
        return (f"modules built in a Debian {SUITE} build root (debootstrap --variant=minbase: "
                f"{', '.join(ROOT_PACKAGES)}) with the kernel's own headers and kbuild")


def build_root(cache: Path) -> BuildRoot:
    """The trixie build root, made on first use (about a minute)."""
    path = cache / "buildroots" / f"{SUITE}-{_key()}"
    if (path / ".made").exists():
        return BuildRoot(path)
    if os.geteuid() != 0:
        raise BuildError(f"modules for this kernel are built in a Debian {SUITE} chroot, "
                         "which takes root: run make as root or with sudo")
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap not found: run `make deps`")
    main, _ = host_mirrors()
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    print(f"image: making a Debian {SUITE} build root in {path} (about a minute)", flush=True)
    proc = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(ROOT_PACKAGES)}",
         SUITE, str(partial), main],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"debootstrap {SUITE} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    (path / ".made").touch()
    return BuildRoot(path)
