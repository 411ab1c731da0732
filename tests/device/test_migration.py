"""Migration (datasheet §11; device v1.1, issue 9, item 3): every state a
guest can reach migrates, a corrupted stream is refused with QEMU still up,
and the engine does not run while the VM is stopped. Streams are patched with
dmagate.migstream, whose own tests against a real stream come first."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dmagate import reference as ref
from dmagate.devdriver import Dmagate
from dmagate.hwregs import HW
from dmagate.migstream import FieldNotFoundError, MigrationStream, Section
from dmagate.paths import BuildPaths
from dmagate.qtest import QTestError, QTestMachine
from dmagate.sanitizer import format_reports

from .conftest import CQ, DATA, RING, SG, SLOT, SQ, load_state, save_state

FILL = HW["OP_FILL"]
MiB = 1 << 20
MEMORY_MIB = 128  # DATA + 8 MiB fits; source and target must agree
SIZE = 8 * MiB
SEED = 6
# The 8 MiB FILL in four contiguous segments: the transfer is saved inside
# the second one, with SG entries behind it and ahead of it.
SEGMENTS = [(DATA, 3 * MiB // 2), (DATA + 3 * MiB // 2, 3 * MiB // 2),
            (DATA + 3 * MiB, 5 * MiB // 2), (DATA + 11 * MiB // 2, 5 * MiB // 2)]
IDLE_SQ, IDLE_CQ = 16, 32  # ring sizes of the idle stream, unlike the defaults
REGISTERS = ("CTRL", "STATUS", "ERROR", "SQ_SIZE", "SQ_HEAD", "SQ_TAIL", "CQ_SIZE", "CQ_HEAD",
             "CQ_TAIL", "INT_STATUS", "INT_MASK")
REGISTERS64 = ("ERROR_ADDR_LO", "SQ_BASE_LO", "CQ_BASE_LO", "STAT_DESCRIPTORS", "STAT_BYTES",
               "STAT_INTERRUPTS", "STAT_ERRORS", "STAT_FAULTS")


def registers(dev: Dmagate) -> dict[str, int]:
    """What the guest sees of the device (its clock aside)."""
    seen = {reg: dev.read(reg) for reg in REGISTERS}
    seen.update({reg.removesuffix("_LO"): dev.read64(reg) for reg in REGISTERS64})
    return seen


@dataclass(frozen=True)
class Saved:
    """A stream, and what the source showed right before it was written."""

    path: Path
    registers: dict[str, int]
    pci_id: int  # config dword 0
    tag: int  # the last tag the source used
    memory: bytes  # DATA .. DATA + SIZE


@contextlib.contextmanager
def like_make_machine(workdir: Path) -> Iterator[QTestMachine]:
    """A source machine with the arguments make_machine() gives one, so that
    load_state() (which uses make_machine) starts a machine its stream fits;
    made here for a module-scoped fixture, checked as make_machine checks."""
    qemu = BuildPaths.discover().qemu
    if not qemu.exists():
        pytest.fail(f"no QEMU at {qemu}")
    machine = QTestMachine(qemu, ["-d", "guest_errors", "-device", f"dmagate,id=dg,addr={SLOT}"],
                           workdir, memory_mib=MEMORY_MIB)
    try:
        yield machine
    finally:
        machine.close()
    if reports := machine.sanitizer_reports():
        pytest.fail(format_reports(reports, machine.stderr_log), pytrace=False)


def capture(machine: QTestMachine, dev: Dmagate, path: Path) -> Saved:
    seen = registers(dev)
    pci_id = dev.pci.read32(0)
    memory = machine.memread(DATA, SIZE)
    save_state(machine, path)
    return Saved(path, seen, pci_id, dev.tag, memory)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Saved]:
    """Two streams made once for the module: "mid-transfer" (the 8 MiB FILL
    about 2 MiB in) and "idle" (enabled, three FILLs done, INT_MASK set)."""
    root = tmp_path_factory.mktemp("streams")
    streams: dict[str, Saved] = {}
    with like_make_machine(root / "mid-source") as machine:
        dev = Dmagate(machine, SLOT)
        dev.setup(SQ, RING, CQ, RING, SG)
        machine.memset(DATA, SIZE, 0)
        dev.submit(FILL, SEGMENTS, param=SEED)
        machine.clock_step(1_000_000 + 2 * MiB)  # latency, then about 2 MiB moved
        assert dev.read("STATUS") & HW["STATUS_BUSY"]
        streams["mid-transfer"] = capture(machine, dev, root / "mid-transfer")
    with like_make_machine(root / "idle-source") as machine:
        dev = Dmagate(machine, SLOT)
        dev.setup(SQ, IDLE_SQ, CQ, IDLE_CQ, SG)
        for seed in (1, 2, 3):
            dev.submit(FILL, [(DATA + seed * 4096, 4096)], param=seed)
            assert dev.wait()[0].status == HW["ST_OK"]
        dev.write("INT_MASK", HW["INT_ERROR"])
        streams["idle"] = capture(machine, dev, root / "idle")
    section = MigrationStream.read(streams["mid-transfer"].path).section("dmagate")
    position = section.read("sg_pos")
    assert 0 < position < len(SEGMENTS) - 1 and section.read("sg_off"), (
        f"saved in SG entry {position} at {section.read('sg_off')}: the corruption "
        "cases want one in the middle of an entry with entries on both sides")
    return streams


def the_device(path: Path) -> tuple[MigrationStream, Section]:
    stream = MigrationStream.read(path)
    return stream, stream.section("dmagate")


def last_words(machine: QTestMachine) -> str:
    """How a dead QEMU ended: its exit status and the end of its stderr."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        machine.proc.wait(timeout=5)  # its last lines are in the log once it is gone
    return f"exit status {machine.proc.returncode}:\n{machine.stderr()}"


