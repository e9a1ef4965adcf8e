"""The header walk on hostile files (issue 9, bounded work on any file):
deflate bombs, files cut at any byte, deep nesting, headers as long as the
limit, and values too long to export."""

from __future__ import annotations

import calendar
import io
import json
import random
import struct
import subprocess
import sys
import warnings
import zlib

import pytest
from conftest import REPO, SAMPLE_DICOMS, make_dicom

from icf.dicom import (
    CUT_MARKER,
    HEADER_LIMIT,
    MAX_VALUE_CHARS,
    TIMESTAMP_TAGS,
    DicomHeader,
    NotDicom,
    _parse,
    _Truncated,
    all_tags,
    read_file_header,
    read_header,
)

EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
LONG_VRS = {b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC"}
#: Not a speed test: a walk taking this long hangs.
HANG_GUARD = 30


# -- crafting bytes by hand --------------------------------------------------

def element(tag: int, vr: bytes, value: bytes = b"", *, length: int | None = None,
            implicit: bool = False) -> bytes:
    """One little-endian element; ``length`` overrides the value's (e.g. undefined)."""
    length = len(value) if length is None else length
    if implicit or tag >> 16 == 0xFFFE:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length) + value
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, length) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, length & 0xFFFF) + value  # 16 bits only


def text(tag: int, vr: bytes, value: str, *, implicit: bool = False) -> bytes:
    raw = value.encode()
    return element(tag, vr, raw + b" " * (len(raw) % 2), implicit=implicit)


def part10(data_set: bytes, syntax: str = EXPLICIT_LE) -> bytes:
    uid = syntax.encode() + b"\0" * (len(syntax) % 2)
    return b"\0" * 128 + b"DICM" + element(0x00020010, b"UI", uid) + data_set


def nest(depth: int, *, implicit: bool = False, inner: bytes = b"") -> bytes:
    """``depth`` sequences of undefined length, each in an item of undefined
    length of the one before, around ``inner``."""
    opening = (element(0x00081032, b"SQ", length=UNDEFINED, implicit=implicit)
               + element(ITEM, b"", length=UNDEFINED))
    closing = element(ITEM_END, b"") + element(SEQUENCE_END, b"")
    return opening * depth + inner + closing * depth


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def outcome(data: bytes, wanted: frozenset[int] | None = None) -> DicomHeader | None:
    """The header of ``data`` as a whole file, None if not DICOM; any other
    error fails the test. What is exported from a header must not fail either."""
    try:
        header = read_header(io.BytesIO(data).read, wanted)
    except NotDicom:
        return None
    except Exception as exc:
        pytest.fail(f"{exc!r} on {len(data)} bytes starting {data[:140]!r}")
    header.technical_tags()
    header.timestamp()
    return header


CHILD = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # a regression fails, not the machine
from icf.dicom import NotDicom, read_file_header
try:
    header = read_file_header(sys.argv[2])
    result = {"tags": header.technical_tags(), "timestamp": header.timestamp()}
except NotDicom as exc:
    result = {"not_dicom": str(exc)}
# VmHWM, not ru_maxrss: the latter keeps the peak of the forking pytest process
with open("/proc/self/status") as status:
    result["max_rss_kib"] = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps(result))
"""


def read_in_child(path) -> dict:
    """Read ``path``'s header in a fresh Python: its outcome and peak RSS (a
    hung walk is stopped by the timeout)."""
    result = subprocess.run([sys.executable, "-c", CHILD, str(REPO / "lib"), str(path)],
                            capture_output=True, text=True, timeout=2 * HANG_GUARD)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


WANTED_FIRST = (text(0x00080005, b"CS", "ISO_IR 100") + text(0x00080020, b"DA", "20240102")
                + text(0x00080030, b"TM", "030405") + text(0x00080060, b"CS", "MR"))
WANTED_LAST = text(0x00180023, b"CS", "3D") + text(0x00200011, b"IS", "7")
STUDY_TIMESTAMP = calendar.timegm((2024, 1, 2, 3, 4, 5))
EXPECTED_TAGS = {"SeriesDescription": "after the nest", "SeriesNumber": 7, "Modality": "MR",
                 "MRAcquisitionType": "3D", "ProtocolName": "", "PulseSequenceName": "", "SequenceName": ""}


# -- 1: deflate bombs --------------------------------------------------------

def deflate_bomb(prefix: bytes, gib: int = 1) -> bytes:
    """``prefix`` and then ``gib`` GiB of zeros, deflated to about 1 MB per GiB:
    after a full flush, each MiB of zeros deflates to the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    mebibyte = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return start + mebibyte * (gib << 10) + compressor.flush()


