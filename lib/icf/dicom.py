"""Reading DICOM headers: is a file DICOM, when was it acquired, which technical tags.

Whether a file is DICOM is decided by parsing its first bytes, never by its
name. Two layouts count:

- a Part-10 file: 128-byte preamble, ``DICM``, the file meta group (0002,xxxx)
  in explicit VR little endian, then the data set in the transfer syntax that
  (0002,0010) names (implicit/explicit VR little endian, explicit VR big
  endian, deflated explicit VR little endian; encapsulated pixel data
  syntaxes encode the header as explicit VR little endian);
- a bare data set without preamble (older exports): the file starts with a
  meta group (0002,xxxx) or with a group-0008 element, in little endian or
  (without a meta group) explicit VR big endian, and the element walk
  below succeeds over every element up to the tags we need, with tags in
  ascending order (random files fail this within a few bytes).

Only the header is read: the walk stops at the first tag after the last one
asked for, skipping any value in between (sequences of undefined length are
stepped over item by item), so pixel data is never read.

The work per file is bounded, whatever its bytes (an archive holds files from
anywhere):

- bytes read: at most :data:`HEADER_LIMIT`; a walk that needs more uses the
  elements found up to there, and a value that would end past the limit is
  skipped without reading towards it;
- bytes inflated: a deflated data set is inflated to at most
  :data:`HEADER_LIMIT` bytes, so a deflate bomb costs no more than a long
  header;
- nesting: sequences and items of undefined length are stepped over with an
  explicit stack, so any depth that fits in the bytes read works;
- time: every element stepped over advances at least 8 bytes, and a walk cut
  short by the bytes read so far is repeated on twice the bytes, so the
  walking done is linear in the bytes read;
- a file cut at any byte is DICOM with the tags found before the cut, or
  :class:`NotDicom` (see :func:`read_header`), never another error;
- exported values are capped at :data:`MAX_VALUE_CHARS` characters (see
  :meth:`DicomHeader.technical_tags`).

The walk here replaces pydicom's reader for speed: it only locates elements.
``make bench`` compares it with pydicom on the same files and tags; on a
2-core machine it measured about 16-21x faster than
``dcmread(stop_before_pixels=True, specific_tags=...)``, 19-24x than
``dcmread(stop_before_pixels=True)`` and 6-8x than ``read_partial`` with
``stop_when`` after the last tag. Value decoding stays pydicom's
(:func:`pydicom.values.convert_value`, with the file's SpecificCharacterSet).
"""

from __future__ import annotations

import calendar
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Union

#: How far into a file the header walk may read, and how far a deflated
#: data set may be inflated, at most.
HEADER_LIMIT = 16 * 1024 * 1024
_FIRST_READ = 64 * 1024

#: The longest exported value, in characters, cut marker included.
MAX_VALUE_CHARS = 1024
#: Ends an exported value that was cut to :data:`MAX_VALUE_CHARS`.
CUT_MARKER = " [cut]"
# Raw bytes decoded per value, at most: every DICOM character set needs at
# most 4 bytes per character (escape sequences aside), so this decodes to more
# than MAX_VALUE_CHARS characters, and a character split by the slice falls
# beyond the cut.
_MAX_VALUE_BYTES = 4 * MAX_VALUE_CHARS + 16

# (group << 16) | element
SPECIFIC_CHARACTER_SET = 0x00080005
STUDY_DATE, SERIES_DATE, ACQUISITION_DATE, CONTENT_DATE = 0x00080020, 0x00080021, 0x00080022, 0x00080023
ACQUISITION_DATETIME = 0x0008002A
STUDY_TIME, SERIES_TIME, ACQUISITION_TIME, CONTENT_TIME = 0x00080030, 0x00080031, 0x00080032, 0x00080033
TIMEZONE_OFFSET_FROM_UTC = 0x00080201