def load(make_machine: Callable[..., QTestMachine], state: Path,
         device: str = "") -> tuple[QTestMachine, str]:
    """load_state() into a machine of MEMORY_MIB; a QEMU that dies in it (say
    on load_state's `cont`) fails the test with QEMU's last words."""
    made: list[QTestMachine] = []

    def make(*args: Any, **kwargs: Any) -> QTestMachine:
        made.append(make_machine(*args, memory_mib=MEMORY_MIB, **kwargs))
        return made[-1]

    try:
        return load_state(make, state, device=device)
    except Exception:
        if made:
            with contextlib.suppress(subprocess.TimeoutExpired):
                made[0].proc.wait(timeout=2)  # a QEMU on its way out is not reaped yet
            if not made[0].alive():
                pytest.fail(f"QEMU died loading {state.name}, {last_words(made[0])}")
        raise


def view_of(machine: QTestMachine, saved: Saved) -> Dmagate:
    """A driver for the migrated-in device, with the source's view of the rings."""
    dev = Dmagate(machine, SLOT, configure=False)
    dev.sq_base, dev.sq_size = saved.registers["SQ_BASE"], saved.registers["SQ_SIZE"]
    dev.cq_base, dev.cq_size = saved.registers["CQ_BASE"], saved.registers["CQ_SIZE"]
    dev.sq_tail, dev.cq_head = saved.registers["SQ_TAIL"], saved.registers["CQ_HEAD"]
    dev.sg_area, dev.tag = SG, saved.tag
    return dev


def assert_fill_finishes(dev: Dmagate) -> None:
    """The saved 8 MiB FILL completes, with the right data (as
    test_migration_mid_transfer checks it)."""
    (done,) = dev.wait()
    assert (done.status, done.bytes_done) == (HW["ST_OK"], SIZE)
    data = dev.qt.memread(DATA, SIZE)
    assert data == ref.fill_pattern(SEED, 0, SIZE)
    assert done.crc == ref.crc32(data)


# -- migstream on a real stream ---------------------------------------------------------


