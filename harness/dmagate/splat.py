"""Find kernel bug reports ("splats") in raw serial console text.

Modelled on syzkaller's Linux report parser (pkg/report/linux.go and
pkg/report/report.go), re-implemented small and pure:

- one table of report headers (``_HEADERS``): pattern -> kind, title, where
  the report ends; the first entry that matches a line wins, so specific
  entries come before catch-alls, as in syzkaller's ``linuxOopses``;
- one table of lines that look like headers but are not bugs (``_IGNORED``),
  after syzkaller's per-header ignore lists;
- titles of syzkaller's shape ("WARNING in foo", "KASAN: slab-use-after-free
  Read in foo", "possible deadlock in foo", "kernel panic: MSG"): the guilty
  function is the first stack frame that is not reporting, sanitizer,
  locking, allocator or string machinery (``_SKIP``), taken from the place
  syzkaller takes it for that header (RIP line, call trace, lockdep "at:"
  lines, kmemleak backtrace, the header itself).

Where this differs from syzkaller, on purpose:

- Headers must start the kernel message (after the printk timestamp, caller
  id, a shell prompt or terminal escapes), where syzkaller finds them
  anywhere in a line. Subsystem lines such as "Spectre V2 : WARNING: ..." or
  "RETBleed: WARNING: ..." are therefore never reports; syzkaller needs an
  ignore entry for each of them (we keep its entries anyway).
- Catch-all headers ("WARNING: <text>", "BUG: <text>", "INFO: <text>") only
  count on lines that carry a printk timestamp when the console has any, so
  user space printing "WARNING: ..." on the console is not a kernel splat.
- Every report in the text is returned (syzkaller's Parse returns the first).
  Lines that continue a report are folded into it, not counted again: the
  "Oops: ..." / "invalid opcode:" / "Internal error:" / "PANIC: double fault"
  line that die() prints right after "kernel BUG at", "BUG: kernel NULL
  pointer dereference" and the like, and a panic caused by an earlier report
  ("Kernel panic - not syncing: Fatal exception", "...: panic_on_warn set",
  "hung_task: blocked tasks", ...). Such a panic with no report before it
  (the report was lost) is a splat of its own, as in syzkaller. A panic with
  its own reason ("sysrq triggered crash", "VFS: Unable to mount root fs")
  is always its own splat.
- Reports the kernel repeats while the condition lasts (soft lockup, RCU
  stall, hung task, workqueue lockup, unregister_netdevice) count once per
  title.
- A WARNING whose message is a DMA-API debug error (kernel/dma/debug.c) is
  one splat of kind DMA_API, titled "DMA-API: <error> in <function>". So is
  dma-debug turning itself off for lack of memory, which would silently stop
  all later DMA-API checks.
- Stack frames are skipped by anchored patterns (``mutex_lock``), not by
  substrings, so a driver's own ``foo_alloc_buffer`` can still be guilty
  (hung tasks keep syzkaller's substring rule: the waiting is skipped).

Lines are numbered as ``console_text.split("\\n")`` numbers them (a "\\r\\n"
ending is one line break). ``Splat.report`` holds the report's kernel
messages without timestamps: the "cut here" line and WARN() message or the
"=====" separator before the header, the header, and everything to the end
marker ("---[ end trace", "=====" for KASAN/KFENCE, "</TASK>" for lockdep,
hung tasks and stalls, "---[ end Kernel panic" / "Kernel Offset:" for
panics), or to the next report / a bounded number of lines without one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["REPORT_MAX_LINES", "Splat", "find_splats", "format_splats"]

# The longest report kept when its end marker never comes.
REPORT_MAX_LINES = 400


@dataclass(frozen=True)
class Splat:
    kind: str  # short class: BUG, WARNING, KASAN, LOCKDEP, PANIC, DMA_API, ...
    title: str  # syzkaller-style, e.g. "WARNING in splat_test_warn"
    line: int  # 0-based index of the header line in the scanned text
    report: str  # the report's kernel messages, timestamps stripped


# --------------------------------------------------------------------------
# Console lines
# --------------------------------------------------------------------------

_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
# "[    1.234567] ", "[    1.234567][  T123] ", "[    1.234567] [    C1] ", "<4>[ ...".
_TIMESTAMP = re.compile(r"(?:<\d+>)?\[\s*\d+\.\d+\](?:\s*\[\s*[TC]\d+\])? ?")
_CALLER = re.compile(r"(?:<\d+>)?\[\s*[TC]\d+\] ?")
# Only on lines without a printk prefix: what the shell or getty put first.
_NOT_KERNEL = re.compile(
    r"^(?:\*\* \d+ printk messages dropped \*\* ?|[\w.@:~/-]*\s?[#$] |.*\slogin: )"
)


@dataclass(frozen=True)
class _Line:
    text: str  # the kernel message (or whatever the line holds), prefix stripped
    stamped: bool  # carried a printk timestamp or caller id


def _parse_line(raw: str) -> _Line:
    line = _ESCAPE.sub("", raw.replace("\r", ""))
    stamps = list(_TIMESTAMP.finditer(line))
    if stamps:  # text before the last stamp is an interrupted line or a prompt
        return _Line(line[stamps[-1].end() :], True)
    caller = _CALLER.match(line)
    if caller:
        return _Line(line[caller.end() :], True)
    return _Line(_NOT_KERNEL.sub("", line, count=1), False)


# --------------------------------------------------------------------------
# Stack frames and the guilty function
# --------------------------------------------------------------------------

_FUNC = r"([A-Za-z_]\w*)(?:\.[\w.]+)?\+0x[0-9a-f]+"  # "name.isra.0+0x1a" -> name
_FRAME = re.compile(r"^\s*(?:\[<?(?:0x)?[0-9a-f]+>?\]\s*)?(\?\s+)?" + _FUNC + r"/0x[0-9a-f]+")
_RIP = re.compile(
    r"^\s*(?:RIP: [0-9a-f]{4}:|E?IP: (?:[0-9a-f]{4}:)?|NIP: |pc ?: |PC is at )"
    r"(?:\[<?[0-9a-f]+>?\]\s*)*" + _FUNC
)
_AT = re.compile(r"\bat: (?:\[<?[0-9a-f]+>?\]\s*)?" + _FUNC)
_CALL_TRACE = re.compile(r"^\s*Call [Tt]race:")
_BACKTRACE = re.compile(r"^\s*backtrace(?: \(crc [0-9a-f]+\))?:")
_STACK_STOP = re.compile(
    r"^\s*(?:</TASK>|Call [Tt]race:|Allocated by task|Freed by task|Last potentially related"
    r"|Second to last potentially|(?:stack )?backtrace\b)"
)
_IRQ_OPEN = re.compile(r"^\s*<(?:IRQ|NMI|SOFTIRQ)>")
_IRQ_CLOSE = re.compile(r"^\s*</(?:IRQ|NMI|SOFTIRQ)>")
# Syscall entry wrappers: "__x64_sys_ioctl", "__se_sys_ioctl", "ksys_ioctl" -> "ioctl".
_SYSCALL_PREFIX = re.compile(
    r"^(?:__x64_|__ia32_|__arm64_|__se_|__do_|compat_)*(?:_{0,4}sys_|SyS_|SYSC_|ksys_)(?=\w)"
)


def _any(*patterns: str) -> re.Pattern[str]:
    """One pattern matching (at the start) any of ``patterns``."""
    return re.compile("|".join(f"(?:{p})" for p in patterns))


# Frames that say how a report was printed or which helper tripped, not
# where the bug is. Matched against the whole function name.
_SKIP_PATTERNS = (
    # reporting and trap machinery
    r"(?:__)?dump_stack(?:_lvl)?$", r"show_(?:stack|trace_log_lvl|regs\w*)$", r"dump_backtrace$",
    r"(?:__)?warn(?:_slowpath\w*|_printk|_alloc\w*|_bogus\w*)?$", r"(?:report|handle|fixup)_bug$",
    r"exc_\w+$", r"asm_\w+$", r"do_(?:error_)?trap$", r"(?:__)?die(?:_body)?$",
    r"oops_(?:begin|end)$", r"(?:v|nmi_)?panic$", r"print_\w*(?:report|description|bug|tainted)$",
    r"__pfx_\w+$", r"\w*_indirect_thunk\w*$",
    # sanitizers and debug checks
    r"_*(?:asan|kasan|hwasan|kmsan|kcsan|kfence|ubsan)_\w+$",
    r"check_memory_region\w*$", r"_*check_(?:heap_object|object_size)\w*$",
    r"_{0,3}might_(?:sleep|resched|fault)$", r"_*cant_(?:sleep|migrate)$",
    r"check_preemption_disabled$", r"debug_smp_processor_id$", r"__this_cpu_preempt_check$",
    # lockdep and locking primitives
    r"lockdep_\w+$", r"_*lock_(?:acquire|release|acquired|contended)\w*$",
    r"mark_(?:lock|usage|held_locks)\w*$", r"validate_chain$",
    r"check_(?:prev_add|prevs_add|noncircular|irq_usage|deadlock)$", r"register_lock_class$",
    r"_raw_(?:spin|read|write)_\w+$", r"do_raw_(?:spin|read|write)_\w+$",
    r"(?:native_)?queued_(?:spin|read|write)_\w+$",
    r"(?:__)?(?:spin|read|write)_(?:un|try)?lock\w*$",
    r"_*(?:rt_|ww_)?mutex_\w+$", r"_*(?:down|up)(?:_read|_write)?(?:_\w+)?$", r"rwsem_\w+$",
    r"osq_(?:un)?lock$", r"raw_spin_rq_\w+$", r"_*local_bh_(?:en|dis)able\w*$",
    # atomics, string and copy helpers, containers, refcounts
    r"(?:raw_|arch_)?atomic(?:64|_long)?_\w+$", r"(?:__)?(?:set|clear|change|test)_bit$",
    r"_*mem(?:cpy|set|move|cmp|chr|dup)\w*$",
    r"(?:sized_)?str(?:n|l|s)?(?:cpy|cmp|len|cat|chr|dup|str)\w*$",
    r"_*(?:raw_)?copy_(?:to|from)_(?:user|iter|kernel)\w*$",
    r"copy_(?:page|folio)_(?:to|from)_iter\w*$",
    r"rep_movs_alternative$", r"_*(?:get|put)_user\w*$", r"\w*printf$", r"_*v?printk\w*$",
    r"(?:dev|netdev)_(?:printk|emerg|alert|crit|err|warn|notice|info)\w*$",
    r"_*list_(?:add|del|replace|move|splice)\w*$", r"refcount_\w+$", r"kref_\w+$", r"_*rb_\w+$",
    # allocators (leaks and allocation-time checks name the caller)
    r"_*(?:k|kv|v)?(?:m|z|c|re)alloc\w*$", r"_*kmem_cache_\w+$", r"_*slab_\w+$",
    r"_*(?:alloc|get_free)_pages?\w*$", r"_*alloc_frozen_pages\w*$", r"_*folio_alloc\w*$",
    r"(?:kstrn?dup|kmemdup|kv?asprintf)\w*$", r"_*kv?free$", r"_*pcpu_\w+$",
    r"kmemleak_\w+$", r"create_object\w*$",
    # file_operations proxies in front of debugfs/procfs handlers
    r"full_proxy_\w+$", r"proc_reg_\w+$",
)
_SKIP = _any(*_SKIP_PATTERNS)
_DMA_SKIP = (
    r"_*(?:debug_)?dma_\w+$", r"check_(?:unmap|sync|for_stack|for_illegal_area)$",
    r"iommu_dma_\w+$", r"swiotlb_\w+$", r"_*(?:blocking_)?notifier_call_chain\w*$",
    r"_*device_(?:release_driver|driver_detach|del|unregister)\w*$", r"(?:bus_remove|driver)_\w+$",
    r"\w+_unregister_driver$", r"unbind_store$",
)

# Stalls loop somewhere below a dispatcher: the title names the frame just
# above the first of these (syzkaller's stall extractor).
_STALL_ANCHORS = _any(
    r"process_one_work$", r"worker_thread$", r"kthread$", r"ret_from_fork\w*$",
    r"smpboot_thread_fn$",
    r"do_syscall_\w+$", r"x64_sys_call$", r"(?:__)?do_fast_syscall_\w+$", r"invoke_syscall$",
    r"el0_svc\w*$", r"entry_SYSCALL\w*$", r"vfs_(?:read|write|ioctl|iter_read|iter_write|open)$",
    r"(?:compat_)?ioctl$", r"read$", r"write$", r"connect$", r"socketpair$",
    r"do_iter_readv_writev$", r"new_sync_(?:read|write)$", r"call_(?:read|write)_iter$",
    r"do_mmap$", r"mmap_region$", r"do_dentry_open$", r"__fput$", r"task_work_run$",
    r"\w*exit_to_user_mode\w*$", r"_*do_softirq$", r"handle_softirqs$", r"call_timer_fn$",
    r"_*run_timers?\w*$", r"__hrtimer_run_queues$", r"hrtimer_run_\w+$", r"run_ksoftirqd$",
    r"tasklet_(?:hi_)?action\w*$", r"__do_fault$", r"do_page_fault$", r"handle_mm_fault$",
    r"_*netif_receive_skb\w*$", r"_*sock_(?:sendmsg|recvmsg|release|ioctl|do_ioctl|mmap)$",
    r"(?:rtnetlink|nfnetlink)_rcv_msg$", r"netlink_dump$", r"start_secondary$",
    r"cpu_startup_entry$", r"smp_call_function\w*$",
)
# Hung tasks wait somewhere: skip the waiting (substrings, as syzkaller does),
# but group hangs behind RTNL or an RCU grace period.
_HANG_SKIP = re.compile(
    r"sched|_lock|down|rwsem|completion|kthread|wait|synchronize|context_switch|switch_to"
    r"|cancel_delayed_work|rcu_barrier"
)
_HANG_GROUPS = ((re.compile(r"rtnl_lock"), "rtnl_lock"),
                (re.compile(r"synchronize_(?:rcu|srcu|net|sched)"), "synchronize_rcu"))

_Source = Literal["header", "rip", "trace", "marks", "backtrace", "after_header"]
_Choose = Literal["first", "stall", "hang"]


def _canonical(frame: str) -> str:
    return _SYSCALL_PREFIX.sub("", frame, count=1)


def _stack(report: Sequence[str], start: re.Pattern[str], task_only: bool = False) -> list[str]:
    """Reliable frames of the first stack after a line matching ``start``
    (``task_only``: leaving out interrupt and NMI sections)."""
    frames: list[str] = []
    started, in_irq = False, False
    for line in report:
        if not started:
            started = bool(start.match(line))
            continue
        if frames and _STACK_STOP.match(line):
            break
        if task_only and _IRQ_OPEN.match(line):
            in_irq = True
        elif task_only and _IRQ_CLOSE.match(line):
            in_irq = False
        match = _FRAME.match(line)
        if match and not match.group(1) and not in_irq:
            frames.append(match.group(2))
    return frames


def _marks(report: Sequence[str], after: re.Pattern[str] | None) -> list[str]:
    """Functions on lockdep's "..., at: func+0x" and "[<addr>] func+0x" lines
    (those after the first line matching ``after``, if given)."""
    found: list[str] = []
    started = after is None
    for line in report:
        if not started:
            started = bool(after and after.search(line))
            continue
        at = _AT.search(line)
        frame = _FRAME.match(line)
        if at:
            found.append(at.group(1))
        elif frame and not frame.group(1):
            found.append(frame.group(2))
    return found


@dataclass(frozen=True)
class _Guilty:
    """Where a kind of report names its guilty function, and how to pick it."""

    sources: tuple[_Source, ...] = ("rip", "trace")
    skip: re.Pattern[str] = _SKIP
    choose: _Choose = "first"
    after: re.Pattern[str] | None = None  # "marks" only count after this line

    def frames(self, match: re.Match[str], report: Sequence[str]) -> list[str]:
        frames: list[str] = []
        for source in self.sources:
            frames += self._from(source, match, report)
        return [f for f in map(_canonical, frames) if not self.skip.match(f)]

    def _from(self, source: _Source, match: re.Match[str], report: Sequence[str]) -> list[str]:
        if source == "header":
            func = match.groupdict().get("func")
            return [func] if func else []
        if source == "rip":  # the first one: later ones repeat it or are user space
            rip = next((m for m in map(_RIP.match, report) if m), None)
            return [rip.group(1)] if rip else []
        if source == "trace":
            return _stack(report, _CALL_TRACE, task_only=self.choose == "stall")
        if source == "backtrace":
            return _stack(report, _BACKTRACE)
        if source == "after_header":  # KFENCE, KMSAN: frames follow the header
            return _stack(report, re.compile(r"\s*" + re.escape(match.string.strip())))
        return _marks(report, self.after)

    def __call__(self, match: re.Match[str], report: Sequence[str]) -> str:
        frames = self.frames(match, report)
        if not frames:
            return "corrupted"
        if self.choose == "stall":
            return _stall_frame(frames)
        if self.choose == "hang":
            return _hang_frame(frames)
        return frames[0]


def _stall_frame(frames: Sequence[str]) -> str:
    for i, frame in enumerate(frames):
        if _STALL_ANCHORS.match(frame):
            return frames[i - 1] if i else frame
    return frames[0]


def _hang_frame(frames: Sequence[str]) -> str:
    for frame in frames:
        for pattern, group in _HANG_GROUPS:
            if pattern.search(frame):
                return group
    return next((f for f in frames if not _HANG_SKIP.search(f)), frames[0])


def _skipping(*extra: str) -> re.Pattern[str]:
    return _any(*_SKIP_PATTERNS, *extra)


_RIP_TRACE = _Guilty()
_TRACE = _Guilty(("trace",))
_LOCK_MARKS = _Guilty(("marks", "trace"))

# --------------------------------------------------------------------------
# Titles
# --------------------------------------------------------------------------

_TitleFn = Callable[[re.Match[str], Sequence[str]], str]
_FREE_TEXT = ("msg", "what")  # groups copied from the console: sanitized


def _sanitize(text: str) -> str:
    """Make console text stable (after syzkaller's dynamicTitleReplacement)."""
    text = re.sub(_FUNC + r"/0x[0-9a-f]+", r"\1", text)
    text = re.sub(r"(\.\w+)(?::\d+)+", r"\1:LINE", text)
    text = re.sub(r"(?<![A-Za-z0-9])(?:0x)?[0-9a-f]{6,}\b", "ADDR", text)
    text = re.sub(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", "IP", text)
    text = re.sub(r"CPU#\d+", "CPU", text)
    text = re.sub(r"(?<!\w)\d+(?!\w)", "NUM", text)
    return re.sub(r"\s+", " ", text).strip()[:120]


def _title(template: str, guilty: _Guilty | None = None) -> _TitleFn:
    """Title from ``template``: {group} from the header match, {frame} from ``guilty``."""

    def make(match: re.Match[str], report: Sequence[str]) -> str:
        fields = {k: (_sanitize(v) if k in _FREE_TEXT else v) if v else ""
                  for k, v in match.groupdict().items()}
        if guilty is not None:
            fields["frame"] = guilty(match, report)
        return template.format_map(fields)

    return make


_KASAN_ACCESS = re.compile(r"^(Read|Write) (?:of size|at addr)")


def _kasan(match: re.Match[str], report: Sequence[str]) -> str:
    access = next((m.group(1) for m in map(_KASAN_ACCESS.match, report) if m), "")
    what = " ".join(filter(None, (match.group("type"), access)))
    return f"KASAN: {what} in {_Guilty(('header', 'trace'))(match, report)}"


def _ubsan(match: re.Match[str], report: Sequence[str]) -> str:
    what = match.group("what").strip().lower().replace(" ", "-")
    where = _Guilty(("trace",), _skipping(r"\w*overflow\w*$"))(match, report)
    return f"UBSAN: {what} in {where}"


def _workqueue_leak(match: re.Match[str], report: Sequence[str]) -> str:
    found = (re.search(r"(?:last function:|workfn=)\s*(\w+)", line) for line in report)
    func = next((m.group(1) for m in found if m), "corrupted")
    return f"BUG: workqueue leaked lock or atomic in {func}"


# WARN()s from generic checkers name the caller, not the checker.
@dataclass(frozen=True)
class _WarnSource:
    path: re.Pattern[str]
    title: str
    guilty: _Guilty


_WARN_SOURCES = (
    _WarnSource(re.compile(r"lib/refcount\.c"), "WARNING: refcount bug", _RIP_TRACE),
    _WarnSource(re.compile(r"kernel/locking/lockdep\.c"), "WARNING: locking bug",
                _Guilty(skip=_skipping(r"lock_sock\w*$", r"release_sock$"))),
    _WarnSource(re.compile(r"lib/debugobjects\.c"), "WARNING: ODEBUG bug",
                _Guilty(skip=_skipping(r"_*debug_\w+$", r"\w*(?:timer|work)_\w*$", r"_*vfree$"))),
    _WarnSource(re.compile(r"mm/usercopy\.c"), "WARNING: bad usercopy",
                _Guilty(skip=_skipping(r"\w*usercopy\w*$", r"__check_\w+$"))),
    _WarnSource(re.compile(r"lib/kobject\.c"), "WARNING: kobject bug",
                _Guilty(skip=_skipping(r"kobject_\w+$"))),
)
_DMA_LINE = re.compile(r"^DMA-API: (?!Mapped at:)(?:\S+ \S+: )?(?P<msg>.+)")
_DMA_GUILTY = _Guilty(("rip", "trace", "header"), _skipping(*_DMA_SKIP))


def _dma_api(match: re.Match[str], report: Sequence[str]) -> str | None:
    """Title of a DMA-API debug WARNING, or None if it is not one."""
    message = next((m.group("msg") for m in map(_DMA_LINE.match, report) if m), None)
    if message is None and "kernel/dma/debug.c" not in (match.groupdict().get("src") or ""):
        return None
    message = _sanitize((message or "error").split("[", 1)[0]).strip(" .:")
    return f"DMA-API: {message} in {_DMA_GUILTY(match, report)}"


def _warning(match: re.Match[str], report: Sequence[str]) -> str:
    dma = _dma_api(match, report)
    if dma is not None:
        return dma
    source = match.group("src") or ""
    for special in _WARN_SOURCES:
        if special.path.search(source):
            return f"{special.title} in {special.guilty(match, report)}"
    return f"WARNING in {_Guilty(('rip', 'trace', 'header'))(match, report)}"


# --------------------------------------------------------------------------
# The header table
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _End:
    """Where a report ends: the first line starting with one of ``markers``
    (the first marker found in order of preference; inclusive), else before
    the next report or after ``cap`` lines."""

    markers: tuple[str, ...] = ()
    cap: int = REPORT_MAX_LINES
    indented: bool = False  # kmemleak: ends at the first line that is not indented
    paragraph: bool = False  # ends at the first empty line


_TRACE_END = _End(("---[ end trace", "</TASK>"))
_TASK_END = _End(("</TASK>", "---[ end trace"))
_SANITIZER_END = _End(("=" * 20, "---[ end trace", "</TASK>"))
_UBSAN_END = _End(("---[ end trace", "=" * 20, "</TASK>"))
_PANIC_END = _End(("---[ end Kernel panic", "Kernel Offset:", "</TASK>"))
_MESSAGE_END = _End(("---[ end trace", "</TASK>"), cap=40)
_LEAK_END = _End(indented=True, cap=80)
_PARAGRAPH_END = _End(paragraph=True, cap=60)
_LINE_END = _End(cap=1)

# "die": folded into a report just before it that dies (dies=True);
# "panic": folded into any report shortly before it.
_Follows = Literal["", "die", "panic"]


@dataclass(frozen=True)
class _Header:
    kind: str
    pattern: re.Pattern[str]  # matched at the start of the kernel message
    title: _TitleFn
    end: _End = _TRACE_END
    loose: bool = False  # catch-all: needs a printk prefix when the console has them
    dies: bool = False  # die() prints an "Oops: ..." line right after it
    follows: _Follows = ""


def _h(kind: str, pattern: str, title: _TitleFn | str, end: _End = _TRACE_END, *,
       loose: bool = False, dies: bool = False, follows: _Follows = "") -> _Header:
    """A table entry; "{FUNC}" in ``pattern`` captures a function as group "func"."""
    make = _title(title) if isinstance(title, str) else title
    return _Header(kind, re.compile(pattern.replace("{FUNC}", _FUNC.replace("(", "(?P<func>", 1))),
                   make, end, loose, dies, follows)


_ACQUIRE = re.compile(r"is trying to acquire lock")
_HEADERS: tuple[_Header, ...] = (
    # ---- sanitizers
    _h("KASAN", r"BUG: KASAN: (?P<type>double-free or invalid-free|double-free|invalid-free)"
       r"(?: in {FUNC})?",
       _title("KASAN: {type} in {frame}", _Guilty(("header", "trace"), _skipping(
           r"_*k?v?free\w*$", r"kfree_\w+$"))), _SANITIZER_END),
    _h("KASAN", r"BUG: KASAN: (?P<type>[a-z-]+)(?: in {FUNC})?", _kasan, _SANITIZER_END),
    _h("KFENCE", r"BUG: KFENCE: (?P<type>[a-z -]+?) in {FUNC}",
       _title("KFENCE: {type} in {frame}", _Guilty(("header", "after_header"))), _SANITIZER_END),
    _h("KMSAN", r"BUG: KMSAN: (?P<type>[a-z-]+) in {FUNC}",
       _title("KMSAN: {type} in {frame}", _Guilty(("header", "after_header"))), _SANITIZER_END),
    _h("KCSAN", r"BUG: KCSAN: (?P<what>.+)", "KCSAN: {what}", _SANITIZER_END),
    _h("UBSAN", r"UBSAN: (?P<what>.+?) in \S+", _ubsan, _UBSAN_END),
    # ---- faults reported as BUG: (die() follows)
    _h("BUG", r"BUG: (?:unable to handle kernel paging request|unable to handle page fault"
       r" for address|Unable to handle kernel data access)",
       _title("BUG: unable to handle kernel paging request in {frame}", _RIP_TRACE), dies=True),
    _h("BUG", r"BUG: (?:unable to handle kernel |[Kk]ernel )NULL pointer dereference",
       _title("BUG: unable to handle kernel NULL pointer dereference in {frame}", _RIP_TRACE),
       dies=True),
    _h("BUG", r"BUG: (?:unable|Unable) to handle kernel", "BUG: unable to handle kernel",
       dies=True),
    _h("BUG", r"Unable to handle kernel (?P<what>paging request|NULL pointer dereference"
       r"|access to user memory)",
       _title("BUG: unable to handle kernel {what} in {frame}", _RIP_TRACE), dies=True),
    _h("BUG", r"kernel BUG at lib/list_debug\.c", _title("BUG: corrupted list in {frame}", _TRACE),
       dies=True),
    _h("BUG", r"kernel BUG at mm/usercopy\.c", _title("BUG: bad usercopy in {frame}", _Guilty(
        ("trace",), _skipping(r"\w*usercopy\w*$", r"__check_\w+$"))), dies=True),
    _h("BUG", r"kernel BUG at ", _title("kernel BUG in {frame}", _Guilty(
        skip=_skipping(r"skb_\w+$"))), dies=True),
    _h("STACK_OVERFLOW", r"BUG: (?:\w+ )?stack guard page was hit",
       _title("BUG: stack guard page was hit in {frame}", _RIP_TRACE), dies=True),
    # ---- lockups and stalls
    _h("SOFTLOCKUP", r"(?:watchdog: )?BUG: soft lockup",
       _title("BUG: soft lockup in {frame}", _Guilty(choose="stall")), _TASK_END),
    _h("HARDLOCKUP", r"(?:watchdog: )?Watchdog detected hard LOCKUP",
       _title("watchdog: hard LOCKUP in {frame}", _Guilty(choose="stall")), _TASK_END),
    _h("RCU_STALL", r"(?:rcu: )?INFO: rcu_\w+ (?:self-)?detected(?: expedited)? stall",
       _title("INFO: rcu detected stall in {frame}", _Guilty(
           skip=_skipping(r"\w*rcu\w*$", r"\w*apic_timer_interrupt$"), choose="stall")),
       _TASK_END),
    _h("HUNG_TASK", r"INFO: task .* blocked (?:in I/O wait )?for more than \d+ seconds",
       _title("INFO: task hung in {frame}", _Guilty(("trace",), choose="hang")), _TASK_END),
    _h("HUNG_TASK", r"INFO: task .* can't die for more than",
       _title("INFO: task can't die in {frame}", _Guilty(("trace",), _skipping(
           r"_*schedule\w*$"))), _TASK_END),
    _h("WORKQUEUE_LOCKUP", r"BUG: workqueue lockup", "BUG: workqueue lockup", _PARAGRAPH_END),
    # ---- atomicity, preemption, lockdep
    _h("ATOMIC_SLEEP", r"BUG: sleeping function called from invalid context",
       _title("BUG: sleeping function called from invalid context in {frame}", _Guilty(
           ("trace",), _skipping(r"_*(?:msleep|ssleep|fsleep|usleep_range)\w*$",
                                 r"_*wait_for_completion\w*$", r"_*cond_resched\w*$",
                                 r"_*schedule\w*$"))), _TASK_END),
    _h("ATOMIC_SLEEP", r"BUG: scheduling while atomic",
       _title("BUG: scheduling while atomic in {frame}", _Guilty(("trace",), _skipping(
           r"_*schedule\w*$"))), _TASK_END),
    _h("BUG", r"BUG: using (?P<func>\w+)\(\) in preemptible",
       _title("BUG: using {func}() in preemptible code in {frame}", _Guilty(("trace",), _skipping(
           r"debug_\w+$", r"\w*preempt\w*$", r"\w*processor_id\w*$", r"\w*this_cpu\w*$"))),
       _TASK_END),
    _h("BUG", r"BUG: workqueue leaked (?:lock or atomic|atomic, lock or RCU)", _workqueue_leak,
       _End(cap=3)),
    _h("BUG", r"BUG: spinlock (?P<what>lockup suspected|already unlocked|recursion"
       r"|cpu recursion|bad magic|wrong owner|wrong CPU|trylock failure on UP)",
       _title("BUG: spinlock {what} in {frame}", _TRACE), _TASK_END),
    _h("LOCKDEP", r"(?:WARNING|INFO): possible circular locking dependency detected",
       _title("possible deadlock in {frame}", _Guilty(("marks", "trace"), _skipping(
           r"process_one_work$", r"(?:flush|drain|destroy)_workqueue$"))), _TASK_END),
    _h("LOCKDEP", r"(?:WARNING|INFO): possible recursive locking detected",
       _title("possible deadlock in {frame}", _Guilty(("marks", "trace"), after=_ACQUIRE)),
       _TASK_END),
    _h("LOCKDEP", r"(?:WARNING|INFO): possible irq lock inversion dependency detected",
       _title("possible deadlock in {frame}", _Guilty(("marks", "trace"), after=re.compile(
           r"just changed the state of lock"))), _TASK_END),
    _h("LOCKDEP", r"(?:WARNING|INFO): \S+-safe -> \S+-unsafe lock order detected",
       _title("possible deadlock in {frame}", _Guilty(("marks", "trace"), after=re.compile(
           r"which became \S+ at:"))), _TASK_END),
    _h("LOCKDEP", r"(?:WARNING|INFO): inconsistent lock state",
       _title("inconsistent lock state in {frame}", _TRACE), _TASK_END),
    _h("LOCKDEP", r"(?:WARNING|BUG): bad unlock balance detected!",
       _title("WARNING: bad unlock balance in {frame}", _Guilty(
           ("marks", "trace"), after=re.compile(r"is trying to release lock"))), _TASK_END),
    _h("LOCKDEP", r"(?:WARNING|BUG): held lock freed!",
       _title("WARNING: held lock freed in {frame}", _LOCK_MARKS), _TASK_END),
    _h("LOCKDEP", r"(?:WARNING|BUG): .*still has locks held!",
       _title("WARNING: still has locks held in {frame}", _LOCK_MARKS), _TASK_END),
    _h("LOCKDEP", r"(?:WARNING|BUG): lock held when returning to user space",
       _title("WARNING: lock held when returning to user space in {frame}", _Guilty(
           ("marks",), after=re.compile(r"leaving the kernel with locks still held"))),
       _End(cap=20)),
    _h("LOCKDEP", r"WARNING: Nested lock was not taken",
       _title("WARNING: nested lock was not taken in {frame}", _RIP_TRACE)),
    _h("LOCKDEP", r"\[ BUG: Invalid wait context \]",
       _title("BUG: Invalid wait context in {frame}", _LOCK_MARKS), _TASK_END),
    _h("LOCKDEP", r"(?:WARNING|INFO): suspicious RCU usage",
       _title("WARNING: suspicious RCU usage in {frame}", _Guilty(("trace",), _skipping(
           r"\w*rcu\w*$"))), _TASK_END),
    _h("LOCKDEP", r"INFO: trying to register non-static key",
       _title("INFO: trying to register non-static key in {frame}", _TRACE), _TASK_END),
    # ---- WARN()
    _h("WARNING", r"WARNING: CPU: \d+ PID: \d+ at (?P<src>\S+)(?: {FUNC})?", _warning),
    # 7.x: "WARNING: file:line at func+0x10/0x20 [module], CPU#1: comm/pid".
    _h("WARNING", r"WARNING: (?P<src>[\w./-]+:\d+) at (?:{FUNC}/0x[0-9a-f]+|0x[0-9a-f]+)"
       r"(?: \[\w+\])?, CPU#\d+", _warning),
    _h("WARNING", r"WARNING: kernel stack (?:regs|frame pointer) at", "WARNING: kernel stack "
       "regs has bad value", _LINE_END),
    # ---- other BUG:s with a fixed title
    _h("BUG", r"BUG: Bad page (?P<what>state|cache)", _title(
        "BUG: Bad page {what} in {frame}", _Guilty(("trace",), _skipping(
            r"\w*(?:free|put|get|update|release)_\w*pages?\w*$", r"free_unref\w*$", r"_*folio\w*$",
            r"bad_page$", r"\w*page_frag_free$"))), _TASK_END),
    _h("BUG", r"BUG: Bad page map", "BUG: Bad page map", _TASK_END),
    _h("BUG", r"BUG: Bad rss-counter state", "BUG: Bad rss-counter state", _LINE_END),
    _h("BUG", r"BUG: non-zero (?P<what>nr_ptes|nr_pmds) on freeing mm",
       "BUG: non-zero {what} on freeing mm", _LINE_END),
    _h("BUG", r"BUG: Dentry .* still in use", "BUG: Dentry still in use", _LINE_END),
    _h("SLUB", r"BUG (?P<cache>[\w-]+) \([^)]*\): (?P<what>.+)", "BUG: {what} in {cache}",
       _TASK_END),
    # ---- die(): x86 6.x prefixes these with "Oops: "
    _h("GPF", r"(?:Oops: )?general protection fault",
       _title("general protection fault in {frame}", _RIP_TRACE)),
    _h("STACK_SEGMENT", r"(?:Oops: )?stack segment: ",
       _title("stack segment fault in {frame}", _RIP_TRACE)),
    _h("INVALID_OPCODE", r"(?:Oops: )?invalid opcode: ",
       _title("invalid opcode in {frame}", _RIP_TRACE), follows="die"),
    _h("DIVIDE_ERROR", r"(?:Oops: )?divide(?: |_)error: ",
       _title("divide error in {frame}", _RIP_TRACE), follows="die"),
    _h("INT3", r"(?:Oops: )?int3: ", _title("int3 in {frame}", _RIP_TRACE), follows="die"),
    _h("DOUBLE_FAULT", r"PANIC: double fault",
       _title("PANIC: double fault in {frame}", _RIP_TRACE), dies=True, follows="die"),
    _h("STACK_OVERFLOW", r"(?:Oops: )?kernel stack overflow",
       _title("kernel stack overflow in {frame}", _RIP_TRACE), follows="die"),
    _h("OOPS", r"Oops: ", _title("Oops in {frame}", _RIP_TRACE), follows="die"),
    _h("OOPS", r"Internal error: ", _title("Internal error in {frame}", _RIP_TRACE),
       follows="die"),
    _h("OOPS", r"Unhandled fault: ", _title("Unhandled fault in {frame}", _RIP_TRACE)),
    _h("OOPS", r"Alignment trap: ", _title("Alignment trap in {frame}", _RIP_TRACE)),
    # ---- panic()
    _h("PANIC", r"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in:"
       r"(?: {FUNC})?", _title("kernel panic: stack is corrupted in {frame}", _Guilty(
           ("header", "trace"), _skipping(r"\w*stack_chk\w*$"))), _PANIC_END),
    _h("PANIC", r"Kernel panic - not syncing: corrupted stack end",
       _title("kernel panic: corrupted stack end in {frame}", _Guilty(("trace",), _skipping(
           r"_*schedule\w*$"), choose="stall")), _PANIC_END),
    _h("STACK_OVERFLOW", r"Kernel panic - not syncing: kernel stack overflow",
       _title("kernel stack overflow in {frame}", _Guilty(("trace",), _skipping(
           r"\w*bad_stack\w*$"), choose="stall")), _PANIC_END),
    _h("PANIC", r"Kernel panic - not syncing: Attempted to kill init!",
       "kernel panic: Attempted to kill init!", _PANIC_END, follows="panic"),
    _h("PANIC", r"Kernel panic - not syncing: (?P<msg>.*(?:Fatal exception|panic_on_warn set"
       r"|hung_task: blocked tasks|softlockup: hung tasks|[Hh]ard LOCKUP|RCU Stall"
       r"|Machine halted|Aiee, killing interrupt handler).*)",
       "kernel panic: {msg}", _PANIC_END, follows="panic"),
    _h("PANIC", r"Kernel panic - not syncing: (?P<msg>.*)", "kernel panic: {msg}", _PANIC_END),
    # ---- one-liners and leaks
    _h("NETDEV_REFCOUNT", r"unregister_netdevice: waiting for (?P<dev>\S+) to become free",
       "unregister_netdevice: waiting for {dev} to become free", _LINE_END),
    _h("KMEMLEAK", r"unreferenced object 0x[0-9a-f]+ \(size \d+\):",
       _title("memory leak in {frame}", _Guilty(("backtrace",))), _LEAK_END),
    _h("VFS", r"VFS: Close: file count is 0", "VFS: Close: file count is zero (use-after-free)",
       _LINE_END),
    _h("VFS", r"VFS: Busy inodes after unmount", "VFS: Busy inodes after unmount "
       "(use-after-free)", _LINE_END),
    _h("DMA_API", r"DMA-API: (?:debugging out of memory|cacheline tracking ENOMEM)",
       "DMA-API: debugging disabled (out of memory)", _LINE_END),
    # ---- catch-alls (the header line is the title)
    _h("BUG", r"BUG: (?P<msg>.+)", "BUG: {msg}", _MESSAGE_END, loose=True),
    _h("WARNING", r"WARNING: (?P<msg>.+)", "WARNING: {msg}", _MESSAGE_END, loose=True),
    _h("INFO", r"INFO: (?P<msg>.+)", "INFO: {msg}", _MESSAGE_END, loose=True),
)

# Any header at all: one pass over a line before trying the table entry by entry.
_ANY_HEADER = _any(*(re.sub(r"\(\?P<\w+>", "(?:", h.pattern.pattern) for h in _HEADERS))

# Lines that look like report headers but are not bugs, after syzkaller's
# ignore lists (matched at the start of the kernel message, like headers).
_IGNORED = _any(
    r"WARNING: /etc/ssh/moduli does not exist",  # sshd, on the console
    r"WARNING: workqueue cpumask: online intersect > possible intersect",
    r"WARNING: [Tt]he mand mount option",
    r"WARNING: Unsupported flag value\(s\) of 0x\S* in DT_FLAGS_1",
    r"WARNING: Unprivileged eBPF is enabled with eIBRS",
    r"WARNING: fbcon: Driver '.*' missed to adjust virtual screen size",
    r"WARNING: See https\S* for mitigation options",
    r"WARNING: kernel not compiled with CPU_SRSO",
    r"(?i:warning: .* uses (?:deprecated v2 capabilities|wireless extensions))",
    r"INFO: lockdep is turned off",
    r"INFO: Stall ended before state dump start",
    r"INFO: NMI handler",
    r"INFO: recovery required on readonly filesystem",
    r"INFO: .*(?:handler|interrupt).*took too long",
    r"INFO: task .* blocked on an? ",  # detail line inside a hung-task report
    r"general protection fault .* error:\d+ in ",  # user-space trap, not a kernel oops
    r"BUG: no syscalls can create resource",
)


# --------------------------------------------------------------------------
# Finding reports
# --------------------------------------------------------------------------

# Reports the kernel prints again while the condition lasts: one splat per title.
_REPEATING = frozenset({"SOFTLOCKUP", "RCU_STALL", "HUNG_TASK", "WORKQUEUE_LOCKUP",
                        "NETDEV_REFCOUNT", "HARDLOCKUP"})
_DIE_DISTANCE = 12  # lines between a dying BUG: header and die()'s "Oops:" line
_CUT_HERE = "[ cut here ]"
_SEPARATOR = re.compile(r"^(?:={20,}|-{20,})$")
_TAIL = re.compile(r"^(?:DMA-API: Mapped at:|FIX [\w-]+: |Disabling lock debugging)")


@dataclass(frozen=True)
class _Start:
    index: int
    header: _Header
    match: re.Match[str]


def _header_of(line: _Line, loose_ok: bool) -> tuple[_Header, re.Match[str]] | None:
    message = line.text.lstrip()
    if not _ANY_HEADER.match(message) or _IGNORED.match(message):
        return None
    for header in _HEADERS:
        match = header.pattern.match(message)
        if match:
            if header.loose and not loose_ok:
                return None
            return header, match
    return None


def _folds_into(header: _Header, index: int, previous: _Start | None) -> bool:
    """Does this header continue the report before it (see the module docstring)?"""
    if previous is None:
        return False
    if header.follows == "die":
        return previous.header.dies and index - previous.index <= _DIE_DISTANCE
    if header.follows == "panic":
        return index - previous.index <= REPORT_MAX_LINES
    return False


def _starts(lines: Sequence[_Line]) -> list[_Start]:
    stamped = any(line.stamped for line in lines)
    starts: list[_Start] = []
    for index, line in enumerate(lines):
        found = _header_of(line, loose_ok=line.stamped or not stamped)
        if found is None:
            continue
        header, match = found
        if not _folds_into(header, index, starts[-1] if starts else None):
            starts.append(_Start(index, header, match))
    return starts


def _begin(texts: Sequence[str], start: int, floor: int) -> int:
    """First line of the report: its "cut here" line and WARN() message, or
    the separator line just above the header."""
    for i in range(start - 1, max(floor, start - 8) - 1, -1):
        if _CUT_HERE in texts[i]:
            return i
    if start > floor and _SEPARATOR.match(texts[start - 1].strip()):
        return start - 1
    return start


def _end(end: _End, texts: Sequence[str], start: int, limit: int) -> int:
    """One past the report's last line; ``limit`` is where the next one begins."""
    stop = min(limit, start + end.cap)
    if end.indented or end.paragraph:
        i = start + 1
        while i < stop and (texts[i].startswith(" ") if end.indented else texts[i].strip()):
            i += 1
        return i
    for marker in end.markers:
        for i in range(start + 1, stop):
            if texts[i].lstrip().startswith(marker):
                return i + 1
    return stop


def _tail(texts: Sequence[str], end: int, limit: int) -> int:
    """Lines that still belong after the end marker: dma-debug's "Mapped at:"
    stack, slub_debug's "FIX" lines."""
    in_stack = False
    while end < limit:
        text = texts[end].lstrip()
        if _TAIL.match(text):
            in_stack = text.startswith("DMA-API: Mapped at:")
        elif not (in_stack and _FRAME.match(texts[end])):
            break
        end += 1
    return end


def find_splats(console_text: str) -> list[Splat]:
    """Every kernel report in ``console_text``, in order of appearance."""
    lines = [_parse_line(raw) for raw in console_text.split("\n")]
    texts = [line.text for line in lines]
    starts = _starts(lines)
    begins = [_begin(texts, s.index, starts[n - 1].index + 1 if n else 0)
              for n, s in enumerate(starts)]
    splats: list[Splat] = []
    seen: set[tuple[str, str]] = set()
    for n, start in enumerate(starts):
        limit = begins[n + 1] if n + 1 < len(starts) else len(texts)
        end = _end(start.header.end, texts, start.index, limit)
        report = texts[begins[n] : _tail(texts, end, limit)]
        title = _sanitize_title(start.header.title(start.match, report))
        # A WARN() from dma-debug is a DMA-API report (see _warning).
        kind = "DMA_API" if title.startswith("DMA-API: ") else start.header.kind
        if kind in _REPEATING and (kind, title) in seen:
            continue
        seen.add((kind, title))
        splats.append(Splat(kind, title, start.index, "\n".join(report)))
    return splats


def _sanitize_title(title: str) -> str:
    return re.sub(r"\s+", " ", title).strip()[:160]


def format_splats(splats: Sequence[Splat]) -> str:
    """One line per splat, then the first report in full."""
    if not splats:
        return "no kernel splats"
    lines = [
        f"- {s.kind}: {s.title}" + (f" (console line {s.line + 1})" if s.line >= 0 else "")
        for s in splats
    ]
    first = "\n".join(f"    {line}" for line in splats[0].report.splitlines())
    return "\n".join([*lines, "", f"first report ({splats[0].title}):", first])
