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
from typing import Any, BinaryIO, Union

from icf import IcfError
from icf.dicom import EXPORTED_TAGS
from icf.output import json_bytes, read_json
from icf.store import Visit, member_path_problem

#: An exported tag's value: text, an integer (IS), or several texts.
TagValue = Union[str, int, list[str]]

_MD5 = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class TarballRecord:
    """``<visit>_metadata_tarball.json``: the archive's size and md5, and
    where it lies in the dataset (``dspath``) and in the store (``storepath``)."""

    size: int
    md5: str
    dspath: str
    storepath: str

    FIELDS = ("size", "md5", "dspath", "storepath")

    @classmethod
    def of(cls, visit: Visit, size: int, md5: str) -> "TarballRecord":
        """The record of ``visit``'s archive of ``size`` bytes with ``md5``."""
        return cls(size, md5, visit.dataset_tar_path, visit.store_tar_path)

    def json(self) -> bytes:
        return json_bytes({field: getattr(self, field) for field in self.FIELDS})


@dataclass(frozen=True)
class DicomRecord:
    """One entry of ``<visit>_metadata_dicoms.json``: a DICOM member's path
    in the archive, md5, size, and its exported tags (in
    :data:`~icf.dicom.EXPORTED_TAGS` order)."""

    path: str
    md5: str
    size: int
    tags: dict[str, TagValue]

    @staticmethod
    def fields() -> tuple[str, ...]:
        return ("path", "md5", "size", *EXPORTED_TAGS)

    def json(self) -> bytes:
        """The record as one line of JSON (UTF-8, no ASCII escaping)."""
        value = {"path": self.path, "md5": self.md5, "size": self.size, **self.tags}
        return json.dumps(value, ensure_ascii=False).encode("utf-8")


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


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_md5(value: Any) -> bool:
    return isinstance(value, str) and _MD5.fullmatch(value) is not None


def _is_tag_value(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(item, str) for item in value)
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _fields_problem(value: Any, fields: tuple[str, ...]) -> str | None:
    if not isinstance(value, dict):
        return "not a JSON object"
    if set(value) != set(fields):
        return f"fields {sorted(value)}, not {list(fields)}"
    return None


def _tarball_problem(value: Any) -> str | None:
    if problem := _fields_problem(value, TarballRecord.FIELDS):
        return problem
    if not _is_size(value["size"]):
        return "'size' is not a number of bytes"
    if not _is_md5(value["md5"]):
        return "'md5' is not an md5 digest"
    return next((f"{field!r} is not a string" for field in ("dspath", "storepath")
                 if not isinstance(value[field], str)), None)


def _dicom_problem(value: Any, top: str, seen: set[str]) -> str | None:
    if problem := _fields_problem(value, DicomRecord.fields()):
        return problem
    if not isinstance(value["path"], str):
        return "'path' is not a string"
    if problem := member_path_problem(value["path"], top):
        return f"'path' {problem}"
    if value["path"] in seen:
        return "'path' is listed twice"
    if not _is_md5(value["md5"]):
        return "'md5' is not an md5 digest"
    if not _is_size(value["size"]):
        return "'size' is not a number of bytes"
    return next((f"tag {tag} is not a string, integer or list of strings"
                 for tag in EXPORTED_TAGS if not _is_tag_value(value[tag])), None)


def read_tarball_record(visit: Visit) -> TarballRecord:
    """``<visit>_metadata_tarball.json``, checked: exactly the fields of
    :class:`TarballRecord`, ``size`` a count of bytes, ``md5`` 32 lowercase
    hex digits, ``dspath`` and ``storepath`` strings."""
    value = _read(visit.metadata_tarball)
    if problem := _tarball_problem(value):
        raise malformed(visit.metadata_tarball, problem)
    return TarballRecord(**value)


def read_dicom_records(visit: Visit) -> list[DicomRecord]:
    """``<visit>_metadata_dicoms.json``, checked: a list of objects, each
    with exactly :meth:`DicomRecord.fields`: ``path`` a unique relative path
    under ``<study>_<visit>/``, an md5 ``md5``, a ``size`` and every exported
    tag (a string, an integer or a list of strings)."""
    path = visit.metadata_dicoms
    values = _read(path)
    if not isinstance(values, list):
        raise malformed(path, "not a JSON array")
    records = []
    seen: set[str] = set()
    for number, value in enumerate(values, 1):
        if problem := _dicom_problem(value, visit.archive_top, seen):
            raise malformed(path, f"entry {number}: {problem}")
        seen.add(value["path"])
        records.append(DicomRecord(value["path"], value["md5"], value["size"],
                                   {tag: value[tag] for tag in EXPORTED_TAGS}))
    return records