def test_stream_holds_the_programmed_registers(saved: dict[str, Saved]) -> None:
    idle = saved["idle"]
    stream, section = the_device(idle.path)
    assert stream.section(section.idstr) is section
    assert section.idstr.endswith("/dmagate") and section.vmsd_name == "dmagate"
    assert section.version_id == section.description["version"]
    seen = idle.registers
    for name in ("ctrl", "status", "error", "sq_base", "sq_size", "sq_head", "sq_tail",
                 "cq_base", "cq_size", "cq_head", "cq_tail", "int_status", "int_mask"):
        assert section.read(name) == seen[name.upper()], name
    assert (seen["SQ_BASE"], seen["SQ_SIZE"], seen["CQ_BASE"], seen["CQ_SIZE"]) == (
        SQ, IDLE_SQ, CQ, IDLE_CQ)
    assert seen["SQ_HEAD"] == 3 and seen["INT_MASK"] == HW["INT_ERROR"]
    stats = ("DESCRIPTORS", "BYTES", "INTERRUPTS", "ERRORS", "FAULTS")
    assert section.count("stats") == len(stats)
    for index, name in enumerate(stats):
        assert section.read("stats", index) == seen[f"STAT_{name}"], name
    # A nested struct: PCIDevice's config space (raw bytes), vendor and device id first.
    config = section.read_bytes("parent_obj[0].config[1]")
    assert int.from_bytes(config[:4], "little") == idle.pci_id
    assert idle.pci_id == 0xD6A7_1234


def test_stream_holds_the_transfer_in_progress(saved: dict[str, Saved]) -> None:
    mid = saved["mid-transfer"]
    _, section = the_device(mid.path)
    assert section.read("active") == 1
    assert mid.registers["STATUS"] & HW["STATUS_BUSY"]
    assert (section.read("opcode"), section.read("tag"), section.read("length"),
            section.read("param"), section.read("sg_count")) == (
        FILL, mid.tag, SIZE, SEED, len(SEGMENTS))
    assert section.count("sg_len") == HW["MAX_SEGMENTS"]
    for index, (addr, length) in enumerate(SEGMENTS):
        assert section.read("sg_addr", index) == addr
        assert section.read(f"sg_len[{index}]") == length
    # How far it got, three ways that must agree: the SG walk, the byte
    # count, and the memory the FILL had written when the stream was taken.
    done = section.read("done")
    position = section.read("sg_pos")
    assert sum(n for _, n in SEGMENTS[:position]) + section.read("sg_off") == done
    assert 0 < done < section.read("limit") <= SIZE
    assert mid.memory[:done] == ref.fill_pattern(SEED, 0, done)
    assert mid.memory[done:] == bytes(SIZE - done)


def test_write_then_read_back_after_save(saved: dict[str, Saved], tmp_path: Path) -> None:
    original = saved["idle"].path.read_bytes()
    stream, section = the_device(saved["idle"].path)
    changes = {("sq_tail", 0): 7, ("sg_len", 2): 0x1234_5678, ("latency_ns", 0): 1 << 63,
               ("due_ns", 0): -5, ("active", 0): 1, ("stats", 4): 0xDEAD_BEEF_0000_0001}
    for (name, index), value in changes.items():
        assert section.read(name, index) != value
        section.write(name, value, index)
    stream.save(tmp_path / "patched")
    assert saved["idle"].path.read_bytes() == original

    _, again = the_device(tmp_path / "patched")
    for (name, index), value in changes.items():
        assert again.read(name, index) == value, name
    assert again.read_bytes("due_ns") == (-5).to_bytes(8, "big", signed=True)
    assert again.read_bytes("sg_len", 2) == bytes.fromhex("12345678")  # big-endian
    # Nothing but those bytes changed.
    patched = (tmp_path / "patched").read_bytes()
    assert len(patched) == len(original)
    touched: set[int] = set()
    for name, index in changes:
        offset, size = again.field(name, index)
        touched.update(range(offset, offset + size))
    assert {i for i, (a, b) in enumerate(zip(original, patched, strict=True)) if a != b} <= touched


