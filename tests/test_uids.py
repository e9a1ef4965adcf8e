"""No UID from a DICOM header leaves the archive (issue 11, requirement 1).

UIDs are linkable identifiers and often embed dates and device serial
numbers. Real DICOMs of four vendors (the sample visit and
tests/data/vendors), copied under names that are not UIDs, go through
steps 1-4; then every UID-valued element of every file (nested sequences
and the file meta group included) is searched for in every output: both
metadata files, the deposit (every file of both branches, read back from
the ZIP) and every file of the catalog. Series appear as opaque keys only.
"""

from __future__ import annotations

import json
import shutil

import pydicom
import pytest
from conftest import DATA, SAMPLE_DICOMS, run_tool

from icf.store import Visit, series_key
from icf.verify import read_deposit

pytestmark = pytest.mark.slow


def header_uids(path) -> set[str]:
    """Every UI value in a DICOM file, at any depth."""
    dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    found: set[str] = set()

    def collect(ds) -> None:
        for element in ds:
            if element.VR == "SQ":
                for item in element.value:
                    collect(item)
            elif element.VR == "UI" and element.value:
                values = element.value if isinstance(element.value, list) else [element.value]
                found.update(str(v) for v in values if len(str(v)) > 8)  # not "1.2.3"-short constants
    collect(dataset)
    collect(getattr(dataset, "file_meta", []))
    return found


def public_uids() -> set[str]:
    """UIDs of the standard itself (SOP classes, transfer syntaxes): not identifying."""
    from pydicom.uid import UID_dictionary
    return set(UID_dictionary)


def test_no_header_uid_in_any_output(tmp_path):
    source = tmp_path / "visit"
    files = [*SAMPLE_DICOMS[:3], *sorted(p for p in (DATA / "vendors").rglob("*")
                                         if p.is_file() and "LICENSE" not in p.name and p.suffix != ".txt")]
    for number, path in enumerate(files):
        (source / f"dir{number % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, source / f"dir{number % 3}" / f"{number:04d}.dcm")
    uids = set().union(*(header_uids(p) for p in files)) - public_uids()
    assert len(uids) > 3 * len(files)  # instance, series, study and more per file
    assert not any(uid in str(p.relative_to(source)) for p in source.rglob("*") for uid in uids)

    store = tmp_path / "store"
    ids = ("-o", store, "--id", "study", "v1")
    for step, *args in (("make_studyvisit_archive", source), ("deposit_visit_metadata",),
                        ("deposit_visit_dataset",), ("catalogify_studyvisit_from_meta",)):
        result = run_tool(step, *ids, *args)
        assert result.returncode == 0, result.stderr
    visit = Visit(store, "study", "v1")
    assert any(uid.encode() in visit.tarball.read_bytes() for uid in uids)  # they are in the archive

    outputs = {str(p): p.read_bytes() for p in (visit.metadata_tarball, visit.metadata_dicoms, visit.deposit_refs)}
    deposit = read_deposit(visit)
    for branch, files_of_branch in (("main", deposit.main), ("git-annex", deposit.annex)):
        outputs.update({f"{branch}:{name}": content for name, (_, content) in files_of_branch.items()})
    outputs.update({str(p): p.read_bytes() for p in visit.catalog_dir.rglob("*")
                    if p.is_file() and "metadata" in p.parts or p.parent.name == "visits"})
    assert len(outputs) > 20
    leaks = [(name, uid) for name, content in outputs.items() for uid in uids if uid.encode() in content]
    assert leaks == []

    # the series keys stand for the series UIDs, one each
    keys = {record["series"] for record in json.loads(visit.metadata_dicoms.read_bytes())}
    series_uids = {str(pydicom.dcmread(p, stop_before_pixels=True, force=True).get("SeriesInstanceUID", ""))
                   for p in files if pydicom.dcmread(p, stop_before_pixels=True, force=True).get("Modality")}
    assert {series_key("study", uid) for uid in series_uids} <= keys | {""}
