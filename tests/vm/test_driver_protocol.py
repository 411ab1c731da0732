"""The driver's ownership protocol, end to end in one guest: submit revokes
the range from every mapping, a touch during DMA gets SIGBUS at the right
address, the completion interrupt wakes every kind of waiter, and the data
the program then sees is exactly what the device wrote (docs/driver.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dmagate.devicefaults import device_faults
from dmagate.guesttool import EXIT_OK, dmagatectl, driver_param, driver_stats, stats_delta
from dmagate.hwregs import HW
from dmagate.vm import VM

PAGE = 4096
# A transfer window wide enough to hit from the guest: 300 ms of device time.
WINDOW_NS = 300_000_000


@pytest.fixture
def slow_device(vm: VM) -> Iterator[VM]:
    with device_faults(vm, **{"fault-extra-delay-ns": WINDOW_NS}):
        yield vm


def test_info_describes_driver_and_device(vm: VM) -> None:
    info = dmagatectl(vm, "info")
    assert info.status == EXIT_OK, info.describe()
    assert info.lines == [{
        "version": "1", "max_buffer": str(64 << 20),
        "device_version": f"0x{HW['VERSION_VALUE']:08x}", "irq_mode": "msix",
    }]
    assert vm.run("stat -c '%a %t' /dev/dmagate0", check=True).stdout.split()[0] == "600"


@pytest.mark.parametrize("op", ["fill", "checksum", "transform"])
@pytest.mark.parametrize("wait", ["poll", "select", "epoll", "read", "ioctl"])
def test_operation_completes_and_data_verifies(vm: VM, op: str, wait: str) -> None:
    run = dmagatectl(vm, f"xfer {op} -w {wait} -s 256K -o 64K -l 100000 -p 0x5eed")
    assert run.status == EXIT_OK, run.describe()
    assert (run["error"], run["status"], run["bytes"]) == ("0", "0", "100000")
    assert (run["verified"], run["outside"]) == ("yes", "ok")
    if wait in ("poll", "epoll"):
        assert run["revents"] == "IN"


@pytest.mark.parametrize(("size", "offset", "length"), [
    ("4K", "0", "1"),
    ("1M", "0x3000", "0x1000"),
    ("4M", "0", "4M"),
    ("64M", "0", "64M"),
])
def test_sizes_up_to_the_largest_buffer(vm: VM, size: str, offset: str, length: str) -> None:
    run = dmagatectl(vm, f"xfer fill -s {size} -o {offset} -l {length}", timeout=120)
    assert run.status == EXIT_OK, run.describe()
    assert run["verified"] == "yes" and run["outside"] == "ok"


def test_repeated_transfers_keep_sequence_numbers(vm: VM) -> None:
    run = dmagatectl(vm, "xfer transform -s 64K -n 40")
    assert run.status == EXIT_OK, run.describe()
    assert [int(line["seq"]) for line in run.lines if "seq" in line] == list(range(1, 41))


@pytest.mark.parametrize(("map_on_wait", "faults"), [("N", 2), ("Y", 1)])
def test_a_regrant_takes_one_fault_or_none_once_read_maps_it(vm: VM, map_on_wait: str,
                                                              faults: int) -> None:
    """256 pages come back with the first touch after completion, not one by
    one; or with the read of the record (map_on_wait, the default)."""
    with driver_param(vm, "map_on_wait", map_on_wait):
        before = driver_stats(vm)
        run = dmagatectl(vm, "xfer fill -s 1M")
        after = driver_stats(vm)
    assert run.status == EXIT_OK, run.describe()
    # One fault maps the fresh buffer, one (or none) the re-granted range.
    assert stats_delta(before, after) == {
        "submits": 1, "completions": 1, "errors": 0, "timeouts": 0, "revocations": 1,
        "faults": faults, "sigbus": 0}


@pytest.mark.parametrize("touch", ["read", "write"])
@pytest.mark.parametrize("via", ["self", "second", "child", "split", "thread"])
def test_touch_during_dma_gets_sigbus_in_the_page(slow_device: VM, via: str, touch: str) -> None:
    before = driver_stats(slow_device)
    at = 0x40000 + 123
    run = dmagatectl(slow_device, f"touch fill --touch {touch} --via {via} --at {at:#x} "
                                  "-s 1M -o 0x40000 -l 0x40000")
    assert run.status == EXIT_OK, run.describe()
    touched = next(line for line in run.lines if "signal" in line)
    assert touched["signal"] == "SIGBUS" and touched["code"] == "BUS_ADRERR"
    assert int(touched["addr_offset"], 16) // PAGE == at // PAGE
    assert run["verified"] == "yes" and run["after"] == "ok"
    assert stats_delta(before, driver_stats(slow_device))["sigbus"] >= 1


def test_pages_outside_the_range_stay_usable(slow_device: VM) -> None:
    run = dmagatectl(slow_device, "touch transform --touch write --at 0x20000 --outside 0x1f000 "
                                  "-s 256K -o 0x20000 -l 0x10000")
    assert run.status == EXIT_OK, run.describe()
    assert run["outside_touch"] == "ok" and run["signal"] == "SIGBUS"


def test_kernel_copies_into_revoked_pages_fail_with_efault(slow_device: VM) -> None:
    run = dmagatectl(slow_device, "efault fill -s 256K -o 0x10000 -l 0x20000")
    assert run.status == EXIT_OK, run.describe()
    assert (run["read_errno"], run["write_errno"]) == ("EFAULT", "EFAULT")
    assert (run["after_read_ret"], run["after_write_ret"]) == ("4096", "4096")


@pytest.mark.parametrize("size", ["64K", "4M"])
def test_mapping_cannot_be_pinned(vm: VM, size: str) -> None:
    # Every page is mapped first, for the lockless GUP walk; 4 MiB is mapped
    # with PMD entries where the kernel can (test_driver_mappings.py).
    run = dmagatectl(vm, f"pin -s {size}")
    assert run.status == EXIT_OK, run.describe()
    assert run["vmsplice"] == "EFAULT"
    assert run["io_uring"] in ("EFAULT", "EOPNOTSUPP"), run.describe()
    assert run["process_vm_readv"] == "EFAULT"
    assert run["plain"] == "ok"


EXPECTED_ERRNOS = {
    "ioctl_unknown": "ENOTTY",
    "ioctl_badptr": "EFAULT",
    # The whole command is decoded: a known number with another direction
    # or size is unknown.
    "ioctl_wrong_dir": "ENOTTY",
    "ioctl_wrong_size": "ENOTTY",
    # Up to a page with a zero tail is fine; past a page E2BIG, zero or not
    # (as clone3, sched_setattr, perf_event_open).
    "info_page_zero_tail": "0",
    "info_over_page_zero_tail": "E2BIG",
    "info_small_size": "EINVAL",
    "info_big_zero_tail": "0",
    "info_big_nonzero_tail": "E2BIG",
    "alloc_flags": "EINVAL",
    "alloc_zero": "EINVAL",
    "alloc_unaligned": "EINVAL",
    "alloc_too_big": "EFBIG",
    "mmap_no_buffer": "ENOBUFS",
    "submit_no_buffer": "ENOBUFS",
    "alloc_twice": "EEXIST",
    "submit_bad_op": "EINVAL",
    "submit_reserved": "EINVAL",
    "submit_flags": "EINVAL",
    "submit_unaligned": "EINVAL",
    "submit_zero_len": "EINVAL",
    "submit_past_end": "ERANGE",
    "submit_overflow": "ERANGE",
    # EFAULT means nothing was posted: no transfer to wait for after it.
    "submit_readonly_arg": "EFAULT",
    "submit_readonly_posted": "ENOENT",
    "mmap_private": "EINVAL",
    "mmap_past_end": "EINVAL",
    "mmap_offset_past_end": "EINVAL",
    "mremap_grow": "EFAULT",
    "other_fd_mmap": "ENOBUFS",
    "read_small": "EINVAL",
    "read_nonblock_empty": "EAGAIN",
    "wait_unknown": "ENOENT",
    "wait_none": "ENOENT",
    "submit_busy": "EBUSY",
    "wait_timeout": "ETIMEDOUT",
    "wait_ok": "0",
}


def test_bad_calls_get_the_documented_errnos(slow_device: VM) -> None:
    run = dmagatectl(slow_device, "errnos")
    assert run.status == EXIT_OK, run.describe()
    got = {line["case"]: line["errno"] for line in run.lines if "case" in line}
    assert got == EXPECTED_ERRNOS


def test_statistics_count_what_happened(vm: VM) -> None:
    before = driver_stats(vm)
    with device_faults(vm, **{"fault-extra-delay-ns": WINDOW_NS}), \
            driver_param(vm, "map_on_wait", "N"):
        run = dmagatectl(vm, "touch checksum --touch read -s 64K")
    assert run.status == EXIT_OK, run.describe()
    delta = stats_delta(before, driver_stats(vm))
    assert delta["submits"] == delta["completions"] == delta["revocations"] == 1
    assert delta["sigbus"] == 1 and delta["errors"] == 0
    # The fresh buffer, then the range given back; the refused touch is no fault.
    assert delta["faults"] == 2, delta


MIB = 1 << 20


def fault_offsets(vm: VM, at: int) -> list[int]:
    """Offsets whose touch faulted: the page at ``at`` first, then every page
    of a 64 MiB buffer just given back, in order."""
    with driver_param(vm, "map_on_wait", "N"):
        run = dmagatectl(vm, f"regrant fill -s 64M --at {at:#x}")
    assert run.status == EXIT_OK, run.describe()
    offsets = [int(o, 16) for o in run["fault_offsets"].split(",") if o]
    assert len(offsets) == int(run["faults"])
    return offsets


def test_one_fault_maps_a_bounded_run_touched_page_first(vm: VM) -> None:
    # 64 MiB given back at once: a fault maps its own page and up to 2 MiB
    # after it, not all 16,384 pages under the session lock.
    at = 40 * MIB
    expected = [at, *range(0, at, 2 * MIB), *range(at + 2 * MIB, 64 * MIB, 2 * MIB)]
    assert fault_offsets(vm, at) == expected


def test_one_fault_near_the_end_maps_the_pages_before_it(vm: VM) -> None:
    at = 64 * MIB - 4096
    assert fault_offsets(vm, at) == [at, *range(0, 62 * MIB, 2 * MIB)]
