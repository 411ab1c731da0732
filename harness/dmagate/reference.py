"""Independent reference implementations of what the device computes
(docs/device.md, section 4), for checking its output byte by byte."""

from __future__ import annotations

import zlib

import numpy as np
from numpy.typing import NDArray

from dmagate.hwregs import HW

_MASK64 = (1 << 64) - 1


def mix64(z: int) -> int:
    """splitmix64's finaliser, on Python ints (the textbook form)."""
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _MASK64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def fill_byte(seed: int, offset: int) -> int:
    """One byte of the FILL pattern, computed on its own."""
    word = mix64(seed ^ ((offset // 8) * HW["FILL_GOLDEN"] & _MASK64))
    return (word >> (8 * (offset % 8))) & 0xFF


def fill_pattern(seed: int, offset: int, length: int) -> bytes:
    """FILL bytes for transfer offsets [offset, offset + length), vectorised."""
    if length == 0:
        return b""
    first, last = offset // 8, (offset + length - 1) // 8
    k = np.arange(first, last + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) ^ (k * np.uint64(HW["FILL_GOLDEN"]))
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    data = z.astype("<u8").tobytes()
    start = offset - first * 8
    return data[start : start + length]


def transform(data: bytes, key: int, offset: int = 0) -> bytes:
    """TRANSFORM: byte i XOR byte ((offset + i) mod 8) of the key."""
    key_bytes = np.frombuffer(key.to_bytes(8, "little"), dtype=np.uint8)
    index = (np.arange(len(data)) + offset) % 8
    out: NDArray[np.uint8] = np.frombuffer(data, dtype=np.uint8) ^ key_bytes[index]
    return out.tobytes()


def crc32(data: bytes) -> int:
    """CRC-32 (IEEE 802.3), as the completion record carries it."""
    return zlib.crc32(data) & 0xFFFFFFFF


def crc32_bitwise(data: bytes) -> int:
    """The same CRC bit by bit, from its definition (slow: small data only)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF
