"""A seeded fuzz of the dmagate device as a hostile guest drives it
(datasheet docs/device.md, with the device v1.1 changes of issue 9); its
test is tests/device/test_fuzz.py.

Two kinds of phases alternate at random:

- chaos: every register with every access size, descriptors and SG lists
  that are half sense and half garbage, rings, SG segments and interrupt
  messages aimed at the device's own config space and its root port's
  (through MMCONFIG: Device Control, Slot Control, ...), at its BARs and at
  nothing; config writes (FLR, MSI/MSI-X, PM state, BARs, slot power,
  secondary bus reset), every property at its extremes (the rogue faults'
  too: dead, resets ignored, storms, late and stray writes, ...), random
  fault rules (valid ones accepted, canonical form stable), clock steps, system
  reset, hot-unplug and re-plug, migration into a new machine. Nothing is
  predicted but that QEMU lives, properties obey their ranges, and the
  device comes back clean after a reset.
- checked: descriptors a model predicts completely (status, bytes_done,
  CRC, every data and guard byte, phase, duplicates, interrupts, stats,
  fault counts), with fault knobs armed, the device timing varied, and
  migration or D3hot in the middle of transfers.

    DMAGATE_FUZZ_SEED=1234 DMAGATE_FUZZ_OPS=20000 .venv/bin/pytest tests/device/test_fuzz.py -q -s

DMAGATE_FUZZ_SEED replays a run (QEMU's bottom halves run between qtest
commands, so a replay follows the same path as long as the device does).
Without it a run takes a random seed, but under CI one fixed by the git
tree (module seed), so a commit is always checked the same way;
DMAGATE_FUZZ_OPS sets its length (default 100000, what CI runs). With
DMAGATE_FUZZ_KEEP_GOING=1 an invariant violation is recorded, the phase is
abandoned and the fuzz goes on, to see all that one seed finds; QEMU dying
always ends the run. DMAGATE_FUZZ_TRACE=1 adds the device's trace events
(but MMIO) to each QEMU's qemu-stderr.log, to see what it did last.

The modules, each with one purpose (none imports one further down this list):

- layout: the device's numbers, the machine's memory layout, small helpers
- seed: where a run's seed comes from (given, random, or the tree's under CI)
- report: the seed, the operation count, recent history, findings, failures
- board: the machine (q35, root port, device), hot-plug, migration, reset
- properties: qom-set against the properties' ranges
- aims: config registers a hostile guest points DMA and messages at
- context: what a phase uses of the run (a Protocol the runner satisfies)
- rules: random fault-rules texts with the spec's verdict
- chaos: the chaos phase
- model: a checked descriptor's plan and the model's prediction of it
- plans: random checked descriptors, some deliberately broken
- checked: the checked phase's batches, every completion checked
- checked_probes: the checked phase itself: batches, probes between them,
  stalls and self-inflicted FLR and unplug at its end
- runner: the run (Fuzzer), alternating the phases; crash reports
"""
