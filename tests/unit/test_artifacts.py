"""Where a failed VM test's artifacts go, and the line that reruns it:
make test runs the flavours' suites side by side, so each flavour has a
folder of its own."""

from __future__ import annotations

import shlex
from pathlib import Path

from dmagate.artifacts import artifact_dir, artifact_path, repro_command

NODEID = "tests/vm/test_fault_matrix.py::test_cell[stall-poll]"


def test_flavours_do_not_share_a_failed_tests_folder(tmp_path: Path) -> None:
    paths = {flavour: artifact_path(tmp_path, flavour, NODEID)
             for flavour in ("6.12", "6.1", "7.3", "debug")}
    assert len(set(paths.values())) == 4
    assert paths["6.1"] == tmp_path / "6.1" / "tests_vm_test_fault_matrix.py_test_cell_stall-poll"


def test_a_tree_gets_the_folder_named_like_its_image(tmp_path: Path) -> None:
    tree = tmp_path / "linux"
    path = artifact_path(tmp_path / "artifacts", str(tree), NODEID)
    assert path.parent.name.startswith("tree-linux-")


def test_the_folder_is_emptied_for_a_new_failure(tmp_path: Path) -> None:
    first = artifact_dir(tmp_path, "6.12", NODEID)
    (first / "console.log").write_text("old")
    again = artifact_dir(tmp_path, "6.12", NODEID)
    assert again == first
    assert not any(again.iterdir())


def test_the_rerun_names_the_flavour() -> None:
    line = repro_command(Path("/src/dmagate"), NODEID, "debug", "/venv/bin/python")
    assert shlex.split(line) == ["cd", "/src/dmagate", "&&", "/venv/bin/python", "-m", "pytest",
                                 NODEID, "--kernel", "debug"]
