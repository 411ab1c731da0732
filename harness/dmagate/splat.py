"""Find kernel bug reports ("splats") in raw serial console text.

Modelled on syzkaller's Linux report parser (pkg/report/linux.go): the same
report headers, a similar ignore list, and titles of the same shape
("WARNING in foo", "KASAN: slab-use-after-free Read in foo", "possible
deadlock in foo", "kernel panic: MSG"), so titles are stable across runs and
can be matched by tests. It is an independent, smaller implementation.

Console text may mix kernel lines with a shell prompt on the same line
(``/ # [    4.07] BUG: ...``), carry printk timestamps and caller ids or
not, and end lines with \\r\\n; all of that is handled here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

REPORT_MAX_LINES = 200

# "[    4.075716] " and an optional caller id "[  T153] " / "[    C1] ".
_PREFIX = re.compile(r"\[\s*\d+\.\d+\](?:\s*\[\s*[TC]\d+\])?\s?")
_FRAME = re.compile(r"^\s*(?:\[<[0-9a-f]+>\]\s*)?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")
_RIP = re.compile(r"\bRIP: 0010:([A-Za-z_][\w.]*)\+0x")
_SUFFIX = re.compile(r"\.(?:isra|constprop|part|cold|llvm)\.?\d*.*$")

# Frames that say how a report was printed, not where the bug is.
_NOISE_FRAMES = frozenset(
    """dump_stack dump_stack_lvl show_stack __dump_stack __warn warn_slowpath_fmt
    report_bug handle_bug exc_invalid_op asm_exc_invalid_op panic __might_sleep
    __might_resched ___might_sleep __might_fault might_fault schedule __schedule
    schedule_timeout schedule_preempt_disabled lock_acquire lock_release
    lock_acquire.part _raw_spin_lock _raw_spin_lock_irq _raw_spin_lock_irqsave
    _raw_spin_lock_bh mutex_lock mutex_lock_nested __mutex_lock __mutex_lock_common
    down_read down_write rcu_lock_acquire kasan_report print_report
    kasan_check_range __asan_load1 __asan_load2 __asan_load4 __asan_load8
    __asan_store1 __asan_store2 __asan_store4 __asan_store8 __kasan_check_read
    __kasan_check_write check_preemption_disabled debug_smp_processor_id
    kmemleak_alloc __kmalloc __kmalloc_noprof kmalloc_trace kmalloc_trace_noprof
    __kmalloc_cache_noprof kmem_cache_alloc kmem_cache_alloc_noprof
    kmem_cache_alloc_lru slab_post_alloc_hook kmalloc_noprof kzalloc_noprof
    __kvmalloc_node_noprof kvmalloc_node debug_dma_sync_single_for_cpu
    debug_dma_sync_single_for_device debug_dma_unmap_page check_sync check_unmap
    dma_unmap_page_attrs dma_sync_single_for_cpu dma_sync_single_for_device
    __dma_sync_single_for_cpu __dma_sync_single_for_device
    """.split()
)

# Lines that look like report headers but are not bugs (after syzkaller).
_IGNORED = tuple(
    re.compile(p)
    for p in (
        r"WARNING: /etc/ssh/moduli does not exist",
        r"INFO: lockdep is turned off",
        r"INFO: Stall ended before state dump start",
        r"INFO: NMI handler .* took too long to run",
        r"_INFO::",
        r"WARNING: kernel stack regs has bad",
        r"WARNING: kernel stack frame pointer has bad",
        r"WARNING: stack recursion",
    )
)


@dataclass(frozen=True)
class Splat:
    kind: str  # BUG, WARNING, KASAN, LOCKDEP, PANIC, ... (see _HEADERS)
    title: str  # e.g. "WARNING in splat_test_warn"
    line: int  # 0-based index of the header line in the scanned text
    report: str  # the report's lines, prefixes stripped


@dataclass(frozen=True)
class _Header:
    kind: str
    pattern: re.Pattern[str]
    title: Callable[[re.Match[str], Sequence[str]], str]
    end: str = "trace"  # "trace": ---[ end trace; "kasan": ===== line; "task": </TASK>


def _strip(line: str) -> str:
    """The kernel message of a console line: text after the last printk prefix."""
    line = line.rstrip("\r")
    prefixes = list(_PREFIX.finditer(line))
    return line[prefixes[-1].end() :] if prefixes else line


def _func(name: str) -> str:
    return _SUFFIX.sub("", name)


def _rip(report: Sequence[str]) -> str:
    for line in report:
        match = _RIP.search(line)
        if match:
            return _func(match.group(1))
    return _frame(report)


def _frame(report: Sequence[str], after: str = "Call Trace:") -> str:
    """First meaningful stack frame after ``after`` (or anywhere if absent)."""
    started = not any(after in line for line in report)
    for line in report:
        if not started:
            started = after in line
            continue
        if line.lstrip().startswith("? "):
            continue
        match = _FRAME.match(line)
        if match and _func(match.group(1)) not in _NOISE_FRAMES:
            return _func(match.group(1))
    return "?"


def _lock_frame(report: Sequence[str]) -> str:
    """lockdep: the function where the lock was being taken ("at: func+0x")."""
    for line in report:
        match = re.search(r"\bat: ([A-Za-z_][\w.]*)\+0x", line)
        if match and _func(match.group(1)) not in _NOISE_FRAMES:
            return _func(match.group(1))
    return _frame(report)


def _kasan(match: re.Match[str], report: Sequence[str]) -> str:
    access = ""
    for line in report:
        found = re.match(r"(Read|Write) of size \d+", line)
        if found:
            access = f" {found.group(1)}"
            break
    return f"KASAN: {match.group(1)}{access} in {_func(match.group(2))}"


def _clean(text: str) -> str:
    """A message made stable: no addresses, sizes in brackets or trailing dots."""
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"0x[0-9a-f]+|\b[0-9a-f]{8,}\b", "ADDR", text)
    return re.sub(r"\s+", " ", text).strip(" .:,")


def _dma_api_or_warning(match: re.Match[str], report: Sequence[str]) -> str:
    for line in report:
        found = re.search(r"DMA-API: (?:\S+ \S+: )?(.*)", line)
        if found:
            return "DMA-API: " + _clean(found.group(1))
    return f"WARNING in {_func(match.group(1))}"


def _t(template: str, where: Callable[[Sequence[str]], str] | None = None) -> Callable[
    [re.Match[str], Sequence[str]], str
]:
    """Title from a template: {0}.. are the match groups, {where} a function."""

    def make(match: re.Match[str], report: Sequence[str]) -> str:
        groups = [_clean(g) if g else "" for g in match.groups()]
        return template.format(*groups, where=where(report) if where else "")

    return make


_LOCKDEP_HEADERS = (
    (r"WARNING: possible circular locking dependency detected", "possible deadlock in {where}"),
    (r"WARNING: possible recursive locking detected", "possible deadlock in {where}"),
    (r"WARNING: inconsistent lock state", "inconsistent lock state in {where}"),
    (r"WARNING: possible irq lock inversion dependency detected",
     "possible deadlock in {where}"),
    (r"WARNING: \S+-safe -> \S+-unsafe lock order detected", "possible deadlock in {where}"),
    (r"WARNING: bad unlock balance detected!", "bad unlock balance in {where}"),
    (r"WARNING: held lock freed!", "held lock freed in {where}"),
    (r"WARNING: lock held when returning to user space!",
     "lock held when returning to user space in {where}"),
    (r"WARNING: .* still has locks held!", "still has locks held in {where}"),
    (r"WARNING: locking bug in", "locking bug in {where}"),
)

_HEADERS: tuple[_Header, ...] = (
    _Header("KASAN", re.compile(r"^BUG: KASAN: ([\w-]+) in ([\w.]+)"), _kasan, "kasan"),
    _Header("KFENCE", re.compile(r"^BUG: KFENCE: ([\w-]+) in ([\w.]+)"),
            _t("KFENCE: {0} in {1}"), "kasan"),
    _Header("UBSAN", re.compile(r"^UBSAN: ([\w-]+) in (\S+)"),
            _t("UBSAN: {0} in {where}", _frame), "kasan"),
    _Header("BUG", re.compile(r"^BUG: kernel NULL pointer dereference"),
            _t("BUG: unable to handle kernel NULL pointer dereference in {where}", _rip)),
    _Header("BUG", re.compile(r"^BUG: unable to handle (?:page fault|kernel paging request)"),
            _t("BUG: unable to handle kernel paging request in {where}", _rip)),
    _Header("ATOMIC_SLEEP", re.compile(r"^BUG: sleeping function called from invalid context"),
            _t("BUG: sleeping function called from invalid context in {where}", _frame),
            "task"),
    _Header("ATOMIC_SLEEP", re.compile(r"^BUG: scheduling while atomic"),
            _t("BUG: scheduling while atomic in {where}", _frame), "task"),
    _Header("SOFTLOCKUP", re.compile(r"^(?:watchdog: )?BUG: soft lockup"),
            _t("BUG: soft lockup in {where}", _rip), "task"),
    _Header("WORKQUEUE_LOCKUP", re.compile(r"^BUG: workqueue lockup"),
            _t("BUG: workqueue lockup"), "task"),
    _Header("LOCKDEP", re.compile(r"^BUG: (?:held lock freed|.* still has locks held)"),
            _t("BUG: still has locks held in {where}", _lock_frame), "task"),
    _Header("BUG", re.compile(r"^kernel BUG at "), _t("kernel BUG in {where}", _rip)),
    _Header("BUG", re.compile(r"^BUG: Bad page (state|map)"), _t("BUG: Bad page {0}"), "task"),
    _Header("BUG", re.compile(r"^BUG: (.+)"), _t("BUG: {0}"), "task"),
    *(
        _Header("LOCKDEP", re.compile("^" + pattern), _t(title, _lock_frame), "task")
        for pattern, title in _LOCKDEP_HEADERS
    ),
    _Header("LOCKDEP", re.compile(r"^WARNING: suspicious RCU usage"),
            _t("suspicious RCU usage in {where}", _frame), "task"),
    _Header("WARNING", re.compile(r"^WARNING: CPU: \d+ PID: \d+ at \S+ ([\w.]+)\+0x"),
            _dma_api_or_warning),
    _Header("WARNING", re.compile(r"^WARNING: (?!CPU: )(.+)"), _t("WARNING: {0}")),
    _Header("GPF", re.compile(r"^general protection fault"),
            _t("general protection fault in {where}", _rip)),
    _Header("INVALID_OPCODE", re.compile(r"^(?:Oops: )?invalid opcode: "),
            _t("invalid opcode in {where}", _rip)),
    _Header("DIVIDE_ERROR", re.compile(r"^(?:Oops: )?divide error: "),
            _t("divide error in {where}", _rip)),
    _Header("DOUBLE_FAULT", re.compile(r"^PANIC: double fault"),
            _t("PANIC: double fault in {where}", _rip)),
    _Header("STACK_OVERFLOW", re.compile(r"^(?:BUG: )?kernel stack overflow"),
            _t("kernel stack overflow in {where}", _rip)),
    _Header("OOPS", re.compile(r"^Oops: "), _t("Oops in {where}", _rip)),
    _Header("OOPS", re.compile(r"^Internal error: "), _t("Internal error in {where}", _rip)),
    _Header("HUNG_TASK", re.compile(r"^INFO: task \S+ blocked for more than \d+ seconds"),
            _t("INFO: task hung in {where}", _frame), "task"),
    _Header("RCU_STALL",
            re.compile(r"^(?:rcu: )?INFO: rcu_(?:preempt|sched|bh) (?:self-)?detected"),
            _t("INFO: rcu detected stall in {where}", _frame), "task"),
    _Header("LOCKDEP", re.compile(r"^INFO: trying to register non-static key"),
            _t("INFO: trying to register non-static key in {where}", _frame), "task"),
    _Header("NETDEV_REFCOUNT", re.compile(r"^unregister_netdevice: waiting for (\S+)"),
            _t("unregister_netdevice: waiting for {0} to become free"), "line"),
    _Header("KMEMLEAK", re.compile(r"^unreferenced object 0x[0-9a-f]+ \(size \d+\)"),
            _t("memory leak in {where}", lambda r: _frame(r, after="backtrace")), "leak"),
    _Header("PANIC", re.compile(r"^Kernel panic - not syncing: (.+)"),
            _t("kernel panic: {0}"), "panic"),
)


def _header_at(message: str) -> _Header | None:
    if any(p.search(message) for p in _IGNORED):
        return None
    for header in _HEADERS:
        if header.pattern.search(message):
            return header
    return None


def _report_end(header: _Header, messages: Sequence[str], start: int, limit: int) -> int:
    """Index one past the report's last line; ``limit`` is the next header."""
    stop = min(limit, start + REPORT_MAX_LINES, len(messages))
    if header.end == "line":
        return start + 1
    # Markers in order of preference: the first kind found ends the report.
    markers = {
        "trace": ("---[ end trace", "</TASK>"),
        "kasan": ("=" * 20,),
        "task": ("</TASK>", "---[ end trace"),
        "leak": ("unreferenced object",),
        "panic": ("---[ end Kernel panic", "Kernel Offset:", "</TASK>"),
    }[header.end]
    for marker in markers:
        for i in range(start + 1, stop):
            if marker == "unreferenced object":
                if messages[i].startswith(marker) or not messages[i].startswith(" "):
                    return i
            elif messages[i].startswith(marker):
                return i + 1
    return stop


