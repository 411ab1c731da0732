"""scripts/run-logged.sh, through which make test runs its suites side by
side: a run's output stays whole, and its exit status is the command's."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "run-logged.sh"


def _run(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), "a suite", str(tmp_path / "logs" / "a.log"), *command],
                          capture_output=True, text=True, timeout=30, check=False)


def test_output_is_kept_and_printed_whole_after_the_run(tmp_path: Path) -> None:
    run = _run(tmp_path, "sh", "-c", "echo one; echo two >&2; echo three")
    assert run.returncode == 0
    lines = run.stdout.splitlines()
    assert lines[0] == f"a suite: running, output in {tmp_path / 'logs' / 'a.log'}"
    assert lines[1].startswith("===== a suite: passed in ")
    assert lines[2:5] == ["one", "two", "three"]
    assert lines[5] == lines[1]
    assert (tmp_path / "logs" / "a.log").read_text() == "one\ntwo\nthree\n"


def test_a_failing_run_says_so_and_exits_as_its_command(tmp_path: Path) -> None:
    run = _run(tmp_path, "sh", "-c", "echo broken; exit 3")
    assert run.returncode == 3
    assert "===== a suite: FAILED (exit 3) in " in run.stdout
    assert "broken" in run.stdout


def test_the_command_gets_no_stdin(tmp_path: Path) -> None:
    run = subprocess.run([str(SCRIPT), "reader", str(tmp_path / "r.log"), "cat"],
                         input="typed\n", capture_output=True, text=True, timeout=30,
                         check=False)
    assert run.returncode == 0
    assert (tmp_path / "r.log").read_text() == ""


def test_a_missing_command_is_a_usage_error(tmp_path: Path) -> None:
    run = subprocess.run([str(SCRIPT), "only a name"], capture_output=True, text=True,
                         timeout=30, check=False)
    assert run.returncode == 2
    assert "usage: run-logged.sh NAME LOG COMMAND..." in run.stderr


def _cpu_seconds(stdout: str) -> int:
    match = re.search(r"^===== a suite: passed in \d+ s \((\d+) CPU-s\) =====$", stdout, re.M)
    assert match, stdout
    return int(match.group(1))


def test_the_verdict_line_counts_the_cpu_of_the_command_and_its_children(
        tmp_path: Path) -> None:
    # A grandchild that spins until it has used 1.5 s of CPU, however
    # loaded the machine.
    spin = f"{sys.executable} -c 'import time\nwhile time.process_time() < 1.5: pass'"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = _run(tmp_path, "sh", "-c", spin)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert run.returncode == 0
    used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert used >= 1.5
    assert abs(_cpu_seconds(run.stdout) - used) <= 1
    assert not list((tmp_path / "logs").glob("*.times"))


def test_a_sleeping_command_uses_no_cpu(tmp_path: Path) -> None:
    run = _run(tmp_path, "sleep", "0.5")
    assert _cpu_seconds(run.stdout) == 0
