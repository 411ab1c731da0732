"""The guest image manifest: every input that went into one bootable guest.

``images/build_image.py`` writes it; the harness, the CLI's ``info`` and the
tests read it. This module is the one definition of its shape.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dmagate.flavours import DEBUG_FLAVOUR

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


def sha256_file(path: Path) -> str:
    """A file's sha256, as the manifest records files and packages."""
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while block := data.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class ManifestError(ValueError):
    """The manifest is missing, unreadable or of another schema."""


@dataclass(frozen=True)
class PackageInput:
    """One Debian package (binary or source) the image was built from."""

    name: str
    version: str
    sha256: str = ""


@dataclass(frozen=True)
class FileOutput:
    """One file the image consists of, relative to the image directory."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    flavour: str
    kernel_release: str
    kernel_config_sha256: str
    packages: tuple[PackageInput, ...]
    files: tuple[FileOutput, ...]
    qemu: dict[str, str]
    firmware: dict[str, str]
    modules: tuple[str, ...]
    built_at: str
    schema: int = SCHEMA_VERSION
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def has_checkers(self) -> bool:
        """The kernel runs the debug checkers (KASAN, lockdep, kmemleak, fault
        injection): the debug flavour, or a kernel tree configured with them."""
        return self.extra.get("checkers") == "yes" or self.flavour == DEBUG_FLAVOUR

    @property
    def maps_pfns_with_pmds(self) -> bool:
        """The kernel takes a driver's PMD entries for PFN mappings
        (CONFIG_ARCH_SUPPORTS_PMD_PFNMAP: 6.12 on, with transparent huge
        pages), so the driver maps whole 2 MiB stretches with one entry."""
        return self.extra.get("pmd_pfnmap") == "yes"

    def package(self, name: str) -> PackageInput:
        for pkg in self.packages:
            if pkg.name == name:
                return pkg
        raise KeyError(name)

    def file(self, path: str) -> FileOutput:
        for out in self.files:
            if out.path == path:
                return out
        raise KeyError(path)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def summary(self) -> str:
        """A few lines for people: what kernel, which QEMU, which inputs."""
        lines = [
            f"flavour     {self.flavour} (kernel {self.kernel_release})",
            f"kernel cfg  sha256 {self.kernel_config_sha256[:16]}",
            f"qemu        {self.qemu.get('source_package', '?')}"
            f" (tarball sha256 {self.qemu.get('tarball_sha256', '?')[:16]})",
            f"firmware    {self.firmware.get('bios', '?')}"
            f" from qemu-system-data {self.firmware.get('qemu-system-data', '?')}",
            f"modules     {', '.join(self.modules)}",
            f"built       {self.built_at}",
        ]
        lines += [f"package     {p.name} {p.version}" for p in self.packages]
        return "\n".join(lines)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            raw: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as err:
            raise ManifestError(f"manifest is not JSON: {err}") from err
        if raw.get("schema") != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema {raw.get('schema')!r}, this harness reads {SCHEMA_VERSION}:"
                " rebuild the image with `make image`"
            )
        try:
            return cls(
                flavour=str(raw["flavour"]),
                kernel_release=str(raw["kernel_release"]),
                kernel_config_sha256=str(raw["kernel_config_sha256"]),
                packages=tuple(PackageInput(**p) for p in raw["packages"]),
                files=tuple(FileOutput(**f) for f in raw["files"]),
                qemu={str(k): str(v) for k, v in raw["qemu"].items()},
                firmware={str(k): str(v) for k, v in raw["firmware"].items()},
                modules=tuple(str(m) for m in raw["modules"]),
                built_at=str(raw["built_at"]),
                extra={str(k): str(v) for k, v in raw.get("extra", {}).items()},
            )
        except (KeyError, TypeError) as err:
            raise ManifestError(f"manifest lacks or mistypes {err}") from err

    @classmethod
    def load(cls, image_dir: Path) -> Manifest:
        path = image_dir / MANIFEST_NAME
        try:
            return cls.from_json(path.read_text())
        except FileNotFoundError:
            raise ManifestError(
                f"no guest image at {image_dir}: run `make image` (with KERNEL= its flavour "
                "or kernel tree)"
            ) from None
