"""Each operation's data, checked byte for byte against the independent
reference (dmagate.reference), across sizes, SG layouts and ring wrap."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from dmagate import reference as ref
from dmagate.devdriver import Dmagate
from dmagate.hwregs import HW
from dmagate.qtest import QTestMachine

from .conftest import CQ, DATA, RING, SG, SLOT, SQ

FILL, CHECKSUM, TRANSFORM = HW["OP_FILL"], HW["OP_CHECKSUM"], HW["OP_TRANSFORM"]
MiB = 1 << 20


def fast_dev(make_machine: Callable[..., QTestMachine], memory_mib: int = 512) -> Dmagate:
    dev = Dmagate(make_machine("zero-delay=on", memory_mib=memory_mib), SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    return dev


@pytest.mark.parametrize("size", [1, 7, 8, 4095, 4096, 65537, 1 * MiB + 3])
def test_fill_sizes(dev: Dmagate, size: int) -> None:
    dev.qt.memset(DATA, size + 64, 0xAA)
    dev.submit(FILL, [(DATA, size)], param=0x1234_5678_9ABC_DEF0)
    (done,) = dev.wait()
    data = dev.qt.memread(DATA, size + 64)
    assert (done.status, done.bytes_done) == (HW["ST_OK"], size)
    assert data[:size] == ref.fill_pattern(0x1234_5678_9ABC_DEF0, 0, size)
    assert data[size:] == b"\xaa" * 64, "wrote past the end of the segment"
    assert done.crc == ref.crc32(data[:size])


def test_fill_64mib_zero_delay(make_machine: Callable[..., QTestMachine]) -> None:
    size = 64 * MiB
    dev = fast_dev(make_machine, memory_mib=512)
    dev.submit(FILL, [(DATA, size)], param=99)
    (done,) = dev.wait()
    data = dev.qt.memread(DATA, size)
    assert done.status == HW["ST_OK"] and done.bytes_done == size
    assert data == ref.fill_pattern(99, 0, size)
    assert done.crc == ref.crc32(data)


def test_fragmented_sg_256_segments(make_machine: Callable[..., QTestMachine]) -> None:
    dev = fast_dev(make_machine)
    rng = random.Random(256)
    segments, at = [], DATA
    for _ in range(256):
        length = rng.choice([1, 3, 511, 4096, 5000, rng.randrange(1, 20000)])
        at += rng.randrange(1, 64)  # odd gaps and alignments
        segments.append((at, length))
        at += length
    total = sum(n for _, n in segments)
    dev.submit(FILL, segments, param=5)
    (done,) = dev.wait()
    assert (done.status, done.bytes_done) == (HW["ST_OK"], total)
    expected = ref.fill_pattern(5, 0, total)
    got = b"".join(dev.qt.memread(a, n) for a, n in segments)
    assert got == expected
    assert done.crc == ref.crc32(expected)


def test_length_shorter_than_segments_leaves_the_rest(dev: Dmagate) -> None:
    dev.qt.memset(DATA, 8192, 0)
    dev.submit(FILL, [(DATA, 4096), (DATA + 4096, 4096)], length=5000, param=1)
    (done,) = dev.wait()
    assert done.bytes_done == 5000
    assert dev.qt.memread(DATA, 8192)[5000:] == bytes(8192 - 5000)


def test_checksum(dev: Dmagate) -> None:
    payload = random.Random(1).randbytes(300_001)
    dev.qt.memwrite(DATA, payload)
    dev.submit(CHECKSUM, [(DATA, 100_000), (DATA + 100_000, 200_001)])
    (done,) = dev.wait()
    assert (done.status, done.bytes_done) == (HW["ST_OK"], len(payload))
    assert done.crc == ref.crc32(payload)
    assert dev.qt.memread(DATA, len(payload)) == payload, "CHECKSUM must not write"


def test_transform_in_place(dev: Dmagate) -> None:
    payload = random.Random(2).randbytes(70_000)
    key = 0x0123_4567_89AB_CDEF
    dev.qt.memwrite(DATA, payload[:33_333])
    dev.qt.memwrite(DATA + 40_000, payload[33_333:])
    dev.submit(TRANSFORM, [(DATA, 33_333), (DATA + 40_000, 70_000 - 33_333)], param=key)
    (done,) = dev.wait()
    expected = ref.transform(payload, key)
    got = dev.qt.memread(DATA, 33_333) + dev.qt.memread(DATA + 40_000, 70_000 - 33_333)
    assert done.status == HW["ST_OK"]
    assert got == expected
    assert done.crc == ref.crc32(expected)
    # Twice with the same key restores the data.
    dev.submit(TRANSFORM, [(DATA, 33_333), (DATA + 40_000, 70_000 - 33_333)], param=key)
    dev.wait()
    assert dev.qt.memread(DATA, 33_333) == payload[:33_333]


def test_reference_crc_is_the_textbook_crc32() -> None:
    sample = random.Random(3).randbytes(2000)
    assert ref.crc32(sample) == ref.crc32_bitwise(sample)
    assert ref.crc32(b"123456789") == 0xCBF43926


def test_reference_pattern_bytes_stand_alone() -> None:
    block = ref.fill_pattern(77, 1000, 64)
    assert block == bytes(ref.fill_byte(77, 1000 + i) for i in range(64))


def test_ring_wrap_around_and_phase(machine: QTestMachine) -> None:
    dev = Dmagate(machine, SLOT)
    dev.setup(SQ, 4, CQ, 4, SG)
    seen = []
    for n in range(11):
        dev.submit(FILL, [(DATA + n * 4096, 4096)], param=n, tag=100 + n)
        seen += dev.wait()
    assert [c.tag for c in seen] == list(range(100, 111))
    assert [c.sq_index for c in seen] == [n % 4 for n in range(11)]
    # The phase flips each time the device wraps the completion ring.
    assert [c.phase for c in seen] == [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]
    for n in range(11):
        assert machine.memread(DATA + n * 4096, 4096) == ref.fill_pattern(n, 0, 4096)


def test_many_outstanding_processed_in_order(make_machine: Callable[..., QTestMachine]) -> None:
    dev = fast_dev(make_machine)
    for n in range(RING - 1):  # a full ring: 63 outstanding
        dev.post(dev.descriptor(FILL, dev.write_sg([(DATA + n * 8192, 8192)], SG + n * 16),
                                1, 8192, param=n, tag=n), ring=False)
    dev.write("SQ_TAIL", dev.sq_tail)
    done = dev.wait(RING - 1)
    assert [c.tag for c in done] == list(range(RING - 1))
    assert all(c.status == HW["ST_OK"] for c in done)
    assert dev.read64("STAT_DESCRIPTORS") == RING - 1
    assert dev.read64("STAT_BYTES") == (RING - 1) * 8192


def test_timing_window(dev: Dmagate) -> None:
    """Default 1 ms latency + 1 GB/s: 1 MiB completes 1 ms + 1048576 ns later."""
    start = dev.read64("TIME_LO")
    dev.submit(FILL, [(DATA, MiB)], param=3)
    dev.qt.clock_step(999_000)
    assert dev.completions() == []
    assert dev.read("STATUS") & HW["STATUS_BUSY"]
    (done,) = dev.wait()
    assert done.timestamp - start == 1_000_000 + MiB * 1000 // 1000
    assert dev.qt.memread(DATA, MiB) == ref.fill_pattern(3, 0, MiB)


def test_timing_set_at_runtime(dev: Dmagate) -> None:
    path = "/machine/peripheral/dg"
    dev.qt.qmp.cmd("qom-set", path=path, property="latency-ns", value=5000)
    dev.qt.qmp.cmd("qom-set", path=path, property="bandwidth-mbps", value=100)
    assert dev.qt.qmp.cmd("qom-get", path=path, property="latency-ns") == 5000
    start = dev.read64("TIME_LO")
    dev.submit(FILL, [(DATA, 10_000)])
    (done,) = dev.wait()
    assert done.timestamp - start == 5000 + 10_000 * 1000 // 100
