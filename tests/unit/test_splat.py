"""dmagate.splat on console excerpts written after Linux 6.12 x86_64 output.

Each excerpt is a block of kernel messages; ``kernel()`` adds the printk
timestamps (and caller ids) a serial console shows.
"""

from __future__ import annotations

import pytest

from dmagate.splat import Splat, find_splats, format_splats

UNAME = "6.12.57+deb12-cloud-amd64 #1"
CPU_LINE = f"CPU: 1 UID: 0 PID: 73 Comm: sh Tainted: G  O  E  {UNAME}"
HW_LINE = "Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 0.1 11/11/2019"
MODULES = "Modules linked in: dmagate_test(OE) dmagate(OE) virtio_net net_failover failover"
USER_REGS = """\
RIP: 0033:0x47b7a0
RSP: 002b:00007fff951c99b8 EFLAGS: 00000202 ORIG_RAX: 0000000000000001
RAX: ffffffffffffffda RBX: 0000000000000001 RCX: 000000000047b7a0"""
SYSCALL_TAIL = """\
 trigger_write+0xc9/0xf0 [dmagate_test]
 full_proxy_write+0x54/0x80
 vfs_write+0xf5/0x450
 ksys_write+0x6f/0xf0
 do_syscall_64+0x87/0x180
 ? do_user_addr_fault+0x379/0x6a0
 entry_SYSCALL_64_after_hwframe+0x76/0x7e"""


def regs(rip: str) -> str:
    """What show_regs() prints for a kernel RIP, then the call trace opens."""
    return f"""\
{CPU_LINE}
Tainted: [O]=OOT_MODULE, [E]=UNSIGNED_MODULE
{HW_LINE}
RIP: 0010:{rip}
Code: Unable to access opcode bytes at 0xffffffffc0235ff7.
RSP: 0018:ffffc90000433d98 EFLAGS: 00010286
RAX: 0000000000000000 RBX: 0000000000000005 RCX: c0000000ffffefff
CR2: ffffffffc0235ff7 CR3: 0000000005c62000 CR4: 0000000000750ef0
PKRU: 55555554
Call Trace:
 <TASK>"""


def task_end() -> str:
    return f"{SYSCALL_TAIL}\n{USER_REGS}\n </TASK>"


def kernel(text: str, *, start: float = 100.0, caller: str = "", sep: str = "") -> str:
    """Prefix every line of ``text`` with a printk timestamp (and caller id)."""
    out = []
    for i, line in enumerate(text.strip("\n").split("\n")):
        stamp = f"[{start + i * 0.000213:12.6f}]"
        ctx = f"{sep}[{caller:>6}]" if caller else ""
        out.append(f"{stamp}{ctx} {line}")
    return "\n".join(out) + "\n"


def only(text: str) -> Splat:
    splats = find_splats(text)
    assert len(splats) == 1, [s.title for s in splats]
    return splats[0]


# --------------------------------------------------------------------- excerpts

WARN = f"""\
------------[ cut here ]------------
dmagate_test: ring index 9 out of range
WARNING: CPU: 1 PID: 73 at drivers/misc/dmagate_test.c:22 dmagate_ring_put+0x11/0x20 [dmagate_test]
{MODULES}
{regs("dmagate_ring_put+0x11/0x20 [dmagate_test]")}
 ? __warn+0x89/0x130
 ? dmagate_ring_put+0x11/0x20 [dmagate_test]
 ? report_bug+0x164/0x190
 ? handle_bug+0x58/0x90
 ? exc_invalid_op+0x17/0x70
 ? asm_exc_invalid_op+0x1a/0x20
 dmagate_submit+0x3e/0x90 [dmagate_test]
{task_end()}
---[ end trace 0000000000000000 ]---
"""

DMA_LINE = (
    "DMA-API: dmagate-pci 0000:00:04.0: device driver frees DMA memory with different size"
    " [device address=0x000000000528c000] [map size=4096 bytes] [unmap size=2048 bytes]"
)
DMA_WARN = f"""\
------------[ cut here ]------------
{DMA_LINE}
WARNING: CPU: 0 PID: 73 at kernel/dma/debug.c:1060 check_unmap+0x6d4/0x920
{MODULES}
{regs("check_unmap+0x6d4/0x920")}
 ? __warn+0x89/0x130
 ? check_unmap+0x6d4/0x920
 ? report_bug+0x164/0x190
 debug_dma_unmap_page+0x87/0xa0
 dma_unmap_page_attrs+0x4f/0x1d0
 dmagate_unmap_buffer+0x3a/0x60 [dmagate]
 dmagate_revoke+0x8e/0x130 [dmagate]
{task_end()}
---[ end trace 0000000000000000 ]---
DMA-API: Mapped at:
 debug_dma_map_page+0x60/0x100
 dma_map_page_attrs+0x7a/0x2a0
 dmagate_map_buffer+0x5c/0xa0 [dmagate]
 dmagate_ioctl+0x1b6/0x2c0 [dmagate]
"""