def test_lookup_errors_are_clear(saved: dict[str, Saved]) -> None:
    stream, section = the_device(saved["idle"].path)
    with pytest.raises(FieldNotFoundError, match=r"no field 'sg_lenn'.*sg_len"):
        section.field("sg_lenn")
    with pytest.raises(FieldNotFoundError, match=r"sg_len\[1024\] is out of range"):
        section.read("sg_len[1024]")
    with pytest.raises(FieldNotFoundError, match="out of range"):
        section.read("ctrl", 1)
    with pytest.raises(FieldNotFoundError, match=r"no field 'parent_obj\.config'"):
        section.read("parent_obj.config")
    with pytest.raises(FieldNotFoundError, match=r"no section 'nvme'.*dmagate"):
        stream.section("nvme")
    with pytest.raises(ValueError, match="does not fit"):
        section.write("sq_size", 1 << 32)
    with pytest.raises(ValueError, match="not a number"):
        section.read("parent_obj[0]")
    with pytest.raises(ValueError, match="has an index already"):
        section.read("sg_len[3]", 4)


def test_patched_stream_loads_into_the_device(
    saved: dict[str, Saved], make_machine: Callable[..., QTestMachine], tmp_path: Path
) -> None:
    """The offsets are the device's: values written into the stream are what
    the migrated-in device shows in its registers."""
    stream, section = the_device(saved["idle"].path)
    mask = HW["INT_COMPLETION"]
    assert section.read("int_mask") != mask
    section.write("int_mask", mask)
    section.write("stats", 12345, 4)  # STAT_FAULTS
    stream.save(tmp_path / "patched")
    target, status = load(make_machine, tmp_path / "patched")
    assert status == "completed", target.stderr()
    dev = view_of(target, saved["idle"])
    assert dev.read("INT_MASK") == mask
    assert dev.read64("STAT_FAULTS") == 12345
    assert dev.read64("STAT_DESCRIPTORS") == saved["idle"].registers["STAT_DESCRIPTORS"]


# -- every state a guest can reach loads ------------------------------------------------


