"""Child processes that cannot outlive the harness."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn that makes the child get SIGKILL when this process dies.

    libc is resolved here, before the fork, so the child only makes one
    system call (no loader locks after fork in a threaded parent). The
    signal follows the death of the thread that forked: start children
    from the main thread. The child checks that the parent did not die
    before prctl took effect.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return in_child


def kill_group(pid: int) -> None:
    """SIGKILL the process group that ``pid`` leads; gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