#: The technical tags that may leave an archive (into JSON, git-annex
#: metadata, the catalog), in this order. Nothing else is ever exported.
EXPORTED_TAGS: dict[str, int] = {
    "SeriesDescription": 0x0008103E,
    "SeriesNumber": 0x00200011,
    "Modality": 0x00080060,
    "MRAcquisitionType": 0x00180023,
    "ProtocolName": 0x00181030,
    "PulseSequenceName": 0x00189005,
    "SequenceName": 0x00180024,
}

# What a file is and where it belongs; read, never exported as they are (UIDs
# are linkable identifiers): see DicomHeader.identity().
MEDIA_STORAGE_SOP_CLASS_UID, TRANSFER_SYNTAX_UID = 0x00020002, 0x00020010
SOP_CLASS_UID, SOP_INSTANCE_UID = 0x00080016, 0x00080018
STUDY_INSTANCE_UID, SERIES_INSTANCE_UID = 0x0020000D, 0x0020000E
INSTANCE_NUMBER = 0x00200013
NUMBER_OF_FRAMES, ROWS = 0x00280008, 0x00280010
IDENTITY_TAGS = frozenset({SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID,
                           INSTANCE_NUMBER, NUMBER_OF_FRAMES, ROWS})
#: SOP classes (0008,0016, or (0002,0002) of a file without it) of a DICOMDIR.
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

TIMESTAMP_TAGS = frozenset({
    STUDY_DATE, SERIES_DATE, ACQUISITION_DATE, CONTENT_DATE, ACQUISITION_DATETIME,
    STUDY_TIME, SERIES_TIME, ACQUISITION_TIME, CONTENT_TIME, TIMEZONE_OFFSET_FROM_UTC,
})


def all_tags() -> frozenset[int]:
    """Every tag a full header read looks for: timestamps, exported tags and
    the character set (read from :data:`EXPORTED_TAGS` on each call)."""
    return TIMESTAMP_TAGS | IDENTITY_TAGS | set(EXPORTED_TAGS.values()) | {SPECIFIC_CHARACTER_SET}


_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_IMPLICIT_LE_HEADER, _IMPLICIT_BE_HEADER = struct.Struct("<HHI"), struct.Struct(">HHI")
_EXPLICIT_LE_HEADER, _EXPLICIT_BE_HEADER = struct.Struct("<HH2sH"), struct.Struct(">HH2sH")
_LE_LENGTH, _BE_LENGTH = struct.Struct("<I"), struct.Struct(">I")
_UNDEFINED = 0xFFFFFFFF
_MAX_UID_BYTES = 66  # 64 characters, padding, one more to tell a cut value
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class NotDicom(Exception):
    """The bytes do not parse as a DICOM header; the message says where."""


class _Truncated(Exception):
    """The walk needs more bytes than were read so far."""


class _EndOfData(Exception):
    """The walk needs more bytes than the file (or HEADER_LIMIT) has."""


@dataclass(frozen=True)
class Element:
    """One element's raw value as stored; ``vr`` is None for implicit VR."""

    vr: str | None
    value: bytes


TagValue = Union[str, int, list[str]]


@dataclass(frozen=True)
class Identity:
    """What a DICOM file is and where it belongs (:meth:`DicomHeader.identity`).

    The UIDs are for grouping and comparing inside one run only: they are
    linkable identifiers (and often embed dates and device serials), so no
    output may hold them as they are.
    """

    kind: str  # "image", "dicomdir" or "other"
    frames: int
    instance_number: TagValue
    sop_instance: str
    study: str
    series: str


