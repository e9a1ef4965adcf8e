"""The files the steps hand each other: ``<visit>_dicom.tar.md5sum`` (step 1)
and the two metadata JSON files (step 2), as typed records, each with one
writer and one validating reader.

Every later step and ``verify_visit`` read them through :func:`read_md5sum`,
:func:`read_tarball_record` and :func:`read_dicom_records`, which check every
field: a damaged or hand-edited file is one line, ``<file>: malformed
metadata: <what> (rerun deposit_visit_metadata --force ...)``, never a crash
further on. The field lists are exact, so nothing but what is listed here
(:data:`icf.dicom.EXPORTED_TAGS` among it) can pass from a JSON file into a
dataset or the catalog.

The formats themselves (field meanings, JSON layout) are documented for users
in ``docs/formats.rst``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

from icf import IcfError
from icf.dicom import EXPORTED_TAGS, TagValue
from icf.output import json_bytes, read_json
from icf.store import SERIES_KEY, Visit, member_path_problem

#: What a DICOM file is (see :meth:`icf.dicom.DicomHeader.identity`).
KINDS = ("image", "dicomdir", "other")
#: The codes of a visit's findings, in the order they are listed (the rule
#: for each is in :mod:`icf.metadata`); the first two are data-integrity
#: findings (``deposit_visit_metadata --strict`` fails on them).
FINDING_CODES = ("mixed-studies", "duplicate-instance-different-bytes", "duplicate-instance-same-bytes",
                 "instance-gaps", "not-dicom", "no-timestamp", "not-depositable")
INTEGRITY_CODES = FINDING_CODES[:2]
#: At most this many paths are named per finding.
FINDING_PATHS = 10

_MD5 = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class SeriesSummary:
    """One image series of a visit: its key (``series`` of its DICOM
    records), the exported tags of its first file in archive order, how
    many files and frames."""

    key: str
    tags: dict[str, TagValue]
    files: int
    frames: int

    def json_value(self) -> dict[str, Any]:
        return {"series": self.key, **self.tags, "files": self.files, "frames": self.frames}


@dataclass(frozen=True)
class Finding:
    """Something odd about a visit: a code of :data:`FINDING_CODES`, how
    many (files, series or studies, as the message says), a one-line
    message and the first :data:`FINDING_PATHS` paths concerned."""

    code: str
    count: int
    message: str
    paths: list[str]

    def json_value(self) -> dict[str, Any]:
        return {"code": self.code, "count": self.count, "message": self.message, "paths": self.paths}


@dataclass(frozen=True)
class TarballRecord:
    """``<visit>_metadata_tarball.json``: the archive's size and md5, where
    it lies in the dataset (``dspath``) and in the store (``storepath``),
    and the visit's summary: its image series and its findings."""

    size: int
    md5: str
    dspath: str
    storepath: str
    series: list[SeriesSummary]
    findings: list[Finding]

    FIELDS = ("size", "md5", "dspath", "storepath", "series", "findings")

    @classmethod
    def of(cls, visit: Visit, size: int, md5: str, series: list[SeriesSummary],
           findings: list[Finding]) -> "TarballRecord":
        """The record of ``visit``'s archive of ``size`` bytes with ``md5``."""
        return cls(size, md5, visit.dataset_tar_path, visit.store_tar_path, series, findings)

    def json_value(self) -> dict[str, Any]:
        return {"size": self.size, "md5": self.md5, "dspath": self.dspath, "storepath": self.storepath,
                "series": [s.json_value() for s in self.series],
                "findings": [f.json_value() for f in self.findings]}

    def json(self) -> bytes:
        return json_bytes(self.json_value())


