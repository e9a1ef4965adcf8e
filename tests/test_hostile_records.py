"""Crafted values in headers, metadata files, catalog records and configs:
each is refused in one line or ignored, never a crash, a flood or a
forged line (found by a review of the series, findings and catalog work)."""

from __future__ import annotations

import json

import pytest
from conftest import make_dicom, run_tool

from icf import IcfError
from icf.catalog import with_row, with_visit
from icf.catalog_site import checked_config
from icf.records import read_dicom_records, read_tarball_record
from icf.store import Visit, natural_key, study_visits

STUDY = "study"


def steps(store, source, *steps_to_run, visit="v1"):
    results = []
    for step, *args in steps_to_run:
        result = run_tool(step, "-o", store, "--id", STUDY, visit, *args)
        results.append(result)
    return results


@pytest.fixture
def visit(tmp_path):
    make_dicom(tmp_path / "in" / "a.dcm", InstanceNumber=1)
    make_dicom(tmp_path / "in" / "b.dcm", InstanceNumber=2)
    store = tmp_path / "store"
    for result in steps(store, None, ("make_studyvisit_archive", tmp_path / "in"), ("deposit_visit_metadata",)):
        assert result.returncode == 0, result.stderr
    return Visit(store, STUDY, "v1")


@pytest.mark.parametrize("value", ["\ud800", 10**400, -(2**63) - 1])
def test_lone_surrogates_and_huge_integers_are_malformed(visit, value):
    records = json.loads(visit.metadata_dicoms.read_bytes())
    records[0]["SeriesDescription"] = value
    visit.metadata_dicoms.write_text(json.dumps(records))
    with pytest.raises(IcfError, match="malformed metadata: entry 1: 'SeriesDescription' is not"):
        read_dicom_records(visit)
    tarball = json.loads(visit.metadata_tarball.read_bytes())
    tarball["size"] = 10**400
    visit.metadata_tarball.write_text(json.dumps(tarball))
    with pytest.raises(IcfError, match="'size' is not a count"):
        read_tarball_record(visit)
    for script in ("catalogify_studyvisit_from_meta", "deposit_visit_dataset"):
        result = run_tool(script, "-o", visit.store, "--id", STUDY, "v1")
        assert result.returncode == 1 and "internal error" not in result.stderr, result.stderr


def test_a_reordered_but_equal_list_is_a_mismatch(visit):
    verify = ("verify_visit", "-o", visit.store, "--id", STUDY, "v1")
    assert run_tool(*verify).returncode == 0
    records = json.loads(visit.metadata_dicoms.read_bytes())
    visit.metadata_dicoms.write_text(json.dumps(records[::-1]))
    result = run_tool(*verify)
    assert result.returncode == 3
    assert "v1_metadata_dicoms.json: its values agree with the archive, but not its bytes" in result.stderr


def test_a_huge_sop_class_floods_nothing(tmp_path):
    """A 3 MB MediaStorageSOPClassUID once went through pydicom's UID
    validation: 10 MB of stderr per file and memory kept per value."""
    from pydicom import dcmread

    for index in range(3):
        path = make_dicom(tmp_path / "in" / f"{index}.dcm")
        ds = dcmread(path)
        del ds.SOPClassUID  # the kind then comes from the meta group's
        ds.file_meta.MediaStorageSOPClassUID = f"1.{index}" * (1 << 20)
        ds.save_as(path, enforce_file_format=False)
    store = tmp_path / "store"
    results = steps(store, None, ("make_studyvisit_archive", tmp_path / "in"), ("deposit_visit_metadata",))
    assert [r.returncode for r in results] == [0, 0], results[-1].stderr
    assert sum(len(r.stderr) for r in results) < 2000, results[-1].stderr[:500]


def test_names_cannot_forge_lines_and_paths_stay_out_of_messages(tmp_path):
    make_dicom(tmp_path / "in" / "x&DOE^JOHN.dcm")
    (tmp_path / "in" / "n\ndeposit_visit_metadata: error: forged").write_text("not DICOM")
    store = tmp_path / "store"
    archive, metadata = steps(store, None, ("make_studyvisit_archive", tmp_path / "in"), ("deposit_visit_metadata",))
    assert metadata.returncode == 0, metadata.stderr
    assert not any(line.startswith("deposit_visit_metadata: error") for line in metadata.stderr.splitlines())
    findings = json.loads(Visit(store, STUDY, "v1").metadata_tarball.read_bytes())["findings"]
    assert {f["code"] for f in findings} == {"not-dicom", "not-depositable"}
    assert all("DOE" not in f["message"] for f in findings)  # a name only in "paths", never in a message


def test_tampered_study_records_are_read_as_empty():
    visit = Visit(__import__("pathlib").Path("/s"), STUDY, "v2")
    row = [{"text": "v2", "href": "#"}, 1, 1, 1, "1 B", ""]
    for old in ({}, {"subdatasets": "x", "additional_display": {"a": 1}},
                {"subdatasets": [5, {"dataset_path": 3}], "additional_display": ["x", {"name": "Visits"}]},
                {"additional_display": [{"name": "Visits", "content": {"rows": [[{"href": "#"}], "x", [5]]}}]}):
        assert [s["dataset_path"] for s in with_visit(old, visit)] == ["v2"]
        assert with_row(old, row) == [row]


def test_bad_catalog_configs_are_refused_before_anything_is_made(tmp_path, visit):
    for config in ([], {"logo_path": 5}, {"dataset_options": []}, {"catalog_name": 5},
                   {"study": {"doi": "javascript:alert(1)"}}, {"study": {"license": {"url": "ftp://x"}}}):
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config))
        with pytest.raises(IcfError, match="config.json: "):
            checked_config(path)
        result = run_tool("catalogify_studyvisit_from_meta", "-o", visit.store, "--id", STUDY, "v1",
                          "--config-file", path)
        assert result.returncode == 1 and "internal error" not in result.stderr, result.stderr
        assert not visit.catalog_dir.exists()


def test_visit_order_has_no_ties(tmp_path):
    for visit in ("v01", "v1", "v001", "a1", "a01", "v10", "v2"):
        (tmp_path / STUDY).mkdir(exist_ok=True)
        (tmp_path / STUDY / f"{visit}_dicom.tar").write_bytes(b"")
    assert study_visits(tmp_path, STUDY) == ["a01", "a1", "v001", "v01", "v1", "v2", "v10"]
    assert sorted(["v1", "v01"], key=natural_key) == sorted(["v01", "v1"], key=natural_key)