@dataclass(frozen=True)
class DicomHeader:
    """The elements of :func:`all_tags` (or those asked for) found in a file's header."""

    elements: dict[int, Element]
    is_little_endian: bool
    #: MediaStorageSOPClassUID (0002,0002) from the file meta group, if any
    media_sop_class: str = ""

    def text(self, tag: int) -> str:
        """An ASCII-only value (dates, times, offsets, character sets)
        stripped of padding; ``""`` if missing or, being longer than
        :data:`MAX_VALUE_CHARS`, no such value (so none is decoded whole)."""
        element = self.elements.get(tag)
        if element is None:
            return ""
        value = element.value.strip(b" \0")
        if len(value) > MAX_VALUE_CHARS:
            return ""
        return value.decode("ascii", errors="replace")

    def timestamp(self) -> int | None:
        """Seconds since the epoch at which the study was acquired, or None.

        The first usable source wins:

        1. StudyDate (0008,0020) + StudyTime (0008,0030)
        2. SeriesDate (0008,0021) + SeriesTime (0008,0031)
        3. AcquisitionDate (0008,0022) + AcquisitionTime (0008,0032)
        4. AcquisitionDateTime (0008,002A), at least YYYYMMDD
        5. ContentDate (0008,0023) + ContentTime (0008,0033)

        A date/time pair is usable only when both parse (see
        :func:`parse_date`, :func:`parse_time`). The time is read as UTC,
        then corrected by TimezoneOffsetFromUTC (0008,0201, ``+HHMM`` or
        ``-HHMM``) when that parses; a DT value's own ``&ZZXX`` suffix takes
        precedence over it. Fractions of a second are dropped.
        """
        offset = parse_utc_offset(self.text(TIMEZONE_OFFSET_FROM_UTC))
        chain = (
            (STUDY_DATE, STUDY_TIME), (SERIES_DATE, SERIES_TIME),
            (ACQUISITION_DATE, ACQUISITION_TIME), ACQUISITION_DATETIME,
            (CONTENT_DATE, CONTENT_TIME),
        )
        for source in chain:
            if isinstance(source, tuple):
                date, time = parse_date(self.text(source[0])), parse_time(self.text(source[1]))
                if date is None or time is None:
                    continue
                local = calendar.timegm((*date, *time, 0, 0, 0))
                return local - (offset or 0)
            parsed = parse_datetime(self.text(source))
            if parsed is not None:
                local, own_offset = parsed
                return local - (own_offset if own_offset is not None else offset or 0)
        return None

    def technical_tags(self) -> dict[str, TagValue]:
        """The :data:`EXPORTED_TAGS` as JSON-native values, in that order.

        - text is decoded with the file's SpecificCharacterSet (0008,0005)
          and stripped of padding; a person name becomes its string form;
        - a single IS value (e.g. SeriesNumber) becomes an int;
        - a multi-valued element becomes a list of strings;
        - a missing or empty element, a sequence (SQ), a binary or numeric
          binary value (OB, US, FL, ...) and anything pydicom cannot decode
          become ``""``.

        No header can blow up the JSON or the catalog these values go to: a
        value longer than :data:`MAX_VALUE_CHARS` characters (a list counted
        as stored, its items joined by backslashes) is cut so that it ends
        with :data:`CUT_MARKER` and, marker included, is at most that long. A
        list keeps its leading items while they fit, the last of them cut
        short; a cut value is never an int. Only the first few KiB of a value
        are decoded, so a value cut there is marked cut even if its decoded
        start is short (e.g. ISO 2022 escape sequences, or padding).
        """
        return {name: self._json_value(tag) for name, tag in EXPORTED_TAGS.items()}

    def identity(self) -> Identity:
        """What the file is and where it belongs (see :class:`Identity`).

        ``kind`` is decided by the SOP class: SOPClassUID (0008,0016), or
        the meta group's MediaStorageSOPClassUID (0002,0002) without it.

        - ``dicomdir``: Media Storage Directory Storage (1.2.840.10008.1.3.10);
        - ``image``: a SOP class whose name in the standard's registry
          (pydicom's UID dictionary) contains "Image Storage": MR, Enhanced
          MR, Legacy Converted Enhanced MR, CT, PET, Secondary Capture,
          their multi-frame and retired forms. A file with no SOP class at
          all is an image if it has Rows (0028,0010) (pre-DICOM exports);
        - ``other``: anything else: structured reports (Siemens' Phoenix
          protocol), spectroscopy, raw data, presentation states, private or
          unknown SOP classes.

        ``frames`` is NumberOfFrames (0028,0008) when that is a positive
        integer, else 1 (a classic single-frame image, or no image at all).
        ``instance_number`` is InstanceNumber (0020,0013) as an exported
        value is (an int when it is one integer, else text, ``""`` if
        missing).
        """
        sop_class = self.text(SOP_CLASS_UID) or self.media_sop_class
        if sop_class == DICOMDIR_SOP_CLASS:
            kind = "dicomdir"
        elif sop_class:
            kind = "image" if "Image Storage" in _uid_name(sop_class) else "other"
        else:
            kind = "image" if ROWS in self.elements else "other"
        frames = self.text(NUMBER_OF_FRAMES)
        return Identity(
            kind=kind,
            frames=int(frames) if _INTEGER.fullmatch(frames) and 0 < int(frames) < 2**31 else 1,
            instance_number=self._json_value(INSTANCE_NUMBER),
            sop_instance=self.text(SOP_INSTANCE_UID),
            study=self.text(STUDY_INSTANCE_UID),
            series=self.text(SERIES_INSTANCE_UID),
        )

    def _json_value(self, tag: int) -> TagValue:
        element = self.elements.get(tag)
        if element is None or not element.value:
            return ""
        vr = element.vr if element.vr not in (None, "UN") else _dictionary_vr(tag)
        if vr not in _TEXT_VRS:  # SQ, binary and numeric-binary VRs
            return ""
        value = element.value[:_MAX_VALUE_BYTES]
        cut = len(element.value) > _MAX_VALUE_BYTES
        if value.isascii() and b"\x1b" not in value:  # the same in every character set
            texts = value.decode("ascii").split("\\") if vr not in _SINGLE_VALUED_VRS else [value.decode("ascii")]
        else:
            texts = self._decoded(tag, vr, value)
        texts = [text.strip(" \0") for text in texts]
        if cut or len("\\".join(texts)) > MAX_VALUE_CHARS:
            texts = _cut(texts)
        elif vr == "IS" and len(texts) == 1 and _INTEGER.fullmatch(texts[0]):
            return int(texts[0])
        if len(texts) > 1:
            return texts
        return texts[0] if texts else ""

    def _decoded(self, tag: int, vr: str, value: bytes) -> list[str]:
        """Decode with pydicom and the file's character set; [""] if it cannot."""
        from pydicom.dataelem import RawDataElement
        from pydicom.tag import BaseTag
        from pydicom.values import convert_value

        raw = RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, self.is_little_endian)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                decoded = convert_value(vr, raw, self._encodings())
        except Exception:  # an odd value is exported as "", never a crash
            return [""]
        if isinstance(decoded, (list, tuple)):  # pydicom's MultiValue is a list
            return [str(v) for v in decoded]
        return [str(decoded) if decoded is not None else ""]

    def _encodings(self) -> list[str]:
        from pydicom.charset import convert_encodings

        names = [n.strip() for n in self.text(SPECIFIC_CHARACTER_SET).split("\\")]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return convert_encodings(names) if any(names) else ["iso8859"]
        except Exception:
            return ["iso8859"]


