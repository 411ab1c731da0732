"""Random fault-rule texts (datasheet §8) with the spec's verdict: each
rule drawn valid or broken in one of the ways a script can break it."""

from __future__ import annotations

import random

RULE_FAULTS = ("dma-error", "partial", "corrupt", "stall", "duplicate-completion", "drop-irq",
               "late-write", "stray-write", "delayed-irq", "out-of-order", "wrong-tag")
NOT_RULE_FAULTS = ("spurious-irq", "ignore-reset", "dead", "irq-storm", "nope")
OPS = ("fill", "checksum", "transform")
MAX_RULES = 16


def _param(rng: random.Random) -> tuple[str, bool]:
    """One KEY=VALUE and whether it is valid."""
    key = rng.choice(("op", "length", "sq-index", "skip", "every", "probability", "seed",
                      "times", "bogus"))
    if key == "op":
        good = "|".join(rng.sample(OPS, rng.randint(1, 3)))
        return rng.choice([(f"op={good}", True), ("op=copy", False), ("op=", False)])
    if key in ("length", "sq-index"):
        lo = rng.choice((0, 1, 4096, 2**32 - 1))
        hi = rng.choice((lo, lo + 4096, 2**32 - 1))
        choices = [(f"{key}={lo}", True), (f"{key}={lo}-{hi}", hi <= 2**32 - 1),
                   (f"{key}={hi + 1}-{lo}", False), (f"{key}=x", False),
                   (f"{key}={2**32}", False)]
        return rng.choice(choices)
    if key == "every":
        return rng.choice([(f"every={rng.randint(1, 10)}", True), ("every=0", False)])
    if key == "probability":
        return rng.choice([(f"probability={rng.random():.3f}", True), ("probability=1", True),
                           ("probability=1.5", False), ("probability=-0.1", False),
                           ("probability=nan", False)])
    if key in ("skip", "seed", "times"):
        return rng.choice([(f"{key}={rng.choice((0, 1, 3, 2**64 - 1))}", True),
                           (f"{key}={2**64}", False), (f"{key}=z", False)])
    return "bogus=1", False


def random_rule(rng: random.Random) -> tuple[str, bool]:
    if rng.random() < 0.1:
        fault, valid = rng.choice(NOT_RULE_FAULTS), False
    else:
        fault, valid = rng.choice(RULE_FAULTS), True
    parts = [fault]
    keys: set[str] = set()
    for _ in range(rng.randint(0, 4)):
        text, ok = _param(rng)
        key = text.partition("=")[0]
        # every and probability are two ways of one trigger: one of them.
        if key in ("every", "probability") and {"every", "probability"} & keys:
            continue
        keys.add(key)
        parts.append(text)
        valid &= ok
    return ":".join(parts), valid


def random_rules(rng: random.Random) -> tuple[str, bool]:
    """A whole fault-rules value and whether the device must accept it."""
    count = rng.choice((0, 1, 1, 2, 3, MAX_RULES, MAX_RULES + 1))
    rules = [random_rule(rng) for _ in range(count)]
    valid = all(ok for _, ok in rules) and count <= MAX_RULES
    return ";".join(text for text, _ in rules), valid