KERNEL_BUG = f"""\
------------[ cut here ]------------
kernel BUG at drivers/misc/dmagate_test.c:27!
Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
{regs("dmagate_check_owner+0x5/0x10 [dmagate_test]")}
{task_end()}
{MODULES}
---[ end trace 0000000000000000 ]---
RIP: 0010:dmagate_check_owner+0x5/0x10 [dmagate_test]
"""

NULL_DEREF = f"""\
BUG: kernel NULL pointer dereference, address: 0000000000000000
#PF: supervisor read access in kernel mode
#PF: error_code(0x0000) - not-present page
PGD 4cd3067 P4D 4cd3067 PUD 4cd2067 PMD 0
Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI
{regs("dmagate_read_desc+0x1c/0x30 [dmagate_test]")}
{task_end()}
{MODULES}
CR2: 0000000000000000
---[ end trace 0000000000000000 ]---
"""

PAGING = f"""\
BUG: unable to handle page fault for address: ffffc90000a00000
#PF: supervisor write access in kernel mode
#PF: error_code(0x0002) - not-present page
Oops: Oops: 0002 [#1] PREEMPT SMP NOPTI
{regs("memset_orig+0x33/0xb0")}
 dmagate_scrub+0x2a/0x50 [dmagate_test]
{task_end()}
---[ end trace 0000000000000000 ]---
"""

KASAN = f"""\
==================================================================
BUG: KASAN: slab-use-after-free in dmagate_uaf_read+0x5a/0x70 [dmagate_test]
Read of size 4 at addr ffff888004a1c010 by task sh/73

{CPU_LINE}
{HW_LINE}
Call Trace:
 <TASK>
 dump_stack_lvl+0x5d/0x80
 print_report+0xcf/0x610
 ? dmagate_uaf_read+0x5a/0x70 [dmagate_test]
 kasan_report+0xb5/0xf0
 dmagate_uaf_read+0x5a/0x70 [dmagate_test]
{task_end()}

Allocated by task 73:
 kasan_save_stack+0x30/0x50
 __kasan_kmalloc+0x8f/0xa0
 dmagate_uaf_read+0x2b/0x70 [dmagate_test]

Freed by task 73:
 kasan_save_stack+0x30/0x50
 kfree+0x11b/0x380
 dmagate_uaf_read+0x45/0x70 [dmagate_test]

The buggy address belongs to the object at ffff888004a1c000
 which belongs to the cache kmalloc-64 of size 64

Memory state around the buggy address:
 ffff888004a1bf00: fa fb fb fb fb fb fb fb fc fc fc fc fc fc fc fc
>ffff888004a1c000: fa fb fb fb fb fb fb fb fc fc fc fc fc fc fc fc
                         ^
==================================================================
Disabling lock debugging due to kernel taint
"""

UBSAN = f"""\
------------[ cut here ]------------
UBSAN: array-index-out-of-bounds in drivers/misc/dmagate_test.c:88:9
index 8 is out of range for type 'u32 [8]'
{CPU_LINE}
{HW_LINE}
Call Trace:
 <TASK>
 dump_stack_lvl+0x5d/0x80
 __ubsan_handle_out_of_bounds+0xa0/0xd0
 dmagate_ring_slot+0x3d/0x50 [dmagate_test]
{task_end()}
---[ end trace ]---
"""

