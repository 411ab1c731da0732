"""What a phase (chaos or checked) uses of the run that drives it
(runner.Fuzzer), so that the phases need not import the runner."""

from __future__ import annotations

import random
from typing import Protocol

from .aims import Aim
from .board import Board
from .properties import Properties
from .report import Reporter


class FuzzContext(Protocol):
    """The run's randomness, reporter, machine, properties and aim points,
    and how it brings the device back."""

    @property
    def rng(self) -> random.Random: ...

    @property
    def rep(self) -> Reporter: ...

    @property
    def board(self) -> Board: ...

    @property
    def props(self) -> Properties: ...

    @property
    def aims(self) -> list[Aim]: ...

    def quick_program(self) -> None:
        """Memory decode and bus mastering on, D0, BARs in place (mid-chaos)."""

    def recover_device(self) -> None:
        """The platform back, the device there (re-added if it went) and programmed."""
