"""Kernel taint flags (Documentation/admin-guide/tainted-kernels.rst)."""

from __future__ import annotations

# Bit n of /proc/sys/kernel/tainted is the n-th letter.
TAINT_LETTERS = "PFSRMBUDAWCIOELKXTN"
OOT_MODULE = 1 << 12  # O: an out-of-tree module was loaded
UNSIGNED_MODULE = 1 << 13  # E: an unsigned module was loaded
# Loading the project's own modules sets exactly these; nothing else is fine.
ALLOWED_TAINT = OOT_MODULE | UNSIGNED_MODULE


def letters(mask: int) -> str:
    """Taint letters for a mask, e.g. 0x3200 -> "WOE"; unknown bits as #n."""
    out = []
    for bit in range(max(mask.bit_length(), 0)):
        if mask & (1 << bit):
            out.append(TAINT_LETTERS[bit] if bit < len(TAINT_LETTERS) else f"#{bit}")
    return "".join(out)


def new_taint(before: int, after: int) -> int:
    """Taint bits set since ``before`` other than the allowed module bits."""
    return after & ~before & ~ALLOWED_TAINT