CIRCULAR = f"""\
======================================================
WARNING: possible circular locking dependency detected
{UNAME} Tainted: G           OE
------------------------------------------------------
sh/73 is trying to acquire lock:
ffffffffc0a0c0a0 (&dev->ring_lock){{+.+.}}-{{3:3}}, at: dmagate_revoke+0x45/0x80 [dmagate]

but task is already holding lock:
ffffffffc0a0c060 (&dev->map_lock){{+.+.}}-{{3:3}}, at: dmagate_unmap+0x2d/0x80 [dmagate]

which lock already depends on the new lock.

the existing dependency chain (in reverse order) is:

-> #1 (&dev->map_lock){{+.+.}}-{{3:3}}:
       __mutex_lock+0x8e/0x960
       dmagate_submit+0x1e/0x40 [dmagate]

-> #0 (&dev->ring_lock){{+.+.}}-{{3:3}}:
       __lock_acquire+0x1546/0x2410
       lock_acquire+0xd2/0x2f0

other info that might help us debug this:

 *** DEADLOCK ***

1 lock held by sh/73:
 #0: ffffffffc0a0c060 (&dev->map_lock){{+.+.}}-{{3:3}}, at: dmagate_unmap+0x2d/0x80 [dmagate]

stack backtrace:
{CPU_LINE}
{HW_LINE}
Call Trace:
 <TASK>
 dump_stack_lvl+0x5d/0x80
 print_circular_bug+0x26f/0x340
 check_noncircular+0x14c/0x170
 __lock_acquire+0x1546/0x2410
 lock_acquire+0xd2/0x2f0
 __mutex_lock+0x8e/0x960
 dmagate_revoke+0x45/0x80 [dmagate]
{task_end()}
"""

SLEEP_IN_ATOMIC = f"""\
BUG: sleeping function called from invalid context at kernel/locking/mutex.c:585
in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: 73, name: sh
preempt_count: 1, expected: 0
RCU nest depth: 0, expected: 0
INFO: lockdep is turned off.
Preemption disabled at:
[<ffffffffc0a0b0c5>] dmagate_complete+0x15/0x40 [dmagate]
{CPU_LINE}
{HW_LINE}
Call Trace:
 <TASK>
 dump_stack_lvl+0x5d/0x80
 __might_resched+0x151/0x1c0
 __mutex_lock+0x4a/0x960
 dmagate_complete+0x2e/0x40 [dmagate]
{task_end()}
"""

HUNG_TASK = f"""\
INFO: task cat:171 blocked for more than 122 seconds.
      Tainted: G           OE      {UNAME}
"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
task:cat             state:D stack:0     pid:171   tgid:171   ppid:73     flags:0x00004002
Call Trace:
 <TASK>
 __schedule+0x3f0/0xb40
 schedule+0x27/0xf0
 schedule_preempt_disabled+0x15/0x30
 __mutex_lock.constprop.0+0x3bf/0x6d0
 dmagate_reset_ring+0x25/0x40 [dmagate]
 dmagate_release+0x1e/0x60 [dmagate]
 __fput+0xe6/0x2b0
 __x64_sys_close+0x3c/0x80
 do_syscall_64+0x87/0x180
 entry_SYSCALL_64_after_hwframe+0x76/0x7e
{USER_REGS}
 </TASK>
"""

IRQ_STACK = """\
 <IRQ>
 ? watchdog_timer_fn+0x1e6/0x270
 ? __hrtimer_run_queues+0x10f/0x2a0
 ? hrtimer_interrupt+0xfa/0x230
 ? sysvec_apic_timer_interrupt+0x6c/0x90
 </IRQ>
 <TASK>
 ? asm_sysvec_apic_timer_interrupt+0x1a/0x20
 ? dmagate_poll_idle+0x12/0x20 [dmagate_test]"""

SOFT_LOCKUP = f"""\
watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [sh:73]
{MODULES}
{regs("dmagate_poll_idle+0x12/0x20 [dmagate_test]").replace(" <TASK>", IRQ_STACK)}
{task_end()}
"""

RCU_STALL = f"""\
rcu: INFO: rcu_preempt self-detected stall on CPU
rcu: \t0-....: (5249 ticks this GP) idle=8bac/1/0x4000000000000000 softirq=1591/1591 fqs=2430
rcu: \t(t=5250 jiffies g=1773 q=37 ncpus=2)
{regs("dmagate_poll_idle+0x12/0x20 [dmagate_test]").replace(" <TASK>", IRQ_STACK)}
{task_end()}
"""

GPF = f"""\
Oops: general protection fault, probably for non-canonical address 0xdead000000000122: 0000 [#1]
{regs("dmagate_list_walk+0x1c/0x40 [dmagate_test]")}
 ? die_addr+0x3c/0x60
 ? exc_general_protection+0x1a6/0x420
 ? asm_exc_general_protection+0x26/0x30
{task_end()}
{MODULES}
---[ end trace 0000000000000000 ]---
RIP: 0010:dmagate_list_walk+0x1c/0x40 [dmagate_test]
Kernel panic - not syncing: Fatal exception
Kernel Offset: disabled
---[ end Kernel panic - not syncing: Fatal exception ]---
"""

