"""Where one command's output ends on the shared shell's stdout (dmagate.ssh)."""

from __future__ import annotations

import pytest

from dmagate.ssh import _strip_status

MARKER = b"dmagate-end-0123456789abcdef"


@pytest.mark.parametrize(("received", "status", "left"), [
    (b"out\n" + MARKER + b" 0\n", 0, b"out\n"),
    (b"no newline" + MARKER + b" 135\n", 135, b"no newline"),
    (MARKER + b" 2\n", 2, b""),
    # Not there yet: the line is cut, or only the command's output came.
    (b"out\n" + MARKER + b" 1", None, b"out\n" + MARKER + b" 1"),
    (b"out\n" + MARKER, None, b"out\n" + MARKER),
    (b"out\n", None, b"out\n"),
    # The command printed the marker's text itself, not as the last line.
    (MARKER + b" 0\nmore\n", None, MARKER + b" 0\nmore\n"),
])
def test_status_line_is_taken_off_the_end(received: bytes, status: int | None,
                                          left: bytes) -> None:
    buffer = bytearray(received)
    assert _strip_status(buffer, MARKER) == status
    assert bytes(buffer) == left
