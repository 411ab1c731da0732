"""AddressSanitizer, LeakSanitizer and UBSan reports from a QEMU built with
them (``make qemu-asan``): the options that make the reports reliable, and
finding them in QEMU's stderr afterwards.

A plain QEMU ignores these variables, so the harness sets them for every
QEMU it starts and scans every QEMU's stderr; only a sanitizer build can
print a report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

ASAN_OPTIONS = (
    "halt_on_error=1",  # the first report ends QEMU: what follows may be its consequence
    "abort_on_error=0",  # exit(1), not abort(): no core file, a plain exit status
    "detect_leaks=1",  # LeakSanitizer at exit: QMP "quit" lets QEMU exit normally
)
LSAN_OPTIONS = (
    "print_suppressions=0",  # the table of used suppressions is noise in a test report
)
UBSAN_OPTIONS = (
    "halt_on_error=1",  # QEMU's UBSan is recoverable: without this it would carry on
    "print_stacktrace=1",  # else UBSan prints only the source line
)

# The first line of each kind of report. ASan and LSan print "==PID==ERROR:
# ..."; UBSan prints "file.c:LINE:COL: runtime error: ...".
REPORT_START = re.compile(
    r"^(?:==\d+==ERROR: (?P<sanitizer>AddressSanitizer|LeakSanitizer)\b"
    r"|\S+:\d+:\d+: runtime error: )",
    re.MULTILINE,
)
# A report's excerpt: the top of each of its parts (the bad access and its
# stack, where the memory was allocated, where freed, each leak), without
# ASan's shadow-memory dump. The whole report stays in the log.
SECTION_LINES = 10
EXCERPT_LINES = 40


@dataclass(frozen=True)
class SanitizerReport:
    """One report: which sanitizer, and its first lines (header and top frames)."""

    sanitizer: str
    excerpt: str


def sanitizer_options(environ: Mapping[str, str]) -> dict[str, str]:
    """ASAN_OPTIONS, LSAN_OPTIONS and UBSAN_OPTIONS for a QEMU started from
    ``environ``. Options already set there come last, so a developer's own
    setting (say ``detect_leaks=0``) wins."""
    return {
        name: ":".join(filter(None, (*options, environ.get(name, ""))))
        for name, options in (
            ("ASAN_OPTIONS", ASAN_OPTIONS),
            ("LSAN_OPTIONS", LSAN_OPTIONS),
            ("UBSAN_OPTIONS", UBSAN_OPTIONS),
        )
    }


def find_reports(text: str) -> list[SanitizerReport]:
    """The sanitizer reports in ``text`` (a QEMU's stderr), in order."""
    matches = list(REPORT_START.finditer(text))
    spans = pairwise([*(match.start() for match in matches), len(text)])
    reports = []
    for match, (start, end) in zip(matches, spans, strict=True):
        sanitizer = match["sanitizer"] or "UBSan"
        reports.append(SanitizerReport(sanitizer, _excerpt(text[start:end], sanitizer)))
    return reports


def _excerpt(report: str, sanitizer: str) -> str:
    """The first lines of each part of a report, up to its end: ASan and LSan
    end with a SUMMARY line, UBSan with the blank line after its stack."""
    kept: list[str] = []
    in_section = 0
    for line in report.splitlines():
        if not line.strip():
            if sanitizer == "UBSan":
                break
            if in_section:
                kept.append("")  # sections stay apart, as ASan printed them
            in_section = 0
            continue
        in_section += 1
        if in_section <= SECTION_LINES:
            kept.append(line)
        if line.startswith("SUMMARY: "):
            break  # what follows is ASan's shadow-memory dump, or QEMU again
    return "\n".join(kept[:EXCERPT_LINES]).rstrip()


def scan_log(path: Path) -> list[SanitizerReport]:
    """The reports in a stderr log; none if there is no log."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return find_reports(text)


def format_reports(reports: list[SanitizerReport], log: Path) -> str:
    """A failure message: every report's first lines, then where the rest is."""
    body = "\n\n".join(r.excerpt for r in reports)
    return f"{len(reports)} sanitizer report(s) from QEMU:\n{body}\n(whole reports in {log})"