KMEMLEAK = """\
unreferenced object 0xffff888005b3c800 (size 512):
  comm "insmod", pid 140, jiffies 4294893456
  hex dump (first 32 bytes):
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................
  backtrace (crc 0):
    [<ffffffff8137a2b5>] kmemleak_alloc+0x4a/0x80
    [<ffffffff8135c1e7>] __kmalloc_cache_noprof+0x2a7/0x3b0
    [<ffffffffc0a0312c>] dmagate_alloc_ring+0x2c/0x90 [dmagate]
    [<ffffffffc0a04051>] dmagate_probe+0x51/0x120 [dmagate]
    [<ffffffff8169f0a4>] local_pci_probe+0x44/0xa0
"""

KFENCE = f"""\
==================================================================
BUG: KFENCE: use-after-free read in dmagate_peek+0x2c/0x40 [dmagate_test]

Use-after-free read at 0x00000000a1b2c3d4 (in kfence-#12):
 dmagate_peek+0x2c/0x40 [dmagate_test]
 trigger_write+0xc9/0xf0 [dmagate_test]

kfence-#12: 0x00000000a1b2c3d4-0x00000000c3d4e5f6, size=64, cache=kmalloc-64

allocated by task 73 on cpu 0 at 30.123456s (0.002000s ago):
 __kmalloc_cache_noprof+0x2a7/0x3b0
 dmagate_peek+0x11/0x40 [dmagate_test]

{CPU_LINE}
==================================================================
"""

STACK_GUARD = f"""\
BUG: TASK stack guard page was hit at ffffc90000a6ff78 (stack is ffffc90000a70000..ffffc90000a78000)
Oops: stack guard page: 0000 [#1] PREEMPT SMP NOPTI
{regs("dmagate_walk_chain+0x11/0x30 [dmagate_test]")}
 dmagate_walk_chain+0x1f/0x30 [dmagate_test]
 dmagate_walk_chain+0x1f/0x30 [dmagate_test]
{task_end()}
---[ end trace 0000000000000000 ]---
"""

DOUBLE_FAULT = f"""\
PANIC: double fault, error_code: 0x0
Oops: double fault: 0000 [#1] PREEMPT SMP NOPTI
{regs("dmagate_switch_stack+0x8/0x20 [dmagate_test]")}
 </TASK>
Kernel panic - not syncing: Machine halted.
"""

SLUB = f"""\
=============================================================================
BUG kmalloc-64 (Tainted: G    B      OE     ): Poison overwritten
-----------------------------------------------------------------------------

0xffff888004a1c010-0xffff888004a1c013 @offset=16. First byte 0x0 instead of 0x6b
Allocated in dmagate_alloc_desc+0x2b/0x70 [dmagate_test] age=12 cpu=0 pid=73
{CPU_LINE}
Call Trace:
 <TASK>
 dump_stack_lvl+0x5d/0x80
 check_bytes_and_report+0x102/0x140
 dmagate_alloc_desc+0x2b/0x70 [dmagate_test]
 </TASK>
FIX kmalloc-64: Restoring Poison 0xffff888004a1c010-0xffff888004a1c013=0x6b
FIX kmalloc-64: Marking all objects used
"""


def oops(line: str, rip: str) -> str:
    """A die() report that is not preceded by a BUG: line."""
    return f"{line}\n{regs(rip)}\n{task_end()}\n---[ end trace 0000000000000000 ]---\n"


# ------------------------------------------------------------- one per kind


