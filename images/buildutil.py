"""Helpers the image build shares: commands, a lock, Debian's archive."""

from __future__ import annotations

import contextlib
import fcntl
import re
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from dmagate.manifest import sha256_file

# sha256_file: the manifest's own hash, for the modules that take it from here.
__all__ = ["BuildError", "candidate", "depends", "download", "exclusive", "installed_version",
           "run", "run_both", "sha256_file"]


class BuildError(RuntimeError):
    pass


def run(cmd: Sequence[str | Path], cwd: Path | None = None) -> str:
    return run_both(cmd, cwd)[0]


def run_both(cmd: Sequence[str | Path], cwd: Path | None = None) -> tuple[str, str]:
    """Run ``cmd``; (stdout, stderr), or BuildError with both if it fails."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BuildError(
            f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc.stdout, proc.stderr


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Held by one process at a time (another checkout's build, say)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def installed_version(package: str) -> str:
    return run(["dpkg-query", "-W", "-f=${Version}", package]).strip()


def candidate(package: str, apt: Sequence[str] = ()) -> str:
    """The version apt would install; ``apt`` holds options that point apt at
    another archive's state (trixie_root.Archive), else the host's."""
    out = run(["apt-cache", *apt, "policy", package])
    match = re.search(r"Candidate: (\S+)", out)
    if not match or match.group(1) == "(none)":
        raise BuildError(f"no candidate for {package}: run `make deps` (it runs apt-get update)")
    return match.group(1)


def depends(package: str, apt: Sequence[str] = ()) -> list[str]:
    out = run(["apt-cache", *apt, "depends", "--important",
               f"{package}={candidate(package, apt)}"])
    return re.findall(r"^\s*\|?Depends: (\S+)$", out, re.M)


def download(
    packages: Iterable[str], version: str, dest: Path, apt: Sequence[str] = ()
) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    def cached(package: str) -> Path | None:
        return next(dest.glob(f"{package}_{version}_*.deb"), None)

    wanted = {p: cached(p) for p in packages}
    missing = [p for p, deb in wanted.items() if deb is None]
    if missing:
        # The sandbox user cannot write into the cache; root downloads it.
        run(
            ["apt-get", *apt, "download", "-qq", "-o", "APT::Sandbox::User=root",
             *(f"{p}={version}" for p in missing)],
            cwd=dest,
        )
    debs = []
    for p in wanted:
        deb = cached(p)
        if deb is None:
            raise BuildError(f"apt-get download did not produce {p}")
        debs.append(deb)
    return debs