@pytest.mark.parametrize("inside", ["value", "data set"])
def test_a_deflate_bomb_is_inflated_only_up_to_the_limit(tmp_path, inside):
    """1 MB inflating to 1 GiB: zeros as one long value after wanted tags
    (a header with them), or as the data set itself (8-byte elements all the
    way to the limit). Either way little memory and time."""
    if inside == "value":
        prefix = WANTED_FIRST + element(0x00081000, b"OB", length=0xFFFFFFF0)
    else:
        prefix = b""
    path = tmp_path / "bomb.dcm"
    path.write_bytes(part10(deflate_bomb(prefix), DEFLATED))
    assert path.stat().st_size < 2 << 20
    result = read_in_child(path)
    assert result["max_rss_kib"] < 100 * 1024, result
    if inside == "value":
        assert result["tags"]["Modality"] == "MR" and result["timestamp"] == STUDY_TIMESTAMP, result
    else:
        assert "tags" in result or "not_dicom" in result


def test_a_deflated_data_set_after_the_limit_is_cut_there():
    """Wanted tags past HEADER_LIMIT inflated bytes are not found; those
    before are."""
    filler = element(0x00081000, b"OB", bytes(HEADER_LIMIT))
    data = part10(deflate(WANTED_FIRST + filler + WANTED_LAST), DEFLATED)
    header = outcome(data)
    assert header.technical_tags()["Modality"] == "MR"
    assert header.technical_tags()["SeriesNumber"] == ""


# -- 2: files cut at any byte -------------------------------------------------