@pytest.mark.parametrize(
    ("excerpt", "kind", "title"),
    [
        (WARN, "WARNING", "WARNING in dmagate_ring_put"),
        (DMA_WARN, "DMA_API",
         "DMA-API: device driver frees DMA memory with different size in dmagate_unmap_buffer"),
        (KERNEL_BUG, "BUG", "kernel BUG in dmagate_check_owner"),
        (NULL_DEREF, "BUG",
         "BUG: unable to handle kernel NULL pointer dereference in dmagate_read_desc"),
        (PAGING, "BUG", "BUG: unable to handle kernel paging request in dmagate_scrub"),
        (KASAN, "KASAN", "KASAN: slab-use-after-free Read in dmagate_uaf_read"),
        (UBSAN, "UBSAN", "UBSAN: array-index-out-of-bounds in dmagate_ring_slot"),
        (CIRCULAR, "LOCKDEP", "possible deadlock in dmagate_revoke"),
        (SLEEP_IN_ATOMIC, "ATOMIC_SLEEP",
         "BUG: sleeping function called from invalid context in dmagate_complete"),
        (HUNG_TASK, "HUNG_TASK", "INFO: task hung in dmagate_reset_ring"),
        (SOFT_LOCKUP, "SOFTLOCKUP", "BUG: soft lockup in trigger_write"),
        (RCU_STALL, "RCU_STALL", "INFO: rcu detected stall in trigger_write"),
        (GPF, "GPF", "general protection fault in dmagate_list_walk"),
        (KMEMLEAK, "KMEMLEAK", "memory leak in dmagate_alloc_ring"),
        (KFENCE, "KFENCE", "KFENCE: use-after-free read in dmagate_peek"),
        (STACK_GUARD, "STACK_OVERFLOW", "BUG: stack guard page was hit in dmagate_walk_chain"),
        (DOUBLE_FAULT, "DOUBLE_FAULT", "PANIC: double fault in dmagate_switch_stack"),
        (SLUB, "SLUB", "BUG: Poison overwritten in kmalloc-64"),
        (oops("Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI", "dmagate_bad+0x4/0x10 [m]"),
         "INVALID_OPCODE", "invalid opcode in dmagate_bad"),
        (oops("Oops: divide error: 0000 [#1] PREEMPT SMP NOPTI", "dmagate_ratio+0x9/0x30 [m]"),
         "DIVIDE_ERROR", "divide error in dmagate_ratio"),
        (oops("Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI", "dmagate_read_desc+0x1c/0x30 [m]"),
         "OOPS", "Oops in dmagate_read_desc"),
        (oops("Oops: int3: 0000 [#1] PREEMPT SMP NOPTI", "dmagate_probe+0x1/0x90 [m]"),
         "INT3", "int3 in dmagate_probe"),
        (oops("Oops: stack segment: 0000 [#1] PREEMPT SMP NOPTI", "dmagate_pop+0x7/0x20 [m]"),
         "STACK_SEGMENT", "stack segment fault in dmagate_pop"),
        ("Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n",
         "PANIC", "kernel panic: VFS: Unable to mount root fs on unknown-block(NUM,NUM)"),
        ("unregister_netdevice: waiting for dmagate0 to become free. Usage count = 2\n",
         "NETDEV_REFCOUNT", "unregister_netdevice: waiting for dmagate0 to become free"),
        ("BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 33s!\n"
         "Showing busy workqueues and worker pools:\n",
         "WORKQUEUE_LOCKUP", "BUG: workqueue lockup"),
        ("BUG: workqueue leaked atomic, lock or RCU: kworker/0:1[12]\n"
         "     preempt=0x00000000 lock=1->0 RCU=0->0 workfn=dmagate_done_work [dmagate]\n",
         "BUG", "BUG: workqueue leaked lock or atomic in dmagate_done_work"),
        ("BUG: KCSAN: data-race in dmagate_irq / dmagate_poll\n",
         "KCSAN", "KCSAN: data-race in dmagate_irq / dmagate_poll"),
        ("VFS: Busy inodes after unmount of vda. Self-destruct in 5 seconds.\n",
         "VFS", "VFS: Busy inodes after unmount (use-after-free)"),
        ("DMA-API: debugging out of memory - disabling\n",
         "DMA_API", "DMA-API: debugging disabled (out of memory)"),
        ("INFO: rcu_tasks grace period stuck\n", "INFO", "INFO: rcu_tasks grace period stuck"),
    ],
)
def test_kind_and_title(excerpt: str, kind: str, title: str) -> None:
    splat = only(kernel(excerpt))
    assert (splat.kind, splat.title) == (kind, title)


def test_warning_report_spans_cut_here_to_end_trace() -> None:
    splat = only("/ # echo 1 > trigger\n" + kernel(WARN))
    lines = splat.report.splitlines()
    assert lines[0] == "------------[ cut here ]------------"
    assert lines[1] == "dmagate_test: ring index 9 out of range"
    assert lines[-1] == "---[ end trace 0000000000000000 ]---"
    assert splat.line == 3  # the WARNING: line, counting the shell line
    assert not any(line.startswith("[") for line in lines), "timestamps are stripped"


