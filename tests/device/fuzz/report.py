"""The run's reporting: its identity (seed, operations), its recent history,
what it found, and the failure that ends it."""

from __future__ import annotations

import collections
from dataclasses import dataclass


class FuzzFailure(AssertionError):
    """What the fuzz found, with the seed and operation count to replay it."""


class PhaseAbort(Exception):
    """Keep-going mode: a violation was recorded; give up the phase."""


@dataclass
class Finding:
    kind: str
    first: str
    at_op: int
    count: int = 1


class Reporter:
    """The run's identity (seed, operations), its recent history and what
    it found. Every check ends in ``violation`` when it fails."""

    def __init__(self, seed: int, total: int, keep_going: bool) -> None:
        self.seed, self.total, self.keep_going = seed, total, keep_going
        self.op = 0
        self.phase = "start"
        self.recent: collections.deque[str] = collections.deque(maxlen=30)
        self.findings: dict[str, Finding] = {}
        self.notes: collections.Counter[str] = collections.Counter()

    def tick(self, cost: int = 1) -> None:
        self.op += cost

    def log(self, what: str) -> None:
        self.recent.append(f"  op {self.op:>6} [{self.phase}] {what}")

    def replay(self) -> str:
        return (f"replay: DMAGATE_FUZZ_SEED={self.seed} DMAGATE_FUZZ_OPS={self.total} "
                ".venv/bin/pytest tests/device/test_fuzz.py -q -s")

    def message(self, what: str) -> str:
        return "\n".join([
            f"dmagate fuzz, seed {self.seed}, at operation {self.op} of {self.total} "
            f"({self.phase}): {what}",
            self.replay(),
            "last operations:", *self.recent,
        ])

    def violation(self, kind: str, what: str, *, abort: bool = True) -> None:
        """An invariant does not hold: fail (keep-going: record it, and
        unless ``abort`` is False give up the phase)."""
        if not self.keep_going:
            raise FuzzFailure(self.message(f"[{kind}] {what}"))
        if kind in self.findings:
            self.findings[kind].count += 1
        else:
            self.findings[kind] = Finding(kind, what, self.op)
            print(f"\nfuzz finding [{kind}] at op {self.op} ({self.phase}): {what}")
        if abort:
            raise PhaseAbort(kind)

    def expect(self, kind: str, got: object, want: object, what: str) -> None:
        if got != want:
            self.violation(kind, f"{what}: got {_show(got)}, expected {_show(want)}")

    def summary(self) -> str:
        lines = [f"{len(self.findings)} kinds of violation (seed {self.seed}):"]
        lines += [f"  [{f.kind}] x{f.count}, first at op {f.at_op}: {f.first}"
                  for f in self.findings.values()]
        return "\n".join(lines)


def _show(value: object) -> str:
    return hex(value) if isinstance(value, int) and not isinstance(value, bool) else repr(value)
