"""The bench's arithmetic and its outputs, on made-up results: ratios per
layout and size, the summary lines, the plots as real PNG files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dmagate.bench.cycle import (
    LAYOUTS,
    PROTECTIONS,
    CycleCase,
    all_cases,
    combine_rounds,
    cycles_for,
)
from dmagate.bench.report import cycle_ratios, plot, summary, write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(protect: str, layout: str, size: str, median_ns: int) -> dict[str, Any]:
    return {"protect": protect, "layout": layout, "size": size, "median_ns": median_ns,
            "submit_ns": 30, "zap_ns": 10, "device_ns": 50, "wake_ns": 5, "wait_map_ns": 2,
            "touch_ns": 40,
            "fault_ns": 20, "map_ns": 15, "protect_ns": 0, "faults": 1, "pmds": 0}


def _results() -> dict[str, Any]:
    base = {"none": 1000, "driver": 1100, "mprotect": 1500}
    cycles = [_row(p, layout, size, base[p] * factor)
              for layout in LAYOUTS for size, factor in (("4K", 1), ("1M", 4)) for p in base]
    return {
        "boot": {"harness_s": [3.0, 3.2, 3.1], "floor_s": [2.0, 2.2, 2.1],
                 "harness_median_s": 3.1, "floor_median_s": 2.1,
                 "restore_s": [0.6, 0.62, 0.64], "restore_median_s": 0.62},
        "device": [{"op": "FILL", "device_MBps": 1400.0, "baseline": "memcpy",
                    "host_MBps": 7000.0, "runs": 3}],
        "cycles": cycles,
        "cycle_ratios": cycle_ratios(cycles),
    }


def test_ratios_compare_each_protection_with_none_at_the_same_size_and_layout() -> None:
    ratios = cycle_ratios(_results()["cycles"])
    assert len(ratios) == len(LAYOUTS) * 2
    one_1m = next(r for r in ratios if r["layout"] == "one" and r["size"] == "1M")
    assert one_1m["none_us"] == 4.0
    assert round(one_1m["driver_vs_none"], 3) == 1.1
    assert round(one_1m["mprotect_vs_none"], 3) == 1.5
    assert round(one_1m["driver_vs_mprotect"], 3) == round(1100 / 1500, 3)


def test_summary_names_every_ratio() -> None:
    text = summary(_results())
    assert "harness/floor 1.48x" in text
    assert "fresh guest from a snapshot: 0.62 s to SSH (restore/boot 0.20x)" in text
    assert "FILL" in text and "(20 %)" in text
    assert "1.10x" in text and "1.50x" in text


def test_plots_and_json_are_written(tmp_path: Path) -> None:
    results = _results()
    written = plot(results, tmp_path)
    assert {p.name for p in written} == {"cycle-by-size.png", "cycle-breakdown.png",
                                         "device.png", "boot.png"}
    for path in written:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    write_json(results, tmp_path / "bench.json")
    assert json.loads((tmp_path / "bench.json").read_text())["cycle_ratios"]


def test_cases_cover_every_protection_layout_and_size() -> None:
    cases = all_cases(("4K", "64M"))
    assert len(cases) == len(PROTECTIONS) * len(LAYOUTS) * 2
    assert CycleCase("mprotect", "vmas16", "1M").command(7) == (
        "dmagatectl cycle -s 1M -n 7 --protect mprotect --vmas 16")
    assert CycleCase("driver", "one", "4K").command(3) == (
        "dmagatectl cycle -s 4K -n 3 --protect driver")


def test_bigger_buffers_run_fewer_cycles_but_never_fewer_than_ten() -> None:
    assert cycles_for("4K", 1000) == 1000
    assert cycles_for("1M", 1000) == 250
    assert cycles_for("64M", 1000) == 10


def test_rounds_combine_into_medians_with_counts_summed_and_extremes_kept() -> None:
    rounds = [{"protect": "driver", "size": "4K", "cycles": 200, "bad": 0, "median_ns": m,
               "min_ns": m - 10, "max_ns": m + 100, "zap_ns": z}
              for m, z in ((300, 5), (100, 7), (200, 6))]
    combined = combine_rounds(rounds)
    assert combined == {"protect": "driver", "size": "4K", "cycles": 600, "bad": 0,
                        "median_ns": 200, "min_ns": 90, "max_ns": 400, "zap_ns": 6}