def test_new_warning_format() -> None:
    text = WARN.replace(
        "CPU: 1 PID: 73 at drivers/misc/dmagate_test.c:22 dmagate_ring_put+0x11/0x20"
        " [dmagate_test]",
        "drivers/misc/dmagate_test.c:22 at dmagate_ring_put+0x11/0x20, CPU#1: sh/73",
    )
    assert only(kernel(text)).title == "WARNING in dmagate_ring_put"


def test_refcount_warning_names_the_caller() -> None:
    text = WARN.replace("drivers/misc/dmagate_test.c:22 dmagate_ring_put+0x11/0x20 [dmagate_test]",
                        "lib/refcount.c:28 refcount_warn_saturate+0xba/0x110")
    text = text.replace("RIP: 0010:dmagate_ring_put", "RIP: 0010:refcount_warn_saturate")
    assert only(kernel(text)).title == "WARNING: refcount bug in dmagate_submit"


def test_dma_api_report_keeps_the_mapping_stack() -> None:
    splat = only(kernel(DMA_WARN))
    assert DMA_LINE in splat.report
    assert splat.report.splitlines()[-1] == " dmagate_ioctl+0x1b6/0x2c0 [dmagate]"


def test_kasan_report_ends_at_separator() -> None:
    splat = only(kernel(KASAN))
    lines = splat.report.splitlines()
    assert lines[0].startswith("=====") and lines[1].startswith("BUG: KASAN:")
    assert "Memory state around the buggy address:" in splat.report
    assert lines[-1] == "Disabling lock debugging due to kernel taint"


def test_kasan_write_and_double_free() -> None:
    write = KASAN.replace("Read of size 4", "Write of size 8")
    assert only(kernel(write)).title == "KASAN: slab-use-after-free Write in dmagate_uaf_read"
    double = KASAN.replace("slab-use-after-free in", "double-free in").replace(
        "Read of size 4 at addr ffff888004a1c010 by task sh/73", "Free of addr ffff888004a1c010")
    assert only(kernel(double)).title == "KASAN: double-free in dmagate_uaf_read"


def test_lockdep_report_ends_with_its_stack() -> None:
    splat = only(kernel(CIRCULAR))
    assert splat.report.splitlines()[-1] == " </TASK>"
    assert "*** DEADLOCK ***" in splat.report


def test_recursive_locking_names_the_second_acquire() -> None:
    text = f"""\
============================================
WARNING: possible recursive locking detected
{UNAME} Tainted: G           OE
--------------------------------------------
sh/73 is trying to acquire lock:
ffff888004a1c0a8 (&dev->lock){{+.+.}}-{{3:3}}, at: dmagate_flush+0x1d/0x50 [dmagate]

but task is already holding lock:
ffff888004a1c0a8 (&dev->lock){{+.+.}}-{{3:3}}, at: dmagate_ioctl+0x33/0x2c0 [dmagate]

stack backtrace:
{CPU_LINE}
Call Trace:
 <TASK>
 dmagate_flush+0x1d/0x50 [dmagate]
 </TASK>
"""
    assert only(kernel(text)).title == "possible deadlock in dmagate_flush"


def test_memory_leaks_are_one_splat_each() -> None:
    second = KMEMLEAK.replace("0xffff888005b3c800 (size 512)", "0xffff888005b3d000 (size 64)")
    second = second.replace("dmagate_alloc_ring+0x2c", "dmagate_alloc_desc+0x1c")
    splats = find_splats(kernel(KMEMLEAK + second))
    assert [s.title for s in splats] == ["memory leak in dmagate_alloc_ring",
                                         "memory leak in dmagate_alloc_desc"]
    assert splats[0].report.count("unreferenced object") == 1


# ------------------------------------------------------ one report, one splat


def test_oops_line_after_kernel_bug_is_the_same_report() -> None:
    splat = only(kernel(KERNEL_BUG))
    assert "Oops: invalid opcode" in splat.report
    assert splat.report.splitlines()[0] == "------------[ cut here ]------------"


def test_oops_line_after_null_dereference_is_the_same_report() -> None:
    assert only(kernel(NULL_DEREF)).kind == "BUG"


def test_fatal_exception_panic_belongs_to_the_oops() -> None:
    splat = only(kernel(GPF))
    assert splat.kind == "GPF"


