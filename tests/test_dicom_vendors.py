"""Real DICOMs from several vendors (tests/data/vendors, see its README.txt):
the header walk against pydicom on every file, what each file is there for,
and step 1 archiving them (issue 11, requirement 6)."""

from __future__ import annotations

import calendar
import tarfile

import pydicom
import pytest
from conftest import DATA, SAMPLE_DICOMS, SAMPLE_VISIT, assert_read_like_pydicom, pydicom_read, run_tool

from icf.dicom import NotDicom, read_file_header

VENDORS = DATA / "vendors"
ENHANCED = VENDORS / "siemens" / "xa-enhanced-3frames.dcm"
SIEMENS_CLASSIC = VENDORS / "siemens" / "classic-fieldmap.dcm"
PHOENIX_SR = VENDORS / "siemens" / "phoenix-sr.dcm"
GE = VENDORS / "ge" / "epi-fmri.dcm"
TOSHIBA = VENDORS / "pydicom" / "MR_small.dcm"
TOSHIBA_BIG_ENDIAN = VENDORS / "pydicom" / "MR_small_bigendian.dcm"
BARE_BIG_ENDIAN_MR = VENDORS / "pydicom" / "MR_small_bigendian_nometa.dcm"  # derived, see README.txt
BARE_BIG_ENDIAN_PLAN = VENDORS / "pydicom" / "ExplVR_BigEndNoMeta.dcm"
DICOMDIR = VENDORS / "pydicom" / "DICOMDIR"
DICOMS = [ENHANCED, SIEMENS_CLASSIC, PHOENIX_SR, GE, TOSHIBA, TOSHIBA_BIG_ENDIAN, BARE_BIG_ENDIAN_MR,
          BARE_BIG_ENDIAN_PLAN, DICOMDIR]
BARE = [BARE_BIG_ENDIAN_MR, BARE_BIG_ENDIAN_PLAN]

# Philips: the sample visit, one image per run and its text file
FILES = sorted(p for p in VENDORS.rglob("*") if p.is_file()) + [
    SAMPLE_DICOMS[0], SAMPLE_DICOMS[-1], SAMPLE_VISIT / "README.txt"]


def test_the_vendor_files_are_all_there():
    assert sorted(p for p in FILES if p.parent.parent == VENDORS and "LICENSE" not in p.name) == sorted(DICOMS)
    assert SAMPLE_DICOMS[0].parent != SAMPLE_DICOMS[-1].parent


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(DATA).as_posix())
def test_read_like_pydicom_reads_it(path):
    ds = pydicom_read(path)
    if path in DICOMS or path in SAMPLE_DICOMS:
        assert ds is not None, path
        assert_read_like_pydicom(path, ds)
    else:
        assert ds is None, path
        with pytest.raises(NotDicom):
            read_file_header(path)


def test_enhanced_multiframe_is_one_image_of_three_frames():
    header = read_file_header(ENHANCED)
    identity = header.identity()
    assert (identity.kind, identity.frames, identity.instance_number) == ("image", 3, 1)
    tags = header.technical_tags()
    assert (tags["PulseSequenceName"], tags["SequenceName"]) == ("*fl3d1_ns", "")
    assert (tags["SeriesNumber"], tags["MRAcquisitionType"]) == (3, "3D")
    # no AcquisitionDate/Time, a StudyDate/Time: 2022-11-16 14:16:02 (no timezone given)
    assert header.timestamp() == calendar.timegm((2022, 11, 16, 14, 16, 2))


def test_siemens_classic_has_sequence_name_not_pulse_sequence_name():
    header = read_file_header(SIEMENS_CLASSIC)
    tags = header.technical_tags()
    assert (tags["SequenceName"], tags["PulseSequenceName"]) == ("*fm2d2r", "")
    assert header.identity().kind == "image" and header.identity().frames == 1


def test_ge_has_neither_sequence_name():
    header = read_file_header(GE)
    tags = header.technical_tags()
    assert (tags["SequenceName"], tags["PulseSequenceName"], tags["SeriesNumber"]) == ("", "", 5)
    assert (header.identity().kind, header.identity().instance_number) == ("image", 5)


def test_phoenix_report_is_other():
    identity = read_file_header(PHOENIX_SR).identity()
    assert (identity.kind, identity.frames) == ("other", 1)
    assert read_file_header(PHOENIX_SR).technical_tags()["Modality"] == "SR"


def test_dicomdir_is_known_by_its_meta_group_sop_class():
    header = read_file_header(DICOMDIR)
    assert header.media_sop_class == "1.2.840.10008.1.3.10" and header.text(0x00080016) == ""
    assert header.identity().kind == "dicomdir"
    assert header.timestamp() is None


@pytest.mark.parametrize("path", BARE, ids=lambda p: p.name)
def test_big_endian_without_preamble_is_read_like_pydicom_forced(path):
    data = path.read_bytes()
    assert data[:2] == b"\x00\x08" and data[128:132] != b"DICM"
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(path)
    forced = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    assert not forced.is_little_endian and not forced.is_implicit_VR
    header = read_file_header(path)  # not NotDicom
    assert not header.is_little_endian
    assert_read_like_pydicom(path, forced)


def test_bare_big_endian_mr_reads_as_its_part10_originals():
    originals = [read_file_header(p) for p in (TOSHIBA, TOSHIBA_BIG_ENDIAN)]
    bare = read_file_header(BARE_BIG_ENDIAN_MR)
    for original in originals:
        assert bare.technical_tags() == original.technical_tags()
        assert bare.identity() == original.identity()
        assert bare.timestamp() == original.timestamp()
    assert bare.identity().kind == "image" and bare.technical_tags()["Modality"] == "MR"
    assert read_file_header(BARE_BIG_ENDIAN_PLAN).identity().kind == "other"  # RT Ion Plan


def test_step1_archives_the_vendor_files_and_dates_the_bare_big_endian_ones(store):
    result = run_tool("make_studyvisit_archive", "-o", store, "--id", "study", "visit", VENDORS)
    assert result.returncode == 0, result.stderr
    in_vendors = [p for p in FILES if VENDORS in p.parents]
    assert f"({len(DICOMS)} DICOMs, {len(in_vendors) - len(DICOMS)} other files)" in result.stderr
    with tarfile.open(store / "study" / "visit_dicom.tar") as tar:
        mtimes = {m.name.removeprefix("study_visit/"): m.mtime for m in tar.getmembers()}
    latest = calendar.timegm((2022, 11, 16, 14, 16, 2))  # the enhanced file's; undated files get it
    assert mtimes["README.txt"] == mtimes["pydicom/DICOMDIR"] == latest
    # StudyDate/Time 2004-08-26 18:50:59 at TimezoneOffsetFromUTC -0400: counted as DICOM
    assert mtimes["pydicom/MR_small_bigendian_nometa.dcm"] == calendar.timegm((2004, 8, 26, 22, 50, 59))
    assert mtimes["pydicom/MR_small_bigendian_nometa.dcm"] == mtimes["pydicom/MR_small.dcm"]
    assert mtimes["pydicom/ExplVR_BigEndNoMeta.dcm"] == calendar.timegm((2015, 5, 15, 10, 53, 51))
