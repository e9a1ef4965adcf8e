"""Step 4: catalogify_studyvisit_from_meta (the study catalog).

Inputs are the two metadata JSON files of docs/formats.rst, written here by
:func:`write_visit_metadata` through icf.records. Everything else is real:
the script and datalad-catalog. What a browser shows is in
test_catalog_browser.py, the site's patches in test_catalog_site.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import make_dicom, run_tool  # noqa: E402

from icf import IcfError  # noqa: E402
from icf.catalog import (  # noqa: E402
    DATASET_VERSION,
    human_size,
    study_id,
    visit_id,
)
from icf.catalog_site import offline_index, remote_refs  # noqa: E402
from icf.dicom import EXPORTED_TAGS  # noqa: E402
from icf.records import DicomRecord, Finding, SeriesSummary, TarballRecord, series_order  # noqa: E402
from icf.store import Visit, default_store_url  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "bin" / "catalogify_studyvisit_from_meta"
STUDY = "study-1"

#: (SeriesNumber, SeriesDescription, ProtocolName, Modality, MRAcquisitionType,
#:  PulseSequenceName, number of files, frames per file): a visit's series,
#:  deliberately unsorted; Modality SR makes the files non-image objects
SERIES = [
    (10, "func run 1", "fmri_task", "MR", "2D", "epfid2d1_64", 3, 1),
    (2, "T1w MPRAGE", "t1_mprage", "MR", "3D", "tfl3d1_16ns", 2, 64),
    ("", "phoenix report", "", "SR", "", "", 1, 1),
]
FINDINGS = [Finding("not-dicom", 2, "2 file(s) are not DICOM: archived, but in no list or dataset",
                    ["a/readme.txt", "a/notes"])]


def write_visit_metadata(store: Path, study: str, visit: str, series=SERIES, findings=FINDINGS,
                         tar_size: int = 123_456_789, extra: dict | None = None) -> Visit:
    """Write ``<visit>_metadata_tarball.json`` and ``_metadata_dicoms.json``
    as step 2 would for ``series`` (through icf.records, the formats' owner).

    ``extra`` adds fields to every DICOM entry (to smuggle PHI in).
    """
    v = Visit(store, study, visit)
    v.study_dir.mkdir(parents=True, exist_ok=True)
    dicoms, summaries = [], []
    for index, (number, description, protocol, modality, acq, pulse, files, frames) in enumerate(series):
        tags = {**dict.fromkeys(EXPORTED_TAGS, ""), "SeriesDescription": description, "SeriesNumber": number,
                "Modality": modality, "MRAcquisitionType": acq, "ProtocolName": protocol,
                "PulseSequenceName": pulse}
        key, kind = f"{index:016x}", "other" if modality == "SR" else "image"
        for i in range(files):
            path = f"{v.archive_top}/s{number}/{i:04d}.dcm"
            record = DicomRecord(path, f"{i:032x}", 1000 + i, 512 * (3 * i + 1), key, kind, frames, i + 1, tags)
            dicoms.append({**record.json_value(), **(extra or {})})
        if kind == "image":
            summaries.append(SeriesSummary(key, tags, files, files * frames))
    summaries.sort(key=lambda s: series_order(s.tags["SeriesNumber"]))
    v.metadata_tarball.write_bytes(TarballRecord.of(v, tar_size, "0123456789abcdef0123456789abcdef",
                                                    summaries, findings).json())
    v.metadata_dicoms.write_text(json.dumps(dicoms))
    return v


def catalogify(store: Path, visit: str, *options: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "-o", str(store), "--id", STUDY, visit, *options],
        capture_output=True, text=True, check=check,
    )


def records(catalog: Path) -> dict[str, dict]:
    """Every dataset record in the catalog, by dataset id."""
    found = {}
    for path in (catalog / "metadata").glob("*/*/*/*.json"):
        record = json.loads(path.read_text())
        assert record["dataset_id"] not in found
        found[record["dataset_id"]] = record
    return found


def visit_rec(store: Path, visit: str) -> dict:
    return records(store / STUDY / "catalog")[visit_id(Visit(store, STUDY, visit))]


def study_rec(store: Path) -> dict:
    return records(store / STUDY / "catalog")[study_id(STUDY)]


def metadata_bytes(catalog: Path) -> dict[str, bytes]:
    return {str(p.relative_to(catalog)): p.read_bytes()
            for p in sorted((catalog / "metadata").rglob("*")) if p.is_file()}


# -- pure functions -------------------------------------------------------------

@pytest.mark.parametrize("size,text", [
    (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (123_456_789, "117.7 MiB"),
    (5 * 1024**4, "5.0 TiB"), (3 * 1024**5, "3072.0 TiB"),
])
def test_human_size(size, text):
    assert human_size(size) == text


def test_offline_index_refuses_an_unknown_remote_script(tmp_path):
    (tmp_path / "index.html").write_text(
        '<html><head><title>x</title><script src="https://cdn.example/x.js"></script></head></html>')
    with pytest.raises(IcfError, match="cdn.example"):
        offline_index(tmp_path, "T")


# -- the script ---------------------------------------------------------------------

def test_visit_and_study_records(tmp_path):
    store = tmp_path / "store"
    v = write_visit_metadata(store, STUDY, "visit-a")
    result = catalogify(store, "visit-a", "--store-url", "https://data.example.org/store")
    assert "visit-a" in result.stderr and "1 visit" in result.stderr

    rec = visit_rec(store, "visit-a")
    assert rec["name"] == "visit-a" and rec["dataset_version"] == DATASET_VERSION
    assert rec["url"] == v.clone_url("https://data.example.org/store")
    # every distinct text value of an exported tag is a keyword
    assert rec["keywords"] == ["2D", "3D", "MR", "SR", "T1w MPRAGE", "epfid2d1_64", "fmri_task",
                               "func run 1", "phoenix report", "t1_mprage", "tfl3d1_16ns"]
    assert rec["top_display"] == [
        {"name": "TAR size", "value": "117.7 MiB"},
        {"name": "DICOM files", "value": 6},
        {"name": "Series", "value": 2},  # image series: the report is no series
        {"name": "Images", "value": 3 + 2 * 64},  # frames
        {"name": "Findings", "value": 1},
    ]
    [tab] = rec["additional_display"]
    assert tab["name"] == "Series"
    table = tab["content"]
    assert table["columns"] == ["series number", "series description", "modality", "MR acquisition type",
                                "protocol name", "pulse sequence name", "sequence name", "files", "images"]
    assert table["rows"] == [["2", "T1w MPRAGE", "MR", "3D", "t1_mprage", "tfl3d1_16ns", "", 2, 128],
                             ["10", "func run 1", "MR", "2D", "fmri_task", "epfid2d1_64", "", 3, 3]]
    assert table["notes"] == [f"\u26a0 not-dicom: {FINDINGS[0].message}",
                              "Not in a series: 1 other DICOM object(s)"]
    assert "doi" not in rec and "license" not in rec  # not known: not shown
    [source] = rec["metadata_sources"]["sources"]
    assert abs(source.pop("source_time") - time.time()) < 600  # catalogued just now
    assert source == {"source_name": "icf-utils", "source_version": "1"}

    study = study_rec(store)
    assert study["name"] == STUDY and study["description"]
    assert [s["dataset_path"] for s in study["subdatasets"]] == ["visit-a"]
    [visits] = study["additional_display"]
    assert visits["content"] == {
        "columns": ["visit", "DICOM files", "series", "images", "TAR size", "findings"],
        "rows": [[{"text": "visit-a", "href": f"#/dataset/{rec['dataset_id']}/latest/series"},
                  6, 2, 131, "117.7 MiB", "\u26a0 not-dicom"]]}
    assert study["subdatasets"][0]["dataset_id"] == rec["dataset_id"]
    home = json.loads((store / STUDY / "catalog" / "metadata" / "super.json").read_text())
    assert home == {"dataset_id": study_id(STUDY), "dataset_version": DATASET_VERSION}
    leftovers = [p.name for p in (store / STUDY).iterdir() if p.name.startswith(".catalog.")]
    assert leftovers == [".catalog.lock"]


def test_no_git_identity_is_no_warning(tmp_path):
    """A cluster job has no git identity; DataLad's warning about it would
    be noise in every log (the catalog step commits nothing)."""
    store = tmp_path / "store"
    write_visit_metadata(store, STUDY, "visit-a")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "EMAIL"))}
    env.update(HOME=str(tmp_path), GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    result = subprocess.run([sys.executable, str(SCRIPT), "-o", str(store), "--id", STUDY, "visit-a"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "configure Git" not in result.stderr, result.stderr


def test_default_store_url_is_the_store_directory(tmp_path):
    store = tmp_path / "store"
    v = write_visit_metadata(store, STUDY, "visit-a")
    catalogify(store, "visit-a")
    assert visit_rec(store, "visit-a")["url"] == v.clone_url(default_store_url(store))


@pytest.mark.slow
def test_rerun_is_idempotent_and_updates_replace(tmp_path):
    store = tmp_path / "store"
    catalog = store / STUDY / "catalog"
    write_visit_metadata(store, STUDY, "visit-a")
    write_visit_metadata(store, STUDY, "visit-b")
    catalogify(store, "visit-a")
    catalogify(store, "visit-b")
    before = metadata_bytes(catalog)
    catalogify(store, "visit-a")
    catalogify(store, "visit-b")
    assert metadata_bytes(catalog) == before  # same bytes, same files

    # new metadata for visit-a: every value must be replaced, nothing merged
    write_visit_metadata(store, STUDY, "visit-a", series=[(7, "dwi", "dti", "MR", "2D", "ep_b", 4, 1)],
                         findings=[], tar_size=2048)
    for _ in range(2):
        catalogify(store, "visit-a")
    rec = visit_rec(store, "visit-a")
    assert rec["keywords"] == ["2D", "MR", "dti", "dwi", "ep_b"]
    assert rec["top_display"] == [{"name": "TAR size", "value": "2.0 KiB"},
                                  {"name": "DICOM files", "value": 4},
                                  {"name": "Series", "value": 1},
                                  {"name": "Images", "value": 4}]
    assert [row[0] for row in rec["additional_display"][0]["content"]["rows"]] == ["7"]
    assert rec["additional_display"][0]["content"]["notes"] == []
    assert len(rec["additional_display"]) == 1
    # keywords that became empty do not survive either
    write_visit_metadata(store, STUDY, "visit-a", series=[(7, "", "", "", "", "", 1, 1)])
    catalogify(store, "visit-a")
    assert "keywords" not in visit_rec(store, "visit-a")

    study = study_rec(store)
    assert [s["dataset_path"] for s in study["subdatasets"]] == ["visit-a", "visit-b"]
    assert sorted(c["name"] for c in study["children"]) == ["visit-a", "visit-b"]
    assert [row[1:4] for row in study["additional_display"][0]["content"]["rows"]] == [[1, 1, 1], [6, 2, 131]]
    assert len(records(catalog)) == 3


def test_last_updated_is_when_catalogued_and_kept_by_unchanged_reruns(tmp_path):
    store = tmp_path / "store"
    write_visit_metadata(store, STUDY, "v1")
    catalogify(store, "v1")
    marker = store / STUDY / "catalog" / "visits" / "v1.json"
    stamped = json.loads(marker.read_bytes())
    stamped["metadata_sources"]["sources"][0]["source_time"] = 1_500_000_000  # catalogued long ago
    marker.write_text(json.dumps(stamped))
    catalogify(store, "v1")
    assert visit_rec(store, "v1")["metadata_sources"]["sources"][0]["source_time"] == 1_500_000_000
    write_visit_metadata(store, STUDY, "v1", tar_size=1)  # changed input: catalogued again, now
    catalogify(store, "v1")
    assert visit_rec(store, "v1")["metadata_sources"]["sources"][0]["source_time"] > 1_500_000_000


def test_visits_in_natural_order_and_study_settings_from_the_config(tmp_path):
    store = tmp_path / "store"
    config = tmp_path / "look.json"
    config.write_text(json.dumps({"catalog_name": "X", "study": {
        "description": "Pilot study of the facility.", "doi": "https://doi.org/10.1234/x",
        "license": {"name": "PDDL", "url": "https://opendatacommons.org/licenses/pddl/"}}}))
    for visit in ("v10", "v2", "v1"):
        write_visit_metadata(store, STUDY, visit)
        catalogify(store, visit, "--config-file", str(config))
    study = study_rec(store)
    assert [s["dataset_path"] for s in study["subdatasets"]] == ["v1", "v2", "v10"]
    assert [row[0]["text"] for row in study["additional_display"][0]["content"]["rows"]] == ["v1", "v2", "v10"]
    assert study["description"] == "Pilot study of the facility."
    for record in (study, visit_rec(store, "v2")):
        assert record["doi"] == "https://doi.org/10.1234/x" and record["license"]["name"] == "PDDL"
    config.write_text(json.dumps({"study": {"doi": 5}}))
    (store / STUDY / "catalog" / "config.json").write_text(config.read_text())
    result = catalogify(store, "v1", check=False)
    assert result.returncode == 1 and "config.json: 'study' must be an object" in result.stderr


@pytest.mark.slow
def test_parallel_runs_lose_no_visit(tmp_path):
    store = tmp_path / "store"
    visits = [f"visit-{i}" for i in range(6)]
    for visit in visits:
        write_visit_metadata(store, STUDY, visit)
    runs = [subprocess.Popen([sys.executable, str(SCRIPT), "-q", "-o", str(store), "--id", STUDY, v],
                             stderr=subprocess.PIPE, text=True) for v in visits]
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
    study = study_rec(store)
    assert [s["dataset_path"] for s in study["subdatasets"]] == visits
    assert sorted(c["name"] for c in study["children"]) == visits
    for visit in visits:
        assert visit_rec(store, visit)["top_display"][1] == {"name": "DICOM files", "value": 6}
    leftovers = [p.name for p in (store / STUDY).iterdir() if p.name.startswith(".catalog.")]
    assert leftovers == [".catalog.lock"]


def test_site_is_offline_and_configurable(tmp_path):
    store = tmp_path / "store"
    write_visit_metadata(store, STUDY, "visit-a")
    config = tmp_path / "cfg" / "look.json"
    config.parent.mkdir()
    (config.parent / "mylogo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    config.write_text(json.dumps({"catalog_name": "Facility X", "logo_path": "mylogo.svg",
                                  "link_color": "#000000", "link_hover_color": "#111111"}))
    catalogify(store, "visit-a", "--config-file", str(config))
    catalog = store / STUDY / "catalog"
    html = (catalog / "index.html").read_text()
    assert remote_refs(html) == []
    assert "<title>Facility X</title>" in html
    for ref in re.findall(r'<(?:script|link)[^>]* (?:src|href)="([^"]+)"', html):
        assert (catalog / ref).is_file(), ref
    written = json.loads((catalog / "config.json").read_text())
    assert written["catalog_name"] == "Facility X"
    assert (catalog / written["logo_path"]).read_text().startswith("<svg")
    assert written["property_sources"]["dataset"]["keywords"] == {"rule": "single", "source": "icf-utils"}


def test_missing_metadata_is_one_line_error(tmp_path):
    store = tmp_path / "store"
    (store / STUDY).mkdir(parents=True)
    result = catalogify(store, "visit-a", check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "visit-a_metadata_tarball.json" in result.stderr
    assert not (store / STUDY / "catalog").exists()


def test_no_phi_reaches_the_catalog(tmp_path):
    """Only the six whitelisted tags, sizes and counts may leave the JSON.

    A JSON carrying PHI in non-whitelisted fields is refused as malformed
    (nothing of it reaches a catalog); PHI in member paths (which the
    contract allows in the JSON, not in the catalog) must not appear in any
    file of the catalog, and no md5 either.
    """
    store = tmp_path / "store"
    phi = {"PatientName": "Doe^Jane^Q", "PatientID": "PID-8675309",
           "PatientBirthDate": "19451231", "InstitutionName": "St. Secret Hospital"}
    v = write_visit_metadata(store, STUDY, "visit-a", extra=phi)
    refused = subprocess.run([sys.executable, str(SCRIPT), "-o", str(store), "--id", STUDY, "visit-a"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "malformed metadata" in refused.stderr, refused.stderr
    assert "PatientName" in refused.stderr and not (store / STUDY / "catalog").exists()
    v = write_visit_metadata(store, STUDY, "visit-a")
    entries = json.loads(v.metadata_dicoms.read_text())
    for e in entries:
        e["path"] = e["path"].replace("/s", "/Doe_Jane_PID-8675309/s")
    v.metadata_dicoms.write_text(json.dumps(entries))
    catalogify(store, "visit-a")
    forbidden = list(phi.values()) + ["Doe_Jane", "0123456789abcdef0123456789abcdef"]
    forbidden += [e["md5"] for e in entries if e["md5"] != f"{0:032x}"]
    for path in (store / STUDY / "catalog").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for word in forbidden:
                assert word.encode() not in data, (word, path)


def test_no_phi_from_real_dicoms_through_steps_1_2_4(tmp_path):
    """PHI-laden DICOMs through the real chain (archive, metadata, catalog)."""
    phi = {"PatientName": "Roe^Richard", "PatientID": "MRN-31415926",
           "PatientBirthDate": "19380217", "InstitutionName": "Clinic Of Secrets",
           "ReferringPhysicianName": "Who^Doctor", "StudyDescription": "PRIVATE_STUDY_NOTE"}
    for series, protocol in ((4, "bold_rest"), (1, "localizer")):
        for i in range(2):
            make_dicom(tmp_path / "in" / f"s{series}" / f"{i}.dcm", SeriesNumber=series,
                       ProtocolName=protocol, SeriesDescription=protocol, **phi)
    store = tmp_path / "store"
    for step in (("make_studyvisit_archive", tmp_path / "in"), ("deposit_visit_metadata",)):
        result = run_tool(step[0], "-o", store, "--id", STUDY, "visit-a", *step[1:])
        assert result.returncode == 0, result.stderr
    assert b"MRN-31415926" in Visit(store, STUDY, "visit-a").tarball.read_bytes()  # PHI is there
    catalogify(store, "visit-a")
    table = visit_rec(store, "visit-a")["additional_display"][0]["content"]
    protocol = table["columns"].index("protocol name")
    assert [row[protocol] for row in table["rows"]] == ["localizer", "bold_rest"]
    for path in (store / STUDY / "catalog").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in phi.values():
                for word in value.split("^"):
                    assert word.encode() not in data, (word, path)
