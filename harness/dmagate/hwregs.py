"""The device's numbers, read from the one C header that defines them
(guest-driver/include/dmagate_hw.h), so Python never keeps a copy."""

from __future__ import annotations

import re
from pathlib import Path
from types import MappingProxyType
from typing import Final

HEADER = Path(__file__).resolve().parents[2] / "guest-driver" / "include" / "dmagate_hw.h"

_DEFINE = re.compile(r"^#define[ \t]+DMAGATE_(\w+)[ \t]+(.+?)[ \t]*(?:/\*.*)?$", re.M)
_VALUE = re.compile(r"^\(?\s*(0x[0-9a-fA-F]+|\d+)[uUlL]*\s*(?:<<\s*(\d+))?\s*\)?$")


def parse_header(text: str) -> dict[str, int]:
    """NAME -> value for every integer ``#define DMAGATE_NAME VALUE``."""
    values = {}
    for name, raw in _DEFINE.findall(text):
        match = _VALUE.match(raw)
        if match:
            values[name] = int(match.group(1), 0) << int(match.group(2) or 0)
    return values


HW: Final = MappingProxyType(parse_header(HEADER.read_text()))