def _uid_name(uid: str) -> str:
    """The name of a UID of the standard's registry, ``""`` if it is none
    (a dictionary lookup: no validation, nothing logged, nothing kept)."""
    from pydicom.uid import UID_dictionary

    return UID_dictionary.get(uid, ("",))[0]


def _dictionary_vr(tag: int) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"


def _cut(texts: list[str]) -> list[str]:
    """The leading items of ``texts`` that fit in :data:`MAX_VALUE_CHARS`
    (joined by backslashes), the last cut short and ending with
    :data:`CUT_MARKER`."""
    room = MAX_VALUE_CHARS - len(CUT_MARKER)
    kept = []
    for text in texts or [""]:
        kept.append(text[:room])
        room -= len(text) + 1  # the item and the backslash after it
        if room < 0:
            break
    kept[-1] += CUT_MARKER
    return kept


_TEXT_VRS = frozenset("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split())
_SINGLE_VALUED_VRS = frozenset("LT ST UR UT".split())
#: An IS value: at most 12 characters of ASCII digits and a sign ("+-1",
#: "²" or a full-width "１２" is no IS), so an exported integer stays small.
_INTEGER = re.compile(r"[+-]?[0-9]{1,11}")


# -- dates and times ---------------------------------------------------------

_DA = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")
_TM = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.\d{1,6})?)?)?")
_DT = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?)?)?)?"
    r"(?:([+-])(\d{2})(\d{2}))?"
)
_OFFSET = re.compile(r"([+-])(\d{2})(\d{2})")