# Headers that continue the report before them rather than starting one:
# the "Oops:" after "kernel BUG at" or a NULL dereference, and the panic
# that an oops causes when panic_on_oops is set.
_CONTINUATION = re.compile(
    r"^(?:Oops: |invalid opcode: |Kernel panic - not syncing: Fatal exception)"
)


def find_splats(console_text: str) -> list[Splat]:
    """Every kernel report in ``console_text``, in order."""
    messages = [_strip(line) for line in console_text.split("\n")]
    starts: list[tuple[int, _Header]] = []
    for index, message in enumerate(messages):
        header = _header_at(message)
        if header is None:
            continue
        if starts and _CONTINUATION.search(message) and index - starts[-1][0] < 40:
            continue
        starts.append((index, header))
    splats = []
    previous_end = 0
    for n, (start, header) in enumerate(starts):
        limit = starts[n + 1][0] if n + 1 < len(starts) else len(messages)
        end = _report_end(header, messages, start, limit)
        # WARN() and BUG() print their message between "cut here" and the
        # header; it belongs to the report.
        begin = start
        for i in range(start - 1, max(start - 5, previous_end - 1), -1):
            if "[ cut here ]" in messages[i]:
                begin = i
                break
        previous_end = end
        report = messages[begin:end]
        match = header.pattern.search(messages[start])
        assert match is not None
        splats.append(
            Splat(
                kind="DMA_API" if header.kind == "WARNING" and any(
                    "DMA-API: " in line for line in report
                ) else header.kind,
                title=header.title(match, report),
                line=start,
                report="\n".join(report),
            )
        )
    return splats


def format_splats(splats: Sequence[Splat]) -> str:
    """One title per line, then the first report in full."""
    if not splats:
        return "no kernel splats"
    lines = [f"- {s.kind}: {s.title} (console line {s.line + 1})" for s in splats]
    return "\n".join([*lines, "", "first report:", splats[0].report])