def sample_bytes(layout: str) -> bytes:
    """The first sample DICOM as a Part-10 file, deflated, or a bare data set."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    if layout == "part10":
        return SAMPLE_DICOMS[0].read_bytes()
    ds = pydicom.dcmread(SAMPLE_DICOMS[0])
    buffer = io.BytesIO()
    if layout == "deflated":
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(buffer, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.preamble = None
        ds.save_as(buffer, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def header_length(data: bytes) -> int:
    """Where pixel data starts (the walk stops before), or the whole file if
    compressed; plus a little."""
    pixel_data = data.find(b"\xe0\x7f\x10\x00OW")
    return len(data) if pixel_data < 0 else pixel_data + 16


@pytest.mark.parametrize("layout", ["part10", "deflated", "bare"])
def test_a_dicom_cut_at_any_byte_is_dicom_with_the_tags_found_or_not_dicom(layout):
    """Every cut from 0 bytes through the header (the file meta group
    included): NotDicom, or a header with some of the file's elements, the
    same values; with a preamble, what is found only grows with the cut."""
    data = sample_bytes(layout)
    full = read_header(io.BytesIO(data).read)
    assert full.technical_tags()["SeriesNumber"] == 401
    previous: dict = {}
    headers = 0
    for cut in range(header_length(data) + 1):
        for wanted in (all_tags(), TIMESTAMP_TAGS):
            header = outcome(data[:cut], wanted)
            found = header.elements if header else {}
            assert all(full.elements[tag] == value for tag, value in found.items()), cut
            if wanted != TIMESTAMP_TAGS:
                headers += header is not None
                if layout != "bare":
                    assert found.keys() >= previous.keys(), cut
                    previous = found
    assert found == {tag: full.elements[tag] for tag in TIMESTAMP_TAGS & full.elements.keys()}
    assert outcome(data[:header_length(data)]).elements == full.elements
    assert headers > (header_length(data) // 2 if layout != "bare" else 10)


def test_a_cut_header_with_more_bytes_to_come_asks_for_them():
    """Before the whole file is read, a cut is a header, NotDicom, or a
    request for more bytes (that read_header answers), nothing else."""
    data = sample_bytes("part10")
    for cut in range(header_length(data) + 1):
        try:
            _parse(data[:cut], all_tags(), False)
        except (NotDicom, _Truncated):
            pass


def random_bytes(rng: random.Random, size: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(size))


def test_random_garbage_after_a_preamble_or_meta_group_is_a_header_or_not_dicom():
    rng = random.Random(9)
    starts = [b"\0" * 128 + b"DICM", b"\x02\x00", b"\x08\x00"]
    starts += [part10(b"", syntax) for syntax in (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED)]
    for _ in range(3000):
        outcome(rng.choice(starts) + random_bytes(rng, rng.randrange(300)))


def test_random_element_soup_is_a_header_or_not_dicom():
    """Elements, items and delimiters in random order with random lengths
    (undefined included), the kind of bytes that reach the deep paths."""
    rng = random.Random(99)
    tags = [0x00080005, 0x00080020, 0x00080060, 0x0008103E, 0x00081032, 0x00200011, 0x7FE00010,
            ITEM, ITEM_END, SEQUENCE_END, 0x00020010, 0x00090010]
    vrs = [b"CS", b"DA", b"LO", b"IS", b"SQ", b"UN", b"OB", b"UT", b"XX"]
    for _ in range(3000):
        soup = b"".join(
            element(rng.choice(tags), rng.choice(vrs), random_bytes(rng, rng.randrange(6)),
                    length=rng.choice([None, None, UNDEFINED, rng.randrange(12)]),
                    implicit=rng.random() < 0.3)
            for _ in range(rng.randrange(1, 25)))
        layout = rng.randrange(3)
        if layout == 0:
            outcome(part10(soup, rng.choice([EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE])))
        elif layout == 1:
            outcome(part10(deflate(soup), DEFLATED))
        else:
            outcome(soup)


def test_a_real_header_with_random_bytes_changed_is_a_header_or_not_dicom():
    rng = random.Random(999)
    data = sample_bytes("part10")[:header_length(sample_bytes("part10"))]
    for _ in range(2000):
        mutated = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            mutated[rng.randrange(len(data))] = rng.getrandbits(8)
        outcome(bytes(mutated))


# -- 3: nesting ----------------------------------------------------------------

@pytest.mark.parametrize("layout", ["part10", "implicit", "deflated", "bare"])
def test_sequences_nested_5000_deep_are_stepped_over(layout):
    """5,000 levels of undefined-length sequences and items between wanted
    tags (with a wanted tag deep inside, not top level, so not taken), and a
    UN element of undefined length nesting 5,000 more in implicit VR."""
    implicit = layout == "implicit"
    data_set = (
        text(0x00080005, b"CS", "ISO_IR 100", implicit=implicit)
        + text(0x00080020, b"DA", "20240102", implicit=implicit)
        + text(0x00080030, b"TM", "030405", implicit=implicit)
        + text(0x00080060, b"CS", "MR", implicit=implicit)
        + nest(5000, implicit=implicit, inner=text(0x0008103E, b"LO", "deep inside", implicit=implicit))
        + text(0x0008103E, b"LO", "after the nest", implicit=implicit)
        + element(0x00091010, b"UN", length=UNDEFINED, implicit=implicit)
        + element(ITEM, b"", length=UNDEFINED)
        + nest(5000, implicit=True, inner=text(0x0008103E, b"LO", "deep inside", implicit=True))
        + element(ITEM_END, b"") + element(SEQUENCE_END, b"")
        + text(0x00180023, b"CS", "3D", implicit=implicit) + text(0x00200011, b"IS", "7", implicit=implicit)
    )
    data = {"part10": lambda: part10(data_set), "implicit": lambda: part10(data_set, IMPLICIT_LE),
            "deflated": lambda: part10(deflate(data_set), DEFLATED), "bare": lambda: data_set}[layout]()
    assert len(data_set) > 200_000  # longer than the first read, too
    header = outcome(data)
    assert header.technical_tags() == EXPECTED_TAGS
    assert header.timestamp() == STUDY_TIMESTAMP


@pytest.mark.slow
def test_nesting_all_the_way_to_the_limit_keeps_what_was_found_before(tmp_path):
    levels = HEADER_LIMIT // 20 + 100  # 20 bytes a level: never closed within the limit
    path = tmp_path / "deep.dcm"
    path.write_bytes(part10(WANTED_FIRST + nest(levels)[: levels * 20]))
    result = read_in_child(path)
    assert result["tags"]["Modality"] == "MR", result


# -- 4: bytes read and time ------------------------------------------------------

def test_reading_stops_at_the_limit():
    """Elements past HEADER_LIMIT: exactly the limit is read. A value
    said to end past the limit: nothing read towards it."""
    tiny = part10(WANTED_FIRST + element(0x00081000, b"OB", bytes(HEADER_LIMIT - 1000))
                  + element(0x00080070, b"LO") * 1000)
    long_value = part10(WANTED_FIRST + element(0x00080070, b"UT", length=HEADER_LIMIT) + bytes(HEADER_LIMIT))
    for data, expected_read in ((tiny, HEADER_LIMIT), (long_value, 64 * 1024)):
        stream = io.BytesIO(data)
        header = read_header(stream.read)
        assert stream.tell() == expected_read
        assert header.technical_tags()["Modality"] == "MR"


@pytest.mark.parametrize("case", ["tiny explicit elements", "tiny implicit elements",
                                  "tiny items", "a long value then wanted tags"])
@pytest.mark.slow
def test_a_header_as_long_as_the_limit_is_read_in_bounded_time(tmp_path, case):
    """The worst cases for the walk: the most elements HEADER_LIMIT can hold
    (8 bytes each), walked again as more bytes come; or wanted tags right
    before the limit."""
    count = HEADER_LIMIT // 8 + 10
    data = {
        "tiny explicit elements": lambda: part10(WANTED_FIRST + element(0x00080070, b"LO") * count),
        "tiny implicit elements": lambda: part10(text(0x00080060, b"CS", "MR", implicit=True)
                                                 + element(0x00080070, b"", implicit=True) * count,
                                                 IMPLICIT_LE),
        "tiny items": lambda: part10(WANTED_FIRST + element(0x00081032, b"SQ", length=UNDEFINED)
                                     + element(ITEM, b"", length=0) * count),
        "a long value then wanted tags": lambda: part10(
            WANTED_FIRST + element(0x00081000, b"OB", bytes(HEADER_LIMIT - 2000)) + WANTED_LAST),
    }[case]()
    path = tmp_path / "long.dcm"
    path.write_bytes(data)
    result = read_in_child(path)
    assert result["max_rss_kib"] < 200 * 1024, result
    assert result["tags"]["Modality"] == "MR", result
    if case == "a long value then wanted tags":
        assert result["tags"]["SeriesNumber"] == 7, result


# -- 5: caps on exported values ------------------------------------------------

def exported(tmp_path, **tags) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of values longer than their VR allows
        path = make_dicom(tmp_path / "tags.dcm", implicit=True, **tags)
    return read_file_header(path).technical_tags()


def test_an_8_mib_value_is_exported_cut_and_marked(tmp_path):
    tags = exported(tmp_path, SeriesDescription="x" * (8 << 20))
    assert tags["SeriesDescription"] == "x" * (MAX_VALUE_CHARS - len(CUT_MARKER)) + CUT_MARKER
    assert tags["Modality"] == "MR" and tags["SeriesNumber"] == 3
    assert len(json.dumps(tags)) < 2 * MAX_VALUE_CHARS


def test_a_value_of_the_cap_is_kept_one_longer_is_cut(tmp_path):
    kept = exported(tmp_path, SeriesDescription="y" * MAX_VALUE_CHARS)["SeriesDescription"]
    assert kept == "y" * MAX_VALUE_CHARS
    longer = exported(tmp_path, SeriesDescription="y" * (MAX_VALUE_CHARS + 1))["SeriesDescription"]
    assert len(longer) == MAX_VALUE_CHARS and longer.endswith(CUT_MARKER)


def test_a_long_multi_valued_value_keeps_whole_items_within_the_cap(tmp_path):
    items = [f"item{i:03d}" for i in range(300)]
    assert exported(tmp_path, SeriesDescription=items[:3])["SeriesDescription"] == items[:3]
    kept = exported(tmp_path, SeriesDescription=items)["SeriesDescription"]
    assert kept[:-1] == items[:len(kept) - 1] and len(kept) > 100
    assert kept[-1].endswith(CUT_MARKER) and items[len(kept) - 1].startswith(kept[-1][:-len(CUT_MARKER)])
    assert len("\\".join(kept)) <= MAX_VALUE_CHARS


def test_a_long_multibyte_value_cut_inside_a_character_decodes(tmp_path):
    """3-byte UTF-8 characters: the raw bytes decoded are cut inside one."""
    tags = exported(tmp_path, SpecificCharacterSet="ISO_IR 192", SeriesDescription="脳" * 3000)
    assert tags["SeriesDescription"] == "脳" * (MAX_VALUE_CHARS - len(CUT_MARKER)) + CUT_MARKER


def test_hostile_values_export_without_error():
    """An IS that int() refuses, an IS of 5,000 digits, a character set of
    2 MiB, a year 0000 and an 8 MiB value not in ASCII (implicit VR, whose
    lengths have 32 bits): exported as strings, cut, or ignored."""
    data_set = b"".join(element(tag, b"", value, implicit=True) for tag, value in (
        (0x00080005, b"ISO_IR 100\\" * (200 << 10)), (0x00080020, b"00000101"), (0x00080030, b"030405"),
        (0x00080060, b"MR"), (0x0008103E, b"\xe9" * (8 << 20)), (0x00200011, b"+-5 ")))
    header = outcome(part10(data_set, IMPLICIT_LE))
    assert header.timestamp() is None
    tags = header.technical_tags()
    assert tags["SeriesNumber"] == "+-5" and tags["Modality"] == "MR"
    assert tags["SeriesDescription"] == "é" * (MAX_VALUE_CHARS - len(CUT_MARKER)) + CUT_MARKER
    digits = outcome(part10(text(0x00200011, b"IS", "9" * 5000))).technical_tags()["SeriesNumber"]
    assert len(digits) == MAX_VALUE_CHARS and digits.endswith(CUT_MARKER)