@dataclass(frozen=True)
class DicomRecord:
    """One entry of ``<visit>_metadata_dicoms.json``: a DICOM member's path
    in the archive, md5, size and ``offset`` (where its content starts in the
    TAR, in bytes: the content is bytes ``offset`` to ``offset + size - 1``,
    which :mod:`icf.tarslice` fetches by range); its series key (:func:`icf.store.series_key`
    of its SeriesInstanceUID, ``""`` without one), kind (:data:`KINDS`),
    frames and InstanceNumber; and its exported tags (in
    :data:`~icf.dicom.EXPORTED_TAGS` order)."""

    path: str
    md5: str
    size: int
    offset: int
    series: str
    kind: str
    frames: int
    instance: TagValue
    tags: dict[str, TagValue]

    @staticmethod
    def fields() -> tuple[str, ...]:
        return ("path", "md5", "size", "offset", "series", "kind", "frames", "InstanceNumber", *EXPORTED_TAGS)

    def json_value(self) -> dict[str, Any]:
        return {"path": self.path, "md5": self.md5, "size": self.size, "offset": self.offset, "series": self.series,
                "kind": self.kind, "frames": self.frames, "InstanceNumber": self.instance, **self.tags}

    def json(self) -> bytes:
        """The record as one line of JSON (UTF-8, no ASCII escaping)."""
        return json.dumps(self.json_value(), ensure_ascii=False).encode("utf-8")


class DicomListWriter:
    """Streams :class:`DicomRecord` objects into ``out`` as a JSON array, one
    record per line, so memory does not grow with the visit."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.count = 0
        out.write(b"[")

    def add(self, record: DicomRecord) -> None:
        self.out.write(b",\n" if self.count else b"\n")
        self.out.write(record.json())
        self.count += 1

    def close(self) -> None:
        self.out.write(b"\n]\n")


def series_order(number: TagValue) -> tuple[int, int, str]:
    """How series sort by SeriesNumber: numbers first, ascending; anything
    else (empty, text, several values) after, by text."""
    if isinstance(number, int):
        return (0, number, "")
    return (1, 0, ", ".join(number) if isinstance(number, list) else number)


def md5sum_line(visit: Visit, md5: str) -> bytes:
    """The line of ``<visit>_dicom.tar.md5sum`` (as ``md5sum`` writes it)."""
    return f"{md5}  {visit.tarball.name}\n".encode()


def read_md5sum(visit: Visit) -> str | None:
    """The md5 recorded in the archive's ``.md5sum``, None if there is none."""
    try:
        text = visit.md5sum.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise IcfError(f"{visit.md5sum}: unreadable ({exc})") from None
    fields = text.split()
    if len(fields) != 2 or fields[1] != visit.tarball.name or not _MD5.fullmatch(fields[0].lower()):
        raise IcfError(f"{visit.md5sum}: not an md5sum line for {visit.tarball.name}")
    return fields[0].lower()


def malformed(path: Path, detail: str) -> IcfError:
    """The one error for a metadata file that is not what step 2 writes."""
    return IcfError(f"{path}: malformed metadata: {detail} "
                    "(rerun deposit_visit_metadata --force to remake it from the archive)")


def _read(path: Path) -> Any:
    return read_json(path, "missing (run deposit_visit_metadata first)")


#: A field check: the problem with a value (``is not ...``), or None.
Check = Callable[[Any], "str | None"]


def _expect(ok: Callable[[Any], bool], what: str) -> Check:
    return lambda value: None if ok(value) else f"is not {what}"


_SURROGATE = re.compile("[\ud800-\udfff]")
_LARGEST = 2**63 - 1  # what every reader of the JSON (and the browser) takes as an integer


def _is_text(value: Any) -> bool:
    """A string that is text: JSON can carry lone surrogates, UTF-8 cannot."""
    return isinstance(value, str) and not _SURROGATE.search(value)


def _is_integer(value: Any) -> bool:
    return type(value) is int and -_LARGEST <= value <= _LARGEST


def _is_count(value: Any) -> bool:
    return _is_integer(value) and value >= 0


def _is_tag_value(value: Any) -> bool:
    if isinstance(value, list):
        return all(_is_text(item) for item in value)
    return _is_text(value) or _is_integer(value)


_STRING = _expect(_is_text, "text")
_COUNT = _expect(_is_count, "a count")
_BLOCK_OFFSET = _expect(lambda v: _is_count(v) and v % 512 == 0, "a byte offset (a multiple of 512)")
_POSITIVE = _expect(lambda v: _is_count(v) and v > 0, "a positive count")
_MD5_DIGEST = _expect(lambda v: isinstance(v, str) and _MD5.fullmatch(v) is not None, "an md5 digest")
_SERIES_KEY = _expect(lambda v: isinstance(v, str) and SERIES_KEY.fullmatch(v) is not None, "a series key")
_TAG_VALUE = _expect(_is_tag_value, "a string, integer or list of strings")


