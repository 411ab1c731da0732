"""Where a run's seed comes from.

DMAGATE_FUZZ_SEED replays a run. Otherwise a developer's run takes a fresh
random seed, to find what no run has yet; under CI (CI set and not "false")
the seed is fixed by the source tree, so that one tree is always checked
the same way: a gate does not turn red on a seed nobody has run, and every
change still brings a new seed.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Mapping
from pathlib import Path


def tree_seed(root: Path) -> int | None:
    """32 bits of the git tree's hash (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD^{tree}"],
                             capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out.stdout.strip()[:8], 16)


def choose_seed(environ: Mapping[str, str], root: Path) -> tuple[int, str]:
    """The seed and where it came from."""
    if "DMAGATE_FUZZ_SEED" in environ:
        return int(environ["DMAGATE_FUZZ_SEED"], 0), "DMAGATE_FUZZ_SEED"
    if environ.get("CI", "") not in ("", "0", "false"):
        seed = tree_seed(root)
        if seed is not None:
            return seed, "CI: fixed by the git tree"
    return random.SystemRandom().randrange(1 << 32), "random"
