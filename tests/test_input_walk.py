"""Step 1's walk of the input tree (issue 9, requirements 4 and 9): any
depth, and symlinks that lead out of the input directory named to the
operator."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
from conftest import SAMPLE_DICOMS, run_tool

from icf.archive import collect_input, make_archive
from icf.store import Visit

DEPTH = 2000  # twice Python's default recursion limit


@pytest.fixture
def deep_tree():
    """``<short tmp>/i/a/a/.../a/f.dcm``, DEPTH levels of one-letter
    directories: under a short path, so the deepest path stays below
    PATH_MAX (4096). Built and removed level by level, as os.makedirs and
    shutil.rmtree recurse."""
    base = Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))
    top = base / "i"
    top.mkdir()
    assert len(str(top)) + 2 * DEPTH + len("/f.dcm") < 4096
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            os.mkdir("a", dir_fd=fd)
            deeper = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        out = os.open("f.dcm", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        with os.fdopen(out, "wb") as f:
            f.write(SAMPLE_DICOMS[0].read_bytes())
    finally:
        os.close(fd)
    yield top
    deepest = str(top) + "/a" * DEPTH
    if os.path.exists(deepest + "/f.dcm"):
        os.unlink(deepest + "/f.dcm")
    for level in range(DEPTH, 0, -1):
        if os.path.isdir(str(top) + "/a" * level):
            os.rmdir(str(top) + "/a" * level)
    shutil.rmtree(base)


@pytest.mark.slow
def test_a_tree_deeper_than_the_recursion_limit_is_archived(deep_tree, tmp_path):
    """The walk does not recurse: 2,000 levels archive end to end, and step 2
    reads the member back under its full path."""
    store = tmp_path / "store"
    made = run_tool("make_studyvisit_archive", "-q", "-o", store, "--id", "s", "v", deep_tree, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    expected = "s_v/" + "a/" * DEPTH + "f.dcm"
    with tarfile.open(store / "s" / "v_dicom.tar") as tar:
        [member] = tar.getmembers()
        assert member.name == expected and member.isreg()
        assert tar.extractfile(member).read() == SAMPLE_DICOMS[0].read_bytes()
    listed = run_tool("deposit_visit_metadata", "-q", "-o", store, "--id", "s", "v", timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    [record] = json.loads((store / "s" / "v_metadata_dicoms.json").read_text())
    assert record["path"] == expected


def test_walk_order_is_the_archive_order(tmp_path):
    """The iterative walk yields what the sort by UTF-8 components gives:
    a directory's files at the place of its name, ``a/z`` before ``a-b``."""
    src = tmp_path / "in"
    for name in ("a-b", "a/z", "a/b/c", "ä", "b", "a/b.d/x"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    assert [f.member for f in collect_input(src, "t")] == [
        "t/a/b/c", "t/a/b.d/x", "t/a/z", "t/a-b", "t/b", "t/ä"]


def outside_links(tmp_path: Path, count: int) -> tuple[Path, list[Path]]:
    """An input directory with a DICOM, a symlink to it (inside) and
    ``count`` symlinks to files outside it."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLE_DICOMS[0], src / "inside.dcm")
    (src / "link-inside.dcm").symlink_to("inside.dcm")
    targets = []
    for i in range(count):
        target = tmp_path / "elsewhere" / f"t{i}.dcm"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(SAMPLE_DICOMS[i + 1], target)
        (src / f"out{i}.dcm").symlink_to(target)
        targets.append(target)
    return src, targets


def test_symlink_leading_outside_is_archived_and_named(tmp_path):
    src, [target] = outside_links(tmp_path, 1)
    store = tmp_path / "store"
    result = run_tool("make_studyvisit_archive", "-q", "-o", store, "--id", "s", "v", src)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "outside the input directory" in line]
    assert warnings == [f"make_studyvisit_archive: followed 1 symlink(s) to files outside the input "
                        f"directory and archived those files: {src / 'out0.dcm'} -> {target}"]
    assert "link-inside" not in result.stderr
    with tarfile.open(store / "s" / "v_dicom.tar") as tar:
        out = tar.getmember("s_v/out0.dcm")
        assert out.isreg() and tar.extractfile(out).read() == target.read_bytes()
        assert tar.getmember("s_v/link-inside.dcm").isreg()


def test_many_outside_symlinks_are_counted_and_a_few_named(tmp_path, caplog):
    src, targets = outside_links(tmp_path, 5)
    with caplog.at_level(logging.WARNING, logger="icf.archive"):
        summary = make_archive(Visit(tmp_path / "store", "s", "v"), src)
    assert summary.outside_links == 5 and summary.files == 7
    [message] = [r.getMessage() for r in caplog.records if "outside the input directory" in r.getMessage()]
    assert message.startswith("followed 5 symlink(s)") and message.endswith(" and 2 more")
    assert all(f"-> {target}" in message for target in targets[:3])
    assert "link-inside" not in message


def test_symlink_inside_gives_no_warning(tmp_path, caplog):
    src, _ = outside_links(tmp_path, 0)
    with caplog.at_level(logging.WARNING, logger="icf.archive"):
        assert make_archive(Visit(tmp_path / "store", "s", "v"), src).outside_links == 0
    assert not [r for r in caplog.records if "symlink" in r.getMessage()]