def _object_problem(value: Any, checks: dict[str, Check]) -> str | None:
    """The first problem of a JSON object that must have exactly the fields of ``checks``."""
    if not isinstance(value, dict):
        return "not a JSON object"
    if set(value) != set(checks):
        return f"fields {sorted(value)}, not {list(checks)}"
    return next((f"{field!r} {problem}" for field, check in checks.items()
                 if (problem := check(value[field]))), None)


def _list_of(checks: Callable[[], dict[str, Check]], most: int | None = None) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or (most is not None and len(value) > most):
            return "not a list" + (f" of at most {most}" if most is not None else "")
        return next((f"entry {number}: {problem}" for number, item in enumerate(value, 1)
                     if (problem := _object_problem(item, checks()))), None)
    return check


def _tag_checks() -> dict[str, Check]:
    return dict.fromkeys(EXPORTED_TAGS, _TAG_VALUE)


def _series_checks() -> dict[str, Check]:
    return {"series": _SERIES_KEY, **_tag_checks(), "files": _POSITIVE, "frames": _COUNT}


def _tarball_checks() -> dict[str, Check]:
    return {"size": _COUNT, "md5": _MD5_DIGEST, "dspath": _STRING, "storepath": _STRING,
            "series": _list_of(_series_checks), "findings": _FINDINGS}


_PATHS = _expect(lambda v: isinstance(v, list) and len(v) <= FINDING_PATHS
                 and all(_is_text(p) for p in v), f"a list of at most {FINDING_PATHS} paths")
_FINDINGS = _list_of(lambda: {"code": _expect(lambda v: v in FINDING_CODES, "a finding code"),
                              "count": _POSITIVE, "message": _STRING, "paths": _PATHS})


def _dicom_checks() -> dict[str, Check]:
    return {"path": _STRING, "md5": _MD5_DIGEST, "size": _COUNT, "offset": _BLOCK_OFFSET, "series": _SERIES_KEY,
            "kind": _expect(lambda v: v in KINDS, f"one of {', '.join(KINDS)}"),
            "frames": _POSITIVE, "InstanceNumber": _TAG_VALUE, **_tag_checks()}


def read_tarball_record(visit: Visit) -> TarballRecord:
    """``<visit>_metadata_tarball.json``, checked field by field (see
    :class:`TarballRecord`): sizes and counts are non-negative integers,
    ``md5`` 32 lowercase hex digits, series and findings exactly their fields."""
    value = _read(visit.metadata_tarball)
    if problem := _object_problem(value, _tarball_checks()):
        raise malformed(visit.metadata_tarball, problem)
    return TarballRecord(
        value["size"], value["md5"], value["dspath"], value["storepath"],
        [SeriesSummary(s["series"], {tag: s[tag] for tag in EXPORTED_TAGS}, s["files"], s["frames"])
         for s in value["series"]],
        [Finding(**f) for f in value["findings"]])


def read_dicom_records(visit: Visit) -> list[DicomRecord]:
    """``<visit>_metadata_dicoms.json``, checked: a list of objects, each
    with exactly :meth:`DicomRecord.fields`, ``path`` a unique relative path
    under ``<study>_<visit>/``, every other field of its type."""
    path = visit.metadata_dicoms
    values = _read(path)
    if not isinstance(values, list):
        raise malformed(path, "not a JSON array")
    records = []
    seen: set[str] = set()
    checks = _dicom_checks()
    for number, value in enumerate(values, 1):
        problem = _object_problem(value, checks)
        if problem is None and (bad_path := member_path_problem(value["path"], visit.archive_top)):
            problem = f"'path' {bad_path}"
        if problem is None and value["path"] in seen:
            problem = "'path' is listed twice"
        if problem:
            raise malformed(path, f"entry {number}: {problem}")
        seen.add(value["path"])
        records.append(DicomRecord(value["path"], value["md5"], value["size"], value["offset"], value["series"],
                                   value["kind"], value["frames"], value["InstanceNumber"],
                                   {tag: value[tag] for tag in EXPORTED_TAGS}))
    return records
