"""What step 2 says about a visit (issue 11): series by SeriesInstanceUID,
kinds and frames, the findings with their exact rules, --strict, what
verify_visit checks of them, and the study report (``make report``)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import DATA, REPO, make_dicom, run_tool

from icf.store import Visit, series_key

STUDY = "study"


def deposit_metadata(store, visit="v1", *options):
    return run_tool("deposit_visit_metadata", "-o", store, "--id", STUDY, visit, *options)


def archive(store, source, visit="v1"):
    result = run_tool("make_studyvisit_archive", "-o", store, "--id", STUDY, visit, source)
    assert result.returncode == 0, result.stderr
    return Visit(store, STUDY, visit)


@pytest.fixture
def odd_visit(tmp_path):
    """A visit with one of everything that gives a finding."""
    src = tmp_path / "odd"
    for name, number in (("i1", 1), ("i2", 2), ("i4", 4), ("i4-again", 4)):  # 3 missing, 4 twice
        make_dicom(src / "s5" / name, SeriesNumber=5, InstanceNumber=number)
    make_dicom(src / "other-study" / "x.dcm", SeriesNumber=9, StudyInstanceUID="1.2.826.0.1.3680043.2.1143.9",
               InstanceNumber=1)
    make_dicom(src / "dup" / "a.dcm", SeriesNumber=7, SOPInstanceUID="1.2.826.0.1.3680043.2.1143.7",
               InstanceNumber=1)
    shutil.copy(src / "dup" / "a.dcm", src / "dup" / "same-bytes.dcm")
    make_dicom(src / "dup" / "b.dcm", SeriesNumber=7, SOPInstanceUID="1.2.826.0.1.3680043.2.1143.7",
               InstanceNumber=2, SeriesDescription="changed")
    make_dicom(src / "undated.dcm", SeriesNumber=8, StudyDate=None, StudyTime=None, InstanceNumber=1)
    make_dicom(src / "a&b.dcm", SeriesNumber=8, InstanceNumber=2)
    (src / "notes.txt").write_text("not DICOM")
    return src


def test_findings_follow_their_rules(tmp_path, odd_visit):
    store = tmp_path / "store"
    visit = archive(store, odd_visit)
    result = deposit_metadata(store)
    assert result.returncode == 0, result.stderr
    tarball = json.loads(visit.metadata_tarball.read_bytes())
    top = visit.archive_top
    findings = {f["code"]: (f["count"], f["paths"]) for f in tarball["findings"]}
    assert list(findings) == ["mixed-studies", "duplicate-instance-different-bytes",
                              "duplicate-instance-same-bytes", "instance-gaps", "not-dicom", "no-timestamp",
                              "not-depositable"]
    assert findings["mixed-studies"] == (2, [f"{top}/a&b.dcm", f"{top}/other-study/x.dcm"])
    # archive order: dup/a.dcm first, then b (other bytes), then same-bytes (same bytes)
    assert findings["duplicate-instance-different-bytes"] == (1, [f"{top}/dup/b.dcm"])
    assert findings["duplicate-instance-same-bytes"] == (1, [f"{top}/dup/same-bytes.dcm"])
    assert findings["instance-gaps"] == (2, [f"{top}/s5/i1", f"{top}/dup/a.dcm"])
    assert findings["not-dicom"] == (1, [f"{top}/notes.txt"])
    assert findings["no-timestamp"] == (1, [f"{top}/undated.dcm"])
    assert findings["not-depositable"] == (1, [f"{top}/a&b.dcm"])
    gaps = next(f for f in tarball["findings"] if f["code"] == "instance-gaps")
    assert gaps["message"] == ("2 image series with gaps or repeats in InstanceNumber: "
                               "series 5: 1 missing, 1 repeated; series 7: 1 repeated")
    # one line per finding code on stderr
    lines = [line for line in result.stderr.splitlines() if line.split(": ")[1] in findings]
    assert [line.split(": ")[1] for line in lines] == list(findings)
    # series: one per SeriesInstanceUID, by SeriesNumber
    assert [(s["SeriesNumber"], s["files"]) for s in tarball["series"]] == [(5, 4), (7, 3), (8, 2), (9, 1)]
    records = json.loads(visit.metadata_dicoms.read_bytes())
    assert all(set(r["series"]) <= set("0123456789abcdef") and len(r["series"]) == 16 for r in records)


def test_strict_fails_on_integrity_findings_only_and_writes_nothing(tmp_path, odd_visit):
    store = tmp_path / "store"
    visit = archive(store, odd_visit)
    result = deposit_metadata(store, "v1", "--strict")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"deposit_visit_metadata: error: {visit.tarball}: mixed-studies and duplicate-instance-different-bytes "
        "(--strict: nothing written)")
    assert not visit.metadata_tarball.exists() and not visit.metadata_dicoms.exists()
    assert [p.name for p in visit.study_dir.iterdir() if p.name.startswith(".")] == []
    # gaps, undated, non-DICOM and undepositable files alone do not fail --strict
    clean = tmp_path / "clean"
    for name in ("i1", "i3"):
        make_dicom(clean / name, InstanceNumber=int(name[1]))
    (clean / "notes.txt").write_text("x")
    archive(store, clean, "v2")
    result = deposit_metadata(store, "v2", "--strict")
    assert result.returncode == 0, result.stderr
    assert "instance-gaps" in result.stderr and "not-dicom" in result.stderr


def test_kinds_frames_and_series_of_real_files(tmp_path):
    store = tmp_path / "store"
    visit = archive(store, DATA / "vendors")
    assert deposit_metadata(store).returncode == 0
    records = {r["path"].split("/", 1)[1]: r for r in json.loads(visit.metadata_dicoms.read_bytes())}
    assert records["siemens/xa-enhanced-3frames.dcm"]["kind"] == "image"
    assert records["siemens/xa-enhanced-3frames.dcm"]["frames"] == 3
    assert records["siemens/phoenix-sr.dcm"]["kind"] == "other"
    assert records["pydicom/DICOMDIR"]["kind"] == "dicomdir"
    assert records["siemens/classic-fieldmap.dcm"]["SequenceName"] == "*fm2d2r"
    tarball = json.loads(visit.metadata_tarball.read_bytes())
    images = [r for r in records.values() if r["kind"] == "image"]
    assert sum(s["files"] for s in tarball["series"]) == len(images)
    assert sum(s["frames"] for s in tarball["series"]) == sum(r["frames"] for r in images)
    # MR_small and its big-endian twins are one series: same SeriesInstanceUID
    twins = {records[f"pydicom/{name}"]["series"] for name in
             ("MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_bigendian_nometa.dcm")}
    assert len(twins) == 1 and twins != {""}
    assert {s["series"] for s in tarball["series"]} == {r["series"] for r in images}
    assert "duplicate-instance-different-bytes" in {f["code"] for f in tarball["findings"]}  # the twins
    assert series_key(STUDY, "") == ""


@pytest.mark.slow
def test_verify_rederives_series_and_findings(tmp_path, odd_visit):
    store = tmp_path / "store"
    visit = archive(store, odd_visit)
    assert deposit_metadata(store).returncode == 0
    verify = ("verify_visit", "-o", store, "--id", STUDY, "v1")
    assert run_tool(*verify).returncode == 0
    tarball = json.loads(visit.metadata_tarball.read_bytes())
    tarball["findings"] = [f for f in tarball["findings"] if f["code"] != "mixed-studies"]
    visit.metadata_tarball.write_text(json.dumps(tarball))
    result = run_tool(*verify)
    assert result.returncode == 3
    assert "findings is " in result.stderr and "v1_metadata_tarball.json" in result.stderr
    records = json.loads(visit.metadata_dicoms.read_bytes())
    records[0]["InstanceNumber"] = 99
    visit.metadata_dicoms.write_text(json.dumps(records))
    result = run_tool(*verify)
    assert f"{records[0]['path']}: InstanceNumber is '99'" in result.stderr


def test_study_report_in_natural_order(tmp_path, odd_visit):
    store = tmp_path / "store"
    for visit in ("v10", "v2"):
        archive(store, odd_visit, visit)
        assert deposit_metadata(store, visit).returncode == 0
    archive(store, odd_visit, "v3")  # no metadata yet
    result = subprocess.run(["make", "-s", "-f", REPO / "Makefile", f"STORE={store}", f"STUDY={STUDY}", "report"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr  # make: the tool exited 1 for v3
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["visit", "DICOMs", "series", "images", "size", "findings"]
    assert [line.split()[0] for line in lines[1:]] == ["v2", "v3", "v10"]
    assert lines[1].split()[1:4] == ["10", "4", "10"]
    assert "mixed-studies (2)" in lines[1] and "not-dicom (1)" in lines[1]
    assert "no metadata yet" in lines[2]
    assert "no usable metadata for v3" in result.stderr
