"""The metadata records: one format owner, one reader, one tag list.

- Adding a tag to :data:`icf.dicom.EXPORTED_TAGS` (here EchoTime, read from
  the real sample DICOMs) is the whole change: it reaches the DICOM list,
  the reader's checks, the git-annex metadata, the catalog's columns and
  keywords and verify_visit, with nothing else edited.
- Every later step and verify_visit report a malformed metadata file with
  the same line.
"""

from __future__ import annotations

import json

import pytest
from conftest import SAMPLE_VISIT, run_tool

from icf import IcfError
from icf.annex import annexed_files, branch_logs, dataset_uuids
from icf.archive import make_archive
from icf.catalog import read_facts, visit_record
from icf.dicom import EXPORTED_TAGS
from icf.metadata import deposit_metadata
from icf.records import DicomRecord, read_dicom_records, read_tarball_record
from icf.store import Visit, default_store_url
from icf.verify import archive_problems

ECHO_TIME = 0x00180081  # (0018,0081) EchoTime, 30 ms in every sample DICOM


@pytest.fixture
def visit(tmp_path):
    visit = Visit(tmp_path / "store", "study", "v1")
    make_archive(visit, SAMPLE_VISIT)
    return visit


def test_a_tag_added_in_one_line_reaches_every_output(visit, monkeypatch):
    monkeypatch.setitem(EXPORTED_TAGS, "EchoTime", ECHO_TIME)  # the one line
    deposit_metadata(visit)

    listed = json.loads(visit.metadata_dicoms.read_bytes())
    assert listed and all(entry["EchoTime"] == "30" for entry in listed)
    assert list(listed[0]) == list(DicomRecord.fields())
    records = read_dicom_records(visit)
    assert {record.tags["EchoTime"] for record in records} == {"30"}

    url = default_store_url(visit.store)
    files = annexed_files(visit, read_tarball_record(visit), records, url)
    metadata = [content for path, content in
                branch_logs(files, dataset_uuids(visit), "d", 0) if path.endswith(".log.met")]
    assert len(metadata) == len(records) and all(b" EchoTime +30" in line for line in metadata)

    record = visit_record(visit, read_facts(visit), url)
    table = record["additional_display"][0]["content"]
    echo_time = table["columns"].index("echo time")
    assert table["rows"] and all(row[echo_time] == "30" for row in table["rows"])
    assert "30" in record["keywords"]

    assert list(archive_problems(visit)) == []
    monkeypatch.setitem(EXPORTED_TAGS, "EchoTime", 0x00180080)  # RepetitionTime: not what was listed
    assert any("EchoTime is '30'" in problem for problem in archive_problems(visit))


def test_a_list_without_the_added_tag_is_malformed(visit, monkeypatch):
    deposit_metadata(visit)
    monkeypatch.setitem(EXPORTED_TAGS, "EchoTime", ECHO_TIME)
    with pytest.raises(IcfError, match=r"malformed metadata: entry 1: fields .* not \[.*'EchoTime'\]"):
        read_dicom_records(visit)


@pytest.mark.parametrize("damage,detail", [
    (lambda entries: entries[0].update(md5="x"), "entry 1: 'md5' is not an md5 digest"),
    (lambda entries: entries[1].update(path=entries[0]["path"]), "entry 2: 'path' is listed twice"),
    (lambda entries: entries[0].update(path="elsewhere/x"), "entry 1: 'path' is not a relative path under"),
    (lambda entries: entries[0].update(PatientName="Doe^John"), "entry 1: fields"),
])
def test_every_later_step_reports_a_malformed_list_the_same_way(visit, damage, detail):
    deposit_metadata(visit)
    entries = json.loads(visit.metadata_dicoms.read_bytes())
    damage(entries)
    visit.metadata_dicoms.write_text(json.dumps(entries))
    expected = f"{visit.metadata_dicoms}: malformed metadata: {detail}"
    ids = ("-o", visit.store, "--id", visit.study, visit.visit)
    for script in ("deposit_visit_dataset", "catalogify_studyvisit_from_meta", "verify_visit"):
        result = run_tool(script, *ids)
        assert result.returncode in (1, 3), (script, result.stderr)
        assert expected in result.stderr, (script, result.stderr)
