"""Snapshots nobody restored for days go when another is made (dmagate.snapshot)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dmagate.snapshot import UNUSED_DAYS, _prune


def test_only_long_unused_snapshots_and_their_locks_go(tmp_path: Path) -> None:
    stale = tmp_path / "guest-0000000000000001.mig"
    used = tmp_path / "guest-0000000000000002.mig"
    other = tmp_path / "notes.txt"
    for path in (stale, used, other, stale.with_name(stale.name + ".lock"),
                 used.with_name(used.name + ".lock")):
        path.write_text("x")
    long_ago = time.time() - (UNUSED_DAYS + 1) * 86400
    for path in (stale, other):
        os.utime(path, (long_ago, long_ago))
    _prune(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        used.name, used.name + ".lock", "notes.txt"]
