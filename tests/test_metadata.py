"""Step 2, deposit_visit_metadata: issue 3's requirements."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE_VISIT, make_dicom, run_tool
from measure import measure
from pydicom.dataelem import DataElement

FIELDS = ["path", "md5", "size", "offset", "series", "kind", "frames", "InstanceNumber", "SeriesDescription",
          "SeriesNumber", "Modality", "MRAcquisitionType", "ProtocolName", "PulseSequenceName", "SequenceName"]
SAMPLE_SERIES = "f86afc94fa249a70"  # series_key("study", the sample's SeriesInstanceUID)


def archive(store, input_dir, study="study", visit="visit"):
    result = run_tool("make_studyvisit_archive", "-q", "-o", store, "--id", study, visit, input_dir)
    assert result.returncode == 0, result.stderr
    return store / study / f"{visit}_dicom.tar"


def deposit(store, *extra, study="study", visit="visit", **kwargs):
    return run_tool("deposit_visit_metadata", "-o", store, "--id", study, visit, *extra, **kwargs)


def outputs(store, study="study", visit="visit"):
    return (store / study / f"{visit}_metadata_tarball.json", store / study / f"{visit}_metadata_dicoms.json")


def load(store, **ids):
    tarball, dicoms = outputs(store, **ids)
    return json.loads(tarball.read_text()), json.loads(dicoms.read_text())


def assert_refused(result, store, *words):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deposit_visit_metadata: error: "), result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert not any(p.exists() for p in outputs(store))
    assert not [p for p in (store / "study").iterdir() if p.name.endswith(".partial")]


# -- 1: command line and exact fields -----------------------------------------------

def test_usage_line_matches_the_contract():
    usage = " ".join(run_tool("deposit_visit_metadata", "--help").stdout.split("\n\n")[0].split())
    assert usage.startswith("usage: deposit_visit_metadata [-h] [-o PATH] --id STUDY-ID VISIT-ID"), usage


def test_real_sample_gives_exactly_the_contract_fields(store):
    tar = archive(store, SAMPLE_VISIT)
    result = deposit(store)
    assert result.returncode == 0, result.stderr
    tarball, dicoms = load(store)
    data = tar.read_bytes()
    sample_tags = {"SeriesDescription": "func_task-oneback_run-1", "SeriesNumber": 401, "Modality": "MR",
                   "MRAcquisitionType": "2D", "ProtocolName": "func_task-oneback_run-1",
                   "PulseSequenceName": "", "SequenceName": ""}
    first = "study_visit/run1-a/MR.1.3.46.670589.11.38317.5.0.4476.2014042516042547586"
    assert tarball == {
        "size": len(data), "md5": hashlib.md5(data).hexdigest(),
        "dspath": "icf/visit_dicom.tar", "storepath": "study/visit_dicom.tar",
        "series": [{"series": SAMPLE_SERIES, **sample_tags, "files": 12, "frames": 12}],
        "findings": [  # 12 of the series' 3,753 images are in the sample
            {"code": "instance-gaps", "count": 1, "paths": [first],
             "message": "1 image series with gaps or repeats in InstanceNumber: series 401: 3741 missing"},
            {"code": "not-dicom", "count": 2, "paths": ["study_visit/LICENSE-PDDL.txt", "study_visit/README.txt"],
             "message": "2 file(s) are not DICOM: archived, but in no list or dataset"},
        ]}
    assert len(dicoms) == 12 and all(list(d) == FIELDS for d in dicoms)
    with tarfile.open(tar) as t:
        for record in dicoms:
            member = t.getmember(record["path"])
            content = t.extractfile(member).read()
            assert record["md5"] == hashlib.md5(content).hexdigest() and record["size"] == len(content)
            # the offset is where Python's tarfile finds the content, and the bytes there are it
            assert record["offset"] == member.offset_data
            assert data[record["offset"]:record["offset"] + record["size"]] == content
    assert dicoms[0] == {"path": first, "md5": "e14593a00fc5f79c9eabe8dd629c2843", "size": 21128,
                         "offset": 18432, "series": SAMPLE_SERIES, "kind": "image", "frames": 1, "InstanceNumber": 1,
                         **sample_tags}
    assert result.stderr.count("deposit_visit_metadata: not-dicom: 2 file(s) are not DICOM") == 1


def test_bad_ids_are_usage_errors(store):
    assert deposit(store, study="../x").returncode == 2


def test_missing_archive_is_an_error(store):
    (store / "study").mkdir()
    assert_refused(deposit(store), store, "visit_dicom.tar")


# -- 2: one pass, md5 check ------------------------------------------------------------

def test_md5sum_mismatch_is_corruption_and_writes_nothing(store):
    tar = archive(store, SAMPLE_VISIT)
    data = bytearray(tar.read_bytes())
    data[3000] ^= 1  # one flipped bit inside the first member's content
    tar.write_bytes(bytes(data))
    assert_refused(deposit(store), store, "archive corrupted", str(tar))


@pytest.mark.slow
def test_large_member_streams_in_bounded_memory(tmp_path, store):
    big = make_dicom(tmp_path / "in" / "big.dcm")
    with open(big, "ab") as f:
        f.write(b"\xe0\x7f\x10\x00OW\0\0" + (300 * 2**20).to_bytes(4, "little"))
        f.truncate(f.tell() + 300 * 2**20)
    archive(store, tmp_path / "in")
    run = measure([sys.executable, REPO / "bin/deposit_visit_metadata", "-o", store,
                                "--id", "study", "visit"])
    assert run.returncode == 0 and 10 < run.peak_rss_mb < 100, run
    _, dicoms = load(store)
    assert dicoms[0]["size"] == big.stat().st_size
    assert dicoms[0]["md5"] == hashlib.md5(big.read_bytes()).hexdigest()


# -- 3: DICOM detection shared with step 1 --------------------------------------------------

def test_dicoms_without_preamble_and_dicomdir_are_listed(tmp_path, store):
    import pydicom

    make_dicom(tmp_path / "in" / "bare", preamble=False, implicit=True)
    dicomdir = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "DICOMDIR"
    (tmp_path / "in" / "DICOMDIR").write_bytes(dicomdir.read_bytes())
    (tmp_path / "in" / "notes.txt").write_text("hello")
    archive(store, tmp_path / "in")
    result = deposit(store)
    assert result.returncode == 0, result.stderr
    _, dicoms = load(store)
    assert [d["path"] for d in dicoms] == ["study_visit/DICOMDIR", "study_visit/bare"]
    assert dicoms[1]["Modality"] == "MR" and dicoms[0]["Modality"] == ""
    assert [d["kind"] for d in dicoms] == ["dicomdir", "image"]
    assert "not-dicom: 1 file(s) are not DICOM" in result.stderr


# -- 4: values ------------------------------------------------------------------------------

def odd_dicom(path, **elements):
    """A DICOM with elements set as raw (tag, VR, value), to write odd VRs."""
    from pydicom import dcmread

    make_dicom(path)
    ds = dcmread(path)
    for tag, vr, value in elements.values():
        ds[tag] = DataElement(tag, vr, value)
    ds.save_as(path)
    return path


def test_values_are_json_native_whatever_the_encoding(tmp_path, store):
    src = tmp_path / "in"
    make_dicom(src / "a_latin1.dcm", SeriesDescription="Séries für Ärzte", SeriesNumber=7)
    make_dicom(src / "b_utf8.dcm", SpecificCharacterSet="ISO_IR 192", ProtocolName="脳 fMRI")
    odd_dicom(src / "c_multi.dcm", d=(0x0008103E, "LO", ["one", "two"]), n=(0x00200011, "IS", ["1", "2"]))
    odd_dicom(src / "d_pn.dcm", p=(0x00181030, "PN", "Smith^John"))
    odd_dicom(src / "e_sq.dcm", s=(0x0008103E, "SQ", []))
    bad_is = make_dicom(src / "f_bad_is.dcm", SeriesNumber=12)  # then patched: pydicom won't write it
    bad_is.write_bytes(bad_is.read_bytes().replace(b" \x00\x11\x00IS\x02\x0012",
                                                   b" \x00\x11\x00IS\x02\x00ab"))
    odd_dicom(src / "g_binary.dcm", b=(0x00180023, "OB", b"\x01\x02"))
    make_dicom(src / "h_empty.dcm", SeriesDescription="", ProtocolName=None, Modality=None)
    archive(store, src)
    result = deposit(store)
    assert result.returncode == 0, result.stderr
    records = {Path(d["path"]).name: d for d in load(store)[1]}
    assert records["a_latin1.dcm"]["SeriesDescription"] == "Séries für Ärzte"
    assert records["a_latin1.dcm"]["SeriesNumber"] == 7
    assert records["b_utf8.dcm"]["ProtocolName"] == "脳 fMRI"
    assert records["c_multi.dcm"]["SeriesDescription"] == ["one", "two"]
    assert records["c_multi.dcm"]["SeriesNumber"] == ["1", "2"]
    assert records["d_pn.dcm"]["ProtocolName"] == "Smith^John"
    assert records["e_sq.dcm"]["SeriesDescription"] == ""
    assert records["f_bad_is.dcm"]["SeriesNumber"] == "ab"
    assert records["g_binary.dcm"]["MRAcquisitionType"] == ""
    assert [records["h_empty.dcm"][k] for k in ("SeriesDescription", "ProtocolName", "Modality")] == \
        ["", "", ""]
    raw = outputs(store)[1].read_bytes()
    assert "Séries".encode() in raw  # UTF-8, not \\u escapes


# -- 5: member safety -----------------------------------------------------------------------

def forged_archive(store, members):
    """A TAR written by Python's tarfile with ``members`` [(TarInfo, bytes)]."""
    study = store / "study"
    study.mkdir(parents=True, exist_ok=True)
    with tarfile.open(study / "visit_dicom.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def member(name, kind=tarfile.REGTYPE, **attrs):
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize("bad", [
    member("study_visit/../../x"), member("/etc/x"), member("other_visit/x"), member("study_visit/./x"),
    member("study_visit/a//b"), member("x"),
    member("study_visit/link", tarfile.SYMTYPE, linkname="/etc/passwd"),
    member("study_visit/hard", tarfile.LNKTYPE, linkname="study_visit/ok"),
    member("study_visit/dev", tarfile.CHRTYPE), member("study_visit/fifo", tarfile.FIFOTYPE),
], ids=lambda m: m.name)
def test_hostile_members_are_refused(store, bad):
    forged_archive(store, [(member("study_visit/ok"), b"fine"), (bad, b"evil")])
    assert_refused(deposit(store), store, "visit_dicom.tar")


def test_duplicate_members_are_refused(store):
    forged_archive(store, [(member("study_visit/a"), b"1"), (member("study_visit/a"), b"2")])
    assert_refused(deposit(store), store, "appears twice")


def test_directories_from_other_tar_writers_are_accepted(store):
    forged_archive(store, [(member("study_visit", tarfile.DIRTYPE), b""),
                           (member("study_visit/sub", tarfile.DIRTYPE), b""),
                           (member("study_visit/sub/x"), b"data")])
    assert deposit(store).returncode == 0


@pytest.mark.parametrize("content,words", [
    (b"this is not a tar file at all" * 100, "not a TAR"), (b"", "empty file"),
])
def test_non_tar_files_are_refused_clearly(store, content, words):
    (store / "study").mkdir()
    (store / "study" / "visit_dicom.tar").write_bytes(content)
    result = deposit(store)
    assert_refused(result, store, words)
    assert "Traceback" not in result.stderr


def test_truncated_archive_is_refused(store):
    tar = archive(store, SAMPLE_VISIT)
    (store / "study" / "visit_dicom.tar.md5sum").unlink()
    tar.write_bytes(tar.read_bytes()[:50000])
    assert_refused(deposit(store), store, "truncated")


# -- 6: privacy --------------------------------------------------------------------------------

PHI = {"PatientName": "Blacksmith^Hermione", "PatientID": "PID-7734-XQ", "PatientBirthDate": "19610417",
       "InstitutionName": "St. Elsewhere Clinic", "ReferringPhysicianName": "Frankenstein^Victor",
       "PatientAddress": "12 Ginnel Lane", "OtherPatientIDs": "ALT-99812"}


def phi_visit(path: Path) -> Path:
    for i in range(3):
        make_dicom(path / f"s{i}" / f"{i}.dcm", SeriesNumber=i + 1, **PHI)
    return path


def test_no_phi_leaves_the_archive(tmp_path, store):
    archive(store, phi_visit(tmp_path / "in"))
    assert deposit(store).returncode == 0
    written = b"".join(p.read_bytes() for p in outputs(store))
    for value in PHI.values():
        for form in {value, value.replace("^", " "), value.split("^")[0]}:
            assert form.encode() not in written, form
    assert all(set(d) == set(FIELDS) for d in load(store)[1])


# -- 7: overwrite rules, atomicity, reruns ------------------------------------------------------

def test_existing_output_is_refused_unless_force(store):
    archive(store, SAMPLE_VISIT)
    assert deposit(store).returncode == 0
    tarball, dicoms = outputs(store)
    before = (tarball.read_bytes(), dicoms.read_bytes())
    result = deposit(store)
    assert result.returncode == 1 and "--force" in result.stderr
    assert (tarball.read_bytes(), dicoms.read_bytes()) == before
    os.utime(dicoms, (0, 0))
    assert deposit(store, "--force").returncode == 0
    assert (tarball.read_bytes(), dicoms.read_bytes()) == before  # identical bytes on rerun
    assert dicoms.stat().st_mtime > 0


@pytest.mark.slow
def test_kill_9_never_leaves_partial_json_and_rerun_works(tmp_path):
    src = tmp_path / "in"
    for i in range(300):
        make_dicom(src / f"{i:04d}.dcm", pixel_bytes=256 * 1024)
    reference = tmp_path / "ref"
    archive(reference, src)
    assert deposit(reference).returncode == 0
    expected = [p.read_bytes() for p in outputs(reference)]
    interrupted = 0
    for delay in (0.1, 0.2, 0.35, 0.5, 0.8):
        store = tmp_path / f"store-{delay}"
        (store / "study").mkdir(parents=True)
        for name in ("visit_dicom.tar", "visit_dicom.tar.md5sum"):
            os.link(reference / "study" / name, store / "study" / name)
        proc = subprocess.Popen([sys.executable, REPO / "bin/deposit_visit_metadata", "-o", store,
                                 "--id", "study", "visit"], stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        present = [p.read_bytes() for p in outputs(store) if p.exists()]
        assert all(data in expected for data in present)  # complete files or none
        if len(present) < 2:
            interrupted += 1
            result = deposit(store)
            assert result.returncode == 0, result.stderr
        assert [p.read_bytes() for p in outputs(store)] == expected
        assert not [p for p in (store / "study").iterdir() if p.name.endswith(".partial")]
    assert interrupted  # at least one kill landed mid-run


# -- 8: Makefile --------------------------------------------------------------------------------

def test_makefile_regenerates_metadata_when_the_archive_is_newer(tmp_path):
    store = tmp_path / "store"
    make = ["make", "-f", REPO / "Makefile", f"STORE={store}", "STUDY=s", "VISIT=v", f"INPUT={SAMPLE_VISIT}"]
    assert subprocess.run([*make, "metadata"], cwd=tmp_path, capture_output=True).returncode == 0
    tarball, dicoms = outputs(store, study="s", visit="v")
    assert tarball.exists() and dicoms.exists()
    assert subprocess.run([*make, "-q", "metadata"], cwd=tmp_path).returncode == 0
    future = time.time() + 100
    os.utime(store / "s" / "v_dicom.tar", (future, future))
    assert subprocess.run([*make, "-q", "metadata"], cwd=tmp_path).returncode == 1
    written = dicoms.stat().st_mtime_ns
    rerun = subprocess.run([*make, "metadata"], cwd=tmp_path, capture_output=True, text=True)
    assert rerun.returncode == 0 and "--force" in rerun.stdout, rerun.stderr
    assert dicoms.stat().st_mtime_ns > written  # written again