def parse_date(value: str) -> tuple[int, int, int] | None:
    """A DA value (``YYYYMMDD``, or ACR-NEMA ``YYYY.MM.DD``) as a valid
    calendar date, else None. Year 0000 is none: the calendar (and
    :func:`calendar.timegm`) starts at year 1."""
    match = _DA.fullmatch(value)
    if not match:
        return None
    year, month, day = map(int, match.groups())
    if not (year >= 1 and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        return None
    return year, month, day


def parse_time(value: str) -> tuple[int, int, int] | None:
    """A TM value (``HH``, ``HHMM``, ``HHMMSS``, ``HHMMSS.FFFFFF``, or
    ACR-NEMA ``HH:MM:SS``) as hours, minutes, seconds, else None.
    Fractions are dropped; second 60 (a leap second) is allowed."""
    match = _TM.fullmatch(value)
    if not match:
        return None
    hour, minute, second = (int(g or 0) for g in match.groups())
    if hour > 23 or minute > 59 or second > 60:
        return None
    return hour, minute, second


def parse_utc_offset(value: str) -> int | None:
    """TimezoneOffsetFromUTC (``+HHMM``/``-HHMM``) in seconds, else None."""
    match = _OFFSET.fullmatch(value)
    if not match:
        return None
    sign, hours, minutes = match.groups()
    if int(hours) > 14 or int(minutes) > 59:
        return None
    return (1 if sign == "+" else -1) * (int(hours) * 3600 + int(minutes) * 60)


def parse_datetime(value: str) -> tuple[int, int | None] | None:
    """A DT value with at least ``YYYYMMDD``: (seconds since the epoch read as
    UTC, its own UTC offset in seconds or None), else None."""
    match = _DT.fullmatch(value)
    if not match or match.group(3) is None:
        return None
    year, month, day, hour, minute, second = (int(g or 0) for g in match.groups()[:6])
    if parse_date(f"{year:04d}{month:02d}{day:02d}") is None or hour > 23 or minute > 59 or second > 60:
        return None
    offset = None
    if match.group(7):
        offset = parse_utc_offset("".join(match.groups()[6:]))
        if offset is None:
            return None
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)), offset


# -- the header walk ---------------------------------------------------------

def read_header(read: Callable[[int], bytes], wanted: frozenset[int] | None = None) -> DicomHeader:
    """Parse the header that ``read(n)`` (the next up to n bytes of a file)
    yields, far enough to find ``wanted`` (default: :func:`all_tags`); raise
    :class:`NotDicom` if the file is not DICOM.

    Reads 64 KiB first and, only if the header is longer, twice as much as
    read so far each time, up to :data:`HEADER_LIMIT` in all; a read shorter
    than asked for is the end of the file. The caller may hash what ``read``
    returns.

    A file that ends (or reaches the limit) inside its header is DICOM with
    the wanted elements that lie wholly before that point if a preamble and
    a transfer syntax vouch for it; without them it is DICOM only if it
    parses element by element up to that point.
    """
    wanted = all_tags() if wanted is None else wanted
    data = read(_FIRST_READ)
    at_end = len(data) < _FIRST_READ
    while True:
        try:
            return _parse(data, wanted, at_end or len(data) >= HEADER_LIMIT)
        except _Truncated:
            size = min(len(data), HEADER_LIMIT - len(data))
            more = read(size)
            at_end = len(more) < size
            data += more


