"""verify_visit (issue 6, fixity): a visit built by the real steps 1-3 from
the real sample DICOMs, then damaged in the ways years of storage damage it."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest
from conftest import SAMPLE_VISIT, run_tool

from icf.store import Visit

# every test damages a copy of one visit deposited by step 3 (DataLad, git-annex)
pytestmark = pytest.mark.slow

STUDY, VISIT = "study1", "visit1"
#: The deposit's store URL: the same for the built visit and its copies.
STORE_URL = "https://data.example.org/store"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Visit:
    store = tmp_path_factory.mktemp("verify") / "store"
    for script, extra in (("make_studyvisit_archive", [SAMPLE_VISIT]), ("deposit_visit_metadata", []),
                          ("deposit_visit_dataset", ["--store-url", STORE_URL])):
        result = run_tool(script, "-q", "-o", store, "--id", STUDY, VISIT, *extra)
        assert result.returncode == 0, result.stderr
    return Visit(store, STUDY, VISIT)


@pytest.fixture
def visit(built, tmp_path) -> Visit:
    """A private copy of the built visit, free to damage."""
    shutil.copytree(built.study_dir, tmp_path / STUDY)
    return Visit(tmp_path, STUDY, VISIT)


def verify(visit: Visit):
    return run_tool("verify_visit", "-o", visit.store, "--id", visit.study, visit.visit,
                    "--store-url", STORE_URL)


def mismatches(result) -> list[str]:
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"verify_visit: error: {STUDY}/{VISIT}: {len(lines) - 1} mismatch(es)"
    assert all(line.startswith(f"verify_visit: mismatch: {STUDY}/{VISIT}: ") for line in lines[:-1])
    return lines[:-1]


def records(visit: Visit) -> list[dict]:
    return json.loads(visit.metadata_dicoms.read_text())


def test_clean_visit_exits_0(visit):
    result = verify(visit)
    assert result.returncode == 0, result.stderr
    assert "archive, metadata and deposit agree" in result.stderr


def test_flipped_byte_in_a_member_is_named(visit):
    first = records(visit)[0]["path"]
    with tarfile.open(visit.tarball) as tar:
        offset = tar.getmember(first).offset_data + 1000
    with open(visit.tarball, "r+b") as raw:
        raw.seek(offset)
        byte = raw.read(1)
        raw.seek(offset)
        raw.write(bytes([byte[0] ^ 0xFF]))
    found = mismatches(verify(visit))
    assert any(first in line and "md5" in line for line in found), found
    assert any(f"{visit.tarball.name}: md5" in line and visit.md5sum.name in line for line in found)
    assert any(visit.metadata_tarball.name in line for line in found)


def test_truncated_archive_is_a_finding_not_a_crash(visit):
    with open(visit.tarball, "r+b") as raw:
        raw.truncate(visit.tarball.stat().st_size // 2)
    found = mismatches(verify(visit))
    assert any(str(visit.tarball) in line for line in found), found


def test_changed_metadata_disagrees_with_archive_and_deposit(visit):
    listed = records(visit)
    listed[1]["md5"] = "0" * 32
    visit.metadata_dicoms.write_text(json.dumps(listed))
    found = mismatches(verify(visit))
    path = listed[1]["path"]
    assert len(found) == 2, found
    assert f"{path}: md5 " in found[0]
    assert f"{path}: key MD5E-s{listed[1]['size']}--" in found[1] and "in the dataset deposit" in found[1]


def test_changed_offset_disagrees_with_archive_and_deposit(visit):
    """A wrong offset would make tarslice fetch other bytes: verify names it
    in the DICOM list and in the deposit's tarslice locator."""
    listed = records(visit)
    listed[2]["offset"] += 512
    visit.metadata_dicoms.write_text(json.dumps(listed))
    found = mismatches(verify(visit))
    path = listed[2]["path"]
    assert len(found) == 2, found
    assert f"{path}: offset " in found[0], found
    assert found[1].startswith(f"verify_visit: mismatch: {STUDY}/{VISIT}: {path}: URL in the dataset deposit"), found
    assert f"offset={listed[2]['offset'] - 512}&" in found[1] and f"offset={listed[2]['offset']}&" in found[1]


def test_member_dropped_from_metadata(visit):
    listed = records(visit)
    dropped = listed.pop()
    visit.metadata_dicoms.write_text(json.dumps(listed))
    found = mismatches(verify(visit))
    assert any(f"{dropped['path']}: DICOM in the archive but not in" in line for line in found), found
    assert any(f"{dropped['path']}: in the dataset deposit" in line for line in found), found


def test_damaged_deposit_is_named(visit):
    visit.deposit_repo_export.write_bytes(b"not a zip")
    found = mismatches(verify(visit))
    assert found == [f"verify_visit: mismatch: {STUDY}/{VISIT}: {visit.deposit_repo_export}: "
                     "not a readable deposit (BadZipFile: File is not a zip file)"]


def test_missing_md5sum_is_a_mismatch(visit):
    visit.md5sum.unlink()
    assert mismatches(verify(visit)) == [
        f"verify_visit: mismatch: {STUDY}/{VISIT}: {visit.md5sum.name}: missing"]


def test_missing_archive_is_a_mismatch_and_an_unknown_visit_an_error(visit):
    visit.tarball.unlink()
    assert any(str(visit.tarball) in line for line in mismatches(verify(visit)))
    result = run_tool("verify_visit", "-o", visit.store, "--id", STUDY, "no-such-visit",
                      "--store-url", STORE_URL)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no-such-visit_dicom.tar" in result.stderr and "nothing to verify" in result.stderr
