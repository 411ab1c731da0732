"""What `make bench` leaves behind: one JSON file of every number, PNG plots
(matplotlib, no display needed) and the ratios people ask for, as text."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dmagate.bench.cycle import LAYOUTS, PROTECTIONS, median_of

Results = dict[str, Any]


def write_json(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def _sizes(cycles: Sequence[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in cycles:
        if r["size"] not in seen:
            seen.append(r["size"])
    return seen


def cycle_ratios(cycles: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layout and size: driver and mprotect against no protection."""
    rows = []
    for layout in LAYOUTS:
        for size in _sizes(cycles):
            med = {p: median_of(list(cycles), protect=p, layout=layout, size=size)
                   for p in PROTECTIONS}
            if math.isnan(med["none"]):
                continue
            rows.append({"layout": layout, "size": size,
                         **{f"{p}_us": med[p] / 1000 for p in PROTECTIONS},
                         "driver_vs_none": med["driver"] / med["none"],
                         "mprotect_vs_none": med["mprotect"] / med["none"],
                         "driver_vs_mprotect": med["driver"] / med["mprotect"]})
    return rows


def summary(results: Results) -> str:
    """The ratios, as lines for a terminal or a note."""
    lines = []
    boot = results.get("boot")
    if boot:
        lines.append(f"boot to SSH: harness {boot['harness_median_s']:.2f} s, floor "
                     f"{boot['floor_median_s']:.2f} s (harness/floor "
                     f"{boot['harness_median_s'] / boot['floor_median_s']:.2f}x)")
        if "restore_median_s" in boot:
            lines.append(f"fresh guest from a snapshot: {boot['restore_median_s']:.2f} s to SSH "
                         f"(restore/boot "
                         f"{boot['restore_median_s'] / boot['harness_median_s']:.2f}x)")
    for rate in results.get("device", []):
        lines.append(f"device {rate['op']:<9} 64 MiB: {rate['device_MBps']:7.0f} MB/s, host "
                     f"{rate['baseline']} {rate['host_MBps']:7.0f} MB/s "
                     f"({100 * rate['device_MBps'] / rate['host_MBps']:.0f} %)")
    ratios = results.get("cycle_ratios", [])
    if ratios:
        lines.append(f"{'cycle':<10} {'size':>4}  {'driver':>9} {'none':>9} {'mprotect':>9}"
                     f"  {'drv/none':>8} {'mpr/none':>8} {'drv/mpr':>8}")
    for row in ratios:
        lines.append(f"{row['layout']:<10} {row['size']:>4}  {row['driver_us']:8.0f}u "
                     f"{row['none_us']:8.0f}u {row['mprotect_us']:8.0f}u  "
                     f"{row['driver_vs_none']:7.2f}x {row['mprotect_vs_none']:7.2f}x "
                     f"{row['driver_vs_mprotect']:7.2f}x")
    return "\n".join(lines)


def plot(results: Results, out_dir: Path) -> list[Path]:
    """PNG plots of what ``results`` holds; their paths."""
    import matplotlib  # noqa: PLC0415 - only `make bench` needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    cycles = results.get("cycles", [])
    if cycles:
        sizes = _sizes(cycles)
        fig, axes = plt.subplots(1, len(LAYOUTS), figsize=(5 * len(LAYOUTS), 4), sharey=True)
        for ax, layout in zip(axes, LAYOUTS, strict=True):
            for protect in PROTECTIONS:
                ys = [median_of(cycles, protect=protect, layout=layout, size=s) / 1000
                      for s in sizes]
                ax.plot(sizes, ys, marker="o", label=protect)
            ax.set_yscale("log")
            ax.set_title(f"mapping: {layout}")
            ax.set_xlabel("buffer size")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("median cycle (us), zero-delay device")
        axes[0].legend()
        fig.suptitle("SUBMIT -> interrupt -> wake -> touch of every page")
        fig.tight_layout()
        written.append(_save(fig, out_dir / "cycle-by-size.png", plt))
        written.append(_breakdown(cycles, sizes, out_dir / "cycle-breakdown.png", plt))
    if results.get("device"):
        fig, ax = plt.subplots(figsize=(6, 4))
        rates = results["device"]
        xs = range(len(rates))
        ax.bar([x - 0.2 for x in xs], [r["device_MBps"] for r in rates], 0.4, label="device")
        ax.bar([x + 0.2 for x in xs], [r["host_MBps"] for r in rates], 0.4,
               label="host (memcpy / crc32)")
        ax.set_xticks(list(xs), [r["op"] for r in rates])
        ax.set_ylabel("MB/s, 64 MiB")
        ax.legend()
        written.append(_save(fig, out_dir / "device.png", plt))
    if results.get("boot"):
        boot = results["boot"]
        fig, ax = plt.subplots(figsize=(5, 4))
        boxes = {"harness": boot["harness_s"], "floor": boot["floor_s"]}
        if "restore_s" in boot:
            boxes["restore"] = boot["restore_s"]
        ax.boxplot(list(boxes.values()), tick_labels=list(boxes))
        ax.set_ylabel("boot to SSH login (s)")
        written.append(_save(fig, out_dir / "boot.png", plt))
    return written


def _breakdown(cycles: Sequence[dict[str, Any]], sizes: list[str], path: Path,
               plt: Any) -> Path:
    """Where a driver-mode cycle's time goes (one mapping), per size, in %."""
    # label -> (part, minus): the part's time less what a finer part shows
    parts = {
        "SUBMIT (not zap)": ("submit_ns", "zap_ns"),
        "zap": ("zap_ns", ""),
        "device + interrupt": ("device_ns", ""),
        "interrupt to wake (not mapping back)": ("wake_ns", "wait_map_ns"),
        "read/WAIT mapping back": ("wait_map_ns", ""),
        "touch (not faults)": ("touch_ns", "fault_ns"),
        "faults (not page tables)": ("fault_ns", "map_ns"),
        "page-table work": ("map_ns", ""),
    }

    def share(r: dict[str, Any], key: str, minus: str) -> float:
        return max(float(r[key]) - (float(r[minus]) if minus else 0.0), 0.0)
    rows = [r for s in sizes for r in cycles
            if r["protect"] == "driver" and r["layout"] == "one" and r["size"] == s]
    fig, ax = plt.subplots(figsize=(8, 4))
    bottoms = [0.0] * len(rows)
    for label, (key, minus) in parts.items():
        shares = [100 * share(r, key, minus) / max(sum(share(r, *p) for p in parts.values()), 1)
                  for r in rows]
        ax.bar([r["size"] for r in rows], shares, bottom=bottoms, label=label)
        bottoms = [b + s for b, s in zip(bottoms, shares, strict=True)]
    for i, r in enumerate(rows):
        ax.annotate(f"{r['median_ns'] / 1000:.0f} us", (i, 101), ha="center", fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("% of the cycle (medians of each part)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("driver revoking, one mapping")
    return _save(fig, path, plt)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