def read_file_header(path, wanted: frozenset[int] | None = None) -> DicomHeader:
    """:func:`read_header` for a file on disk."""
    with open(path, "rb") as stream:
        return read_header(stream.read, wanted)


def _parse(data: bytes, wanted: frozenset[int], complete: bool) -> DicomHeader:
    """Walk ``data``; ``complete`` means no more bytes can be had."""
    stop_after = max(wanted)
    if data[128:132] == b"DICM":
        start, preamble = 132, True
    elif data[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x08"):  # meta group, or group 8 LE or BE
        start, preamble = 0, False
    else:
        raise NotDicom("no DICM prefix and no data set at the start")
    walker = _Walker(data, complete)
    pos, meta = start, dict[int, str]()
    if data[start:start + 2] == b"\x02\x00":
        pos, meta = walker.meta_group(start)
    syntax = meta.get(TRANSFER_SYNTAX_UID)

    guessed = syntax is None
    if syntax in _DEFLATED:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflated = inflater.decompress(memoryview(data)[pos:], HEADER_LIMIT)
        except zlib.error as exc:
            raise NotDicom(f"deflated data set does not inflate: {exc}") from None
        # at HEADER_LIMIT inflated bytes the walker stops by itself (_need)
        walker, pos = _Walker(inflated, complete or inflater.eof), 0
    little = syntax != _EXPLICIT_BE and (preamble or data[:2] != b"\x00\x08")
    # Like pydicom, trust the first element over the transfer syntax: some
    # writers declare explicit VR and write implicit VR, or the reverse.
    implicit = walker.data[pos + 4:pos + 6] not in _LONG_VRS | _SHORT_VRS
    elements = walker.data_set(pos, implicit, little, wanted, stop_after, strict=not preamble or guessed)
    if (guessed or not preamble) and not elements.found_any:
        raise NotDicom("no DICOM element found at the start")
    return DicomHeader(elements.wanted, little, meta.get(MEDIA_STORAGE_SOP_CLASS_UID, ""))


@dataclass
class _Found:
    wanted: dict[int, Element]
    found_any: bool


class _Walker:
    """Steps over DICOM elements in a byte string, without decoding values."""

    def __init__(self, data: bytes, complete: bool):
        self.data = data
        self.complete = complete

    def _need(self, end: int) -> None:
        """Raise unless ``data`` reaches ``end``: :class:`_Truncated` if more
        bytes could be had, :class:`_EndOfData` if not (the file, or what
        may be read or inflated of it, ends before)."""
        if end > len(self.data):
            raise _EndOfData if self.complete or end > HEADER_LIMIT else _Truncated

    def meta_group(self, pos: int) -> tuple[int, dict[int, str]]:
        """Walk the file meta group (explicit VR little endian); return where
        the data set starts and the meta group's UIDs: transfer syntax
        (0002,0010) and media storage SOP class (0002,0002), those found. A
        group cut short by the end of the data ends there."""
        uids: dict[int, str] = {}
        try:
            while self.data[pos:pos + 2] == b"\x02\x00":
                tag, vr, length, value_at = self.element_header(pos, False, True)
                if length == _UNDEFINED:
                    raise NotDicom("undefined length in the file meta group")
                if tag in (TRANSFER_SYNTAX_UID, MEDIA_STORAGE_SOP_CLASS_UID):
                    self._need(value_at + length)
                    # a UID has at most 64 characters: a longer value is kept cut (never decoded whole)
                    value = self.data[value_at:value_at + min(length, _MAX_UID_BYTES)]
                    uids[tag] = value.decode("ascii", "replace").strip(" \0")
                pos = value_at + length
        except _EndOfData:
            return len(self.data), uids
        return pos, uids

    def element_header(self, pos: int, implicit: bool, little: bool) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, value length, value offset) of the element at pos."""
        self._need(pos + 8)
        data = self.data
        if implicit or data[pos:pos + 2] == (b"\xfe\xff" if little else b"\xff\xfe"):  # items have no VR
            group, elem, length = (_IMPLICIT_LE_HEADER if little else _IMPLICIT_BE_HEADER).unpack_from(data, pos)
            return (group << 16) | elem, None, length, pos + 8
        group, elem, vr, length = (_EXPLICIT_LE_HEADER if little else _EXPLICIT_BE_HEADER).unpack_from(data, pos)
        if vr in _LONG_VRS:
            self._need(pos + 12)
            (length,) = (_LE_LENGTH if little else _BE_LENGTH).unpack_from(data, pos + 8)
            return (group << 16) | elem, vr, length, pos + 12
        if vr not in _SHORT_VRS:
            raise NotDicom(f"invalid VR {vr!r} at byte {pos}")
        return (group << 16) | elem, vr, length, pos + 8

    def data_set(self, pos, implicit, little, wanted, stop_after, strict) -> _Found:
        """Walk the top-level data set from ``pos``, collecting ``wanted``,
        up to the first tag after ``stop_after``. With ``strict`` (no
        preamble vouches for the file), tags must ascend."""
        found: dict[int, Element] = {}
        previous = -1
        try:
            while pos < len(self.data) or not self.complete:
                tag, vr, length, value_at = self.element_header(pos, implicit, little)
                if tag > stop_after:
                    break
                if tag >> 16 == 0xFFFE or (strict and tag <= previous):
                    raise NotDicom(f"unexpected tag {tag:08X} at byte {pos}")
                if length == _UNDEFINED:
                    pos = self._skip_sequence(value_at, implicit or vr == b"UN", little)
                else:
                    if tag in wanted:
                        self._need(value_at + length)
                        found[tag] = Element(vr.decode() if vr else None, self.data[value_at:value_at + length])
                    pos = value_at + length
                previous = tag
        except _EndOfData:
            # a truncated file: a preamble vouches for what was found so far
            if strict:
                raise NotDicom("data set ends inside an element") from None
        return _Found(found, previous >= 0)

    def _skip_sequence(self, pos: int, implicit: bool, little: bool) -> int:
        """Step over the items of an undefined-length sequence at ``pos``,
        and over the sequences and items of undefined length nested in them,
        to the end of the sequence; return where it ends.

        Iterative, so any depth works: ``implicit_at`` holds, per open
        sequence or item, whether its elements are implicit VR (those in a UN
        element of undefined length are). Sequences and items alternate, so
        an even depth is a sequence, an odd one an item.
        """
        implicit_at = [implicit]
        while implicit_at:
            depth = len(implicit_at) - 1
            tag, vr, length, value_at = self.element_header(pos, implicit_at[-1], little)
            if depth % 2 == 0:  # in a sequence: items up to its end
                if tag == _SEQUENCE_END:
                    implicit_at.pop()
                    pos = value_at
                elif tag != _ITEM:
                    raise NotDicom(f"expected a sequence item at byte {pos}")
                elif length == _UNDEFINED:
                    implicit_at.append(implicit_at[-1])
                    pos = value_at
                else:
                    pos = value_at + length
            elif tag == _ITEM_END:  # in an item: elements up to its end
                implicit_at.pop()
                pos = value_at
            elif length == _UNDEFINED:
                implicit_at.append(implicit_at[-1] or vr == b"UN")
                pos = value_at
            else:
                pos = value_at + length
        return pos