def test_panic_on_warn_belongs_to_the_warning() -> None:
    text = WARN.replace("---[ end trace 0000000000000000 ]---",
                        "Kernel panic - not syncing: kernel: panic_on_warn set ...\n"
                        "Kernel Offset: disabled")
    splat = only(kernel(text))
    assert (splat.kind, splat.title) == ("WARNING", "WARNING in dmagate_ring_put")


def test_fatal_exception_alone_is_reported() -> None:
    text = kernel("Kernel panic - not syncing: Fatal exception in interrupt\n"
                  "Kernel Offset: disabled")
    splat = only(text)
    assert (splat.kind, splat.title) == ("PANIC", "kernel panic: Fatal exception in interrupt")
    assert splat.report.splitlines()[-1] == "Kernel Offset: disabled"


def test_unrelated_panic_after_a_warning_is_its_own_splat() -> None:
    text = kernel(WARN) + kernel("sysrq: Trigger a crash\n"
                                 "Kernel panic - not syncing: sysrq triggered crash", start=200)
    assert [s.kind for s in find_splats(text)] == ["WARNING", "PANIC"]


def test_repeated_stall_reports_count_once() -> None:
    text = kernel(SOFT_LOCKUP) + kernel(SOFT_LOCKUP.replace("26s", "52s"), start=126)
    text += kernel("unregister_netdevice: waiting for dmagate0 to become free. Usage count = 2\n"
                   "unregister_netdevice: waiting for dmagate0 to become free. Usage count = 2")
    assert [s.kind for s in find_splats(text)] == ["SOFTLOCKUP", "NETDEV_REFCOUNT"]


def test_consecutive_reports_do_not_overlap() -> None:
    text = kernel(WARN) + kernel(KASAN, start=101) + kernel(KMEMLEAK, start=102)
    splats = find_splats(text)
    assert [s.kind for s in splats] == ["WARNING", "KASAN", "KMEMLEAK"]
    assert "KASAN" not in splats[0].report and "cut here" not in splats[1].report
    assert "unreferenced" not in splats[1].report


def test_report_without_end_marker_stops_before_the_next_one() -> None:
    first = WARN.replace("---[ end trace 0000000000000000 ]---\n", "").replace(" </TASK>\n", "")
    splats = find_splats(kernel(first + WARN))
    assert len(splats) == 2
    assert splats[0].report.count("cut here") == 1
    assert splats[1].report.startswith("------------[ cut here ]")


# ------------------------------------------------------------------- ignores


@pytest.mark.parametrize(
    "line",
    [
        "WARNING: /etc/ssh/moduli does not exist, using fixed modulus",
        "INFO: lockdep is turned off.",
        "INFO: Stall ended before state dump start",
        "INFO: NMI handler (perf_event_nmi_handler) took too long to run: 1.234 msecs",
        "WARNING: workqueue cpumask: online intersect > possible intersect",
        "WARNING: Unprivileged eBPF is enabled with eIBRS on, data leaks possible",
        "INFO: task cat:171 is blocked on a mutex likely owned by task sh:73.",
        "traps: a.out[222] general protection fault ip:401136 sp:7ffc2d0 error:0 in a.out",
        "Spectre V2 : WARNING: Unprivileged eBPF is enabled with eIBRS on, data leaks possible",
        "RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable to RETBleed attacks",
        "DMA-API: cacheline tracking EEXIST, overlapping mappings aren't supported",
        "FAULT_INJECTION: forcing a failure.",
        "kmemleak: 2 new suspected memory leaks (see /sys/kernel/debug/kmemleak)",
    ],
)
def test_ignored_lines(line: str) -> None:
    assert find_splats(kernel(line)) == []


def test_workqueue_leaked_lock_is_not_ignored() -> None:
    text = kernel("BUG: workqueue leaked lock or atomic: kworker/0:1/0x00000001/12\n"
                  "    last function: dmagate_done_work [dmagate]")
    assert only(text).title == "BUG: workqueue leaked lock or atomic in dmagate_done_work"


def test_lockdep_off_inside_a_report_is_not_a_second_splat() -> None:
    assert only(kernel(SLEEP_IN_ATOMIC)).kind == "ATOMIC_SLEEP"


def test_user_space_warnings_on_the_console_are_not_kernel_splats() -> None:
    text = kernel("random: crng init done") + (
        "root@dmagate:~# ./run-test\n"
        "WARNING: buffer pool is small\n"
        "BUG: expected 4 completions, got 3\n"
        "INFO: retrying\n"
    )
    assert find_splats(text) == []