def test_disabled_device_with_a_shrunk_ring_migrates(
    make_machine: Callable[..., QTestMachine], tmp_path: Path
) -> None:
    """Five descriptors, CTRL.ENABLE cleared, SQ_SIZE shrunk to 2: SQ_HEAD and
    SQ_TAIL (5) are past the new size, and that is a legitimate state."""
    timing = "latency-ns=0,bandwidth-mbps=0"
    source = make_machine(timing, memory_mib=MEMORY_MIB)
    dev = Dmagate(source, SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    for seed in range(5):
        dev.submit(FILL, [(DATA + seed * 4096, 4096)], param=seed)
    assert [c.status for c in dev.wait(5)] == [HW["ST_OK"]] * 5
    dev.write("CTRL", 0)
    dev.write("SQ_SIZE", 2)
    before = registers(dev)
    assert (before["SQ_SIZE"], before["SQ_HEAD"], before["CTRL"]) == (2, 5, 0)
    save_state(source, tmp_path / "state")

    target, status = load(make_machine, tmp_path / "state", device=timing)
    assert status == "completed", f"a guest-reachable state was refused:\n{target.stderr()}"
    moved = Dmagate(target, SLOT, configure=False)
    assert registers(moved) == before
    moved.setup(SQ, RING, CQ, RING, SG)
    target.memset(DATA, 65536, 0)
    moved.submit(FILL, [(DATA, 65536)], param=99)
    (done,) = moved.wait()
    assert (done.status, done.bytes_done) == (HW["ST_OK"], 65536)
    assert target.memread(DATA, 65536) == ref.fill_pattern(99, 0, 65536)


# -- a corrupted stream is refused, QEMU stays up ---------------------------------------

MAX_XFER = HW["MAX_XFER"]
MID, IDLE = "mid-transfer", "idle"


CORRUPTIONS: list[tuple[str, str, Callable[[Section], None]]] = [
    # The descriptor in progress.
    ("opcode-0", MID, lambda s: s.write("opcode", 0)),
    ("opcode-200", MID, lambda s: s.write("opcode", 200)),
    ("length-0", MID, lambda s: s.write("length", 0)),
    ("length-over-max", MID, lambda s: s.write("length", MAX_XFER + 1)),
    ("limit-over-length", MID, lambda s: s.write("limit", s.read("length") + 1)),
    ("done-over-limit", MID, lambda s: s.write("done", s.read("limit") + 1)),
    ("result-99", MID, lambda s: s.write("result", 99)),
    ("sg-len-current-0", MID, lambda s: s.write("sg_len", 0, s.read("sg_pos"))),
    ("sg-len-next-0", MID, lambda s: s.write("sg_len", 0, s.read("sg_pos") + 1)),
    ("sg-len-over-max", MID,
     lambda s: s.write("sg_len", MAX_XFER + 1, s.read("sg_count") - 1)),
    ("sg-count-too-short", MID, lambda s: s.write("sg_count", s.read("sg_pos") + 1)),
    ("last-sg-len-too-short", MID, lambda s: s.write("sg_len", 1, s.read("sg_count") - 1)),
    ("sg-pos-over-count", MID, lambda s: s.write("sg_pos", s.read("sg_count") + 1)),
    ("sg-off-at-len", MID, lambda s: s.write("sg_off", s.read("sg_len", s.read("sg_pos")))),
    ("active-not-enabled", MID,
     lambda s: s.write("status", s.read("status") & ~HW["STATUS_ENABLED"])),
    ("active-halted", MID, lambda s: s.write("status", s.read("status") | HW["STATUS_HALTED"])),
    ("int-mask-all-ones", MID, lambda s: s.write("int_mask", 0xFFFF_FFFF)),
    ("bandwidth-2**32", MID, lambda s: s.write("bandwidth_mbps", 1 << 32)),
    ("latency-2**63", MID, lambda s: s.write("latency_ns", 1 << 63)),
    # The rings of an enabled device.
    ("sq-size-0", IDLE, lambda s: s.write("sq_size", 0)),
    ("sq-size-3", IDLE, lambda s: s.write("sq_size", 3)),
    ("cq-size-8192", IDLE, lambda s: s.write("cq_size", 8192)),
    ("sq-base-misaligned", IDLE, lambda s: s.write("sq_base", s.read("sq_base") + 32)),
    ("sq-head-at-size", IDLE, lambda s: s.write("sq_head", s.read("sq_size"))),
    ("cq-tail-at-size", IDLE, lambda s: s.write("cq_tail", s.read("cq_size"))),
    # Registers.
    ("cq-phase-5", IDLE, lambda s: s.write("cq_phase", 5)),
    ("ctrl-all-ones", IDLE, lambda s: s.write("ctrl", 0xFFFF_FFFF)),
]


def run_a_while(machine: QTestMachine) -> None:
    """Let an accepted stream do its worst (QEMU may die doing it)."""
    try:
        for _ in range(5):
            machine.clock_step(10_000_000)
    except (QTestError, OSError):  # no answer, or the socket closed: QEMU died
        pass


def still_up(machine: QTestMachine) -> bool:
    """QEMU answers on QMP and on qtest."""
    with contextlib.suppress(Exception):
        machine.qmp.cmd("query-status")
        machine.readl(0)
        return machine.alive()
    return False


@pytest.mark.parametrize(("kind", "corrupt"), [pytest.param(kind, corrupt, id=name)
                                               for name, kind, corrupt in CORRUPTIONS])
def test_corrupted_stream_is_refused(
    saved: dict[str, Saved], make_machine: Callable[..., QTestMachine], tmp_path: Path,
    kind: str, corrupt: Callable[[Section], None]
) -> None:
    stream, section = the_device(saved[kind].path)
    original = bytes(stream.data)
    corrupt(section)
    assert stream.data != original, "the corruption changed nothing"
    stream.save(tmp_path / "corrupt")

    target, status = load(make_machine, tmp_path / "corrupt")
    if status == "completed":
        run_a_while(target)
    assert still_up(target), f"QEMU died after the load {status}, {last_words(target)}"
    assert status == "failed", "the device accepted the corrupted stream"
    assert "load of migration failed" in target.qmp.cmd("query-migrate").get("error-desc", "")
    assert f"of device '{section.idstr}'" in target.stderr()


@pytest.mark.parametrize("kind", [MID, IDLE])
def test_unmodified_stream_loads(
    saved: dict[str, Saved], make_machine: Callable[..., QTestMachine], kind: str
) -> None:
    """The control for the corruptions: the same streams, untouched, load and run."""
    target, status = load(make_machine, saved[kind].path)
    assert status == "completed", target.stderr()
    dev = view_of(target, saved[kind])
    if kind == MID:
        assert dev.read("STATUS") & HW["STATUS_BUSY"]
        assert_fill_finishes(dev)
        return
    assert registers(dev) == saved[kind].registers
    dev.submit(FILL, [(DATA, 65536)], param=77)
    (done,) = dev.wait()
    assert (done.status, done.sq_index) == (HW["ST_OK"], saved[kind].registers["SQ_TAIL"])
    assert target.memread(DATA, 65536) == ref.fill_pattern(77, 0, 65536)


# -- the engine does not run while the VM is stopped ------------------------------------


def give_it_time(machine: QTestMachine) -> None:
    """Main-loop turns (each qtest command is one), virtual and real time."""
    for _ in range(10):
        machine.clock_step(100_000)
    time.sleep(0.05)
    machine.clock_step(100_000)


def test_engine_waits_while_the_vm_is_stopped(
    make_machine: Callable[..., QTestMachine]
) -> None:
    machine = make_machine("zero-delay=on", memory_mib=MEMORY_MIB)
    dev = Dmagate(machine, SLOT)
    dev.setup(SQ, RING, CQ, RING, SG)
    machine.memset(DATA, MiB, 0)
    machine.qmp.cmd("stop")
    assert machine.qmp.cmd("query-status")["status"] == "paused"
    dev.submit(FILL, [(DATA, MiB)], param=5)
    give_it_time(machine)
    assert machine.memread(DATA, MiB) == bytes(MiB), "DMA while the VM was stopped"
    assert dev.read("CQ_TAIL") == 0, "a completion while the VM was stopped"
    machine.qmp.cmd("cont")
    (done,) = dev.wait()
    assert (done.status, done.bytes_done) == (HW["ST_OK"], MiB)
    assert machine.memread(DATA, MiB) == ref.fill_pattern(5, 0, MiB)


def test_loaded_transfer_waits_for_cont(
    saved: dict[str, Saved], make_machine: Callable[..., QTestMachine], tmp_path: Path
) -> None:
    """Loaded into a machine started with -S, the transfer resumes on `cont`
    only. The stream is switched to zero-delay, so that an engine running too
    early does not need virtual time to show it. (By hand, not load_state(),
    which sends `cont` itself.)"""
    stream, section = the_device(saved[MID].path)
    section.write("zero_delay", 1)
    stream.save(tmp_path / "state")
    done = section.read("done")

    target = make_machine(extra=("-S", "-incoming", "defer"), memory_mib=MEMORY_MIB)
    target.qmp.cmd("migrate-incoming", uri=f"file:{tmp_path / 'state'}",
                   **{"exit-on-error": False})
    deadline = time.monotonic() + 30
    while (status := target.qmp.cmd("query-migrate").get("status")) not in ("completed",
                                                                             "failed"):
        assert time.monotonic() < deadline, f"incoming migration still {status}"
        time.sleep(0.02)
    assert status == "completed", target.stderr()
    assert target.qmp.cmd("query-status")["running"] is False
    give_it_time(target)
    dev = view_of(target, saved[MID])
    memory = target.memread(DATA, SIZE)
    assert memory[:done] == saved[MID].memory[:done]
    assert memory[done:] == bytes(SIZE - done), "DMA before `cont`"
    assert dev.read("CQ_TAIL") == 0, "a completion before `cont`"
    assert dev.read("STATUS") & HW["STATUS_BUSY"], "the transfer is not in progress"
    target.qmp.cmd("cont")  # zero-delay: it may be done before STATUS could be read
    assert_fill_finishes(dev)