def test_catch_all_headers_count_when_the_console_has_no_timestamps() -> None:
    assert only("WARNING: kernel stack frame pointer has bad value\n").kind == "WARNING"
    assert only("BUG: MAX_LOCKDEP_KEYS too low!\n").title == "BUG: MAX_LOCKDEP_KEYS too low!"


CLEAN_BOOT = """\
Linux version 6.12.57+deb12-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC
Command line: console=ttyS0 panic_on_warn=1 oops=panic dma_debug=on
x86/fpu: Supporting XSAVE feature 0x001: 'x87 floating point registers'
BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
ACPI: Early table checksum verification disabled
ACPI: RSDP 0x00000000000F5290 000014 (v00 BOCHS )
Spectre V1 : Mitigation: usercopy/swapgs barriers and __user pointer sanitization
Spectre V2 : WARNING: Unprivileged eBPF is enabled with eIBRS on, data leaks possible
RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable to RETBleed attacks
Speculative Return Stack Overflow: WARNING: kernel not compiled with CPU_SRSO.
rcu: Hierarchical RCU implementation.
rcu: \tRCU restricting CPUs from NR_CPUS=8192 to nr_cpu_ids=2.
Dynamic Preempt: voluntary
kasan: KernelAddressSanitizer initialized (generic)
KFENCE: initialized - using 2097152 bytes for 255 objects at 0x(____ptrval____)
DMA-API: preallocated 65536 debug entries
DMA-API: debugging enabled by kernel config
Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar
PCI: Using host bridge windows from ACPI; if necessary, use "pci=nocrs" and report a bug
i8042: Warning: Keylock active
virtio_net virtio1 enp0s2: renamed from eth0
kmemleak: Kernel memory leak detector initialized (mempool available: 16384)
EXT4-fs (vda): warning: mounting fs with errors, running e2fsck is recommended
audit: type=2000 audit(1700000000.123:1): state=initialized audit_enabled=0 res=1
ubsan: this kernel has no bugs, the bug count is 0
random: crng init done
Freeing unused kernel image (initmem) memory: 3400K
Run /init as init process
dmagate: loading out-of-tree module taints kernel.
dmagate: module verification failed: signature and/or required key missing - tainting kernel
"""


def test_clean_boot_has_no_splats() -> None:
    text = kernel(CLEAN_BOOT) + "\nBusyBox v1.35.0 built-in shell (ash)\n/ # \x1b[6n"
    assert find_splats(text) == []


# ------------------------------------------------------------ console prefixes


@pytest.mark.parametrize(
    "text",
    [
        kernel(WARN),
        kernel(WARN, caller="T73"),
        kernel(WARN, caller="T73", sep=" "),
        kernel(WARN, caller="C1"),
        "".join(f"[{'T73':>6}] {line}\n" for line in WARN.splitlines()),
        WARN,
        kernel(WARN).replace("\n", "\r\n"),
        kernel(WARN).replace("[", "/ # \x1b[6n[", 1),
        WARN.replace("\n", "\r\n"),
    ],
    ids=["timestamp", "caller", "caller-spaced", "cpu", "caller-only", "bare", "crlf",
         "prompt", "bare-crlf"],
)
def test_prefixes_are_stripped(text: str) -> None:
    splat = only(text)
    assert (splat.kind, splat.title, splat.line) == ("WARNING", "WARNING in dmagate_ring_put", 2)
    assert splat.report.splitlines()[-1] == "---[ end trace 0000000000000000 ]---"


def test_interleaved_user_output_does_not_hide_a_report() -> None:
    lines = kernel(NULL_DEREF).splitlines()
    lines.insert(2, "dmagate-stress: iteration 41 ok")
    splat = only("\n".join(lines))
    assert splat.title.endswith("in dmagate_read_desc")


# -------------------------------------------------------------- format_splats


def test_format_splats() -> None:
    splats = find_splats(kernel(WARN) + kernel(KMEMLEAK, start=200))
    text = format_splats(splats)
    assert "- WARNING: WARNING in dmagate_ring_put (console line 3)" in text
    assert "- KMEMLEAK: memory leak in dmagate_alloc_ring" in text
    assert "dmagate_test: ring index 9 out of range" in text
    assert "unreferenced object" not in text, "only the first report is shown in full"
    assert format_splats([]) == "no kernel splats"
    assert "console line" not in format_splats([Splat("KMEMLEAK", "memory leak in x", -1, "r")])
