"""Step 2: from a visit's TAR, write ``<visit>_metadata_tarball.json`` and
``<visit>_metadata_dicoms.json`` in one sequential pass.

The archive is read once: its md5 and size, every member's md5 and size and
every DICOM member's technical tags (:data:`icf.dicom.EXPORTED_TAGS`, nothing
else) all come from that read. Members are checked as they go by: only
regular files and directories under ``<study>_<visit>/``, with relative,
unique paths free of ``.`` and ``..`` components; anything else means the
archive was not made by step 1 or was tampered with, and nothing is written.
If ``<visit>_dicom.tar.md5sum`` exists and disagrees, the archive is
corrupted and nothing is written.

The DICOM list streams into its output file (one object per line), so memory
does not grow with the visit. The two files are committed together: the
DICOM list first, the tarball file last; the tarball file's presence marks a
complete set (a lone DICOM list is an interrupted run's, and is replaced).

The later steps and ``verify_visit`` read both files back through
:func:`read_tarball_record` and :func:`read_dicom_records`, which check
every field they rely on, so a damaged or hand-edited file is one
"malformed" line, never a crash deeper down.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from icf import IcfError, doing
from icf.dicom import EXPORTED_TAGS, NotDicom, read_header
from icf.output import PartialFile, json_bytes, read_json, signals_held
from icf.store import Visit
from icf.tarball import HashingReader, TarEntry, iter_tar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetadataSummary:
    members: int
    dicoms: int
    size: int
    md5: str

    def __str__(self) -> str:
        return (f"{self.dicoms} DICOMs of {self.members} files listed, "
                f"archive {self.size} bytes, md5 {self.md5}")


def read_metadata(path: Path) -> Any:
    """One of the two JSON files this step writes, as JSON (unchecked)."""
    return read_json(path, "missing (run deposit_visit_metadata first)")


_MD5 = re.compile(r"[0-9a-f]{32}")
#: The fields of each file, exactly: nothing else may leave the archive.
TARBALL_FIELDS = ("size", "md5", "dspath", "storepath")
DICOM_FIELDS = ("path", "md5", "size", *EXPORTED_TAGS)


def _malformed(path: Path, detail: str) -> IcfError:
    return IcfError(f"{path}: malformed metadata: {detail} "
                    "(rerun deposit_visit_metadata --force to remake it from the archive)")


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_tarball_record(visit: Visit) -> dict[str, Any]:
    """``<visit>_metadata_tarball.json``, checked: exactly
    :data:`TARBALL_FIELDS`, ``size`` a count of bytes, ``md5`` 32 lowercase hex digits, ``dspath`` and ``storepath``
    strings."""
    path = visit.metadata_tarball
    record = read_metadata(path)
    if not isinstance(record, dict):
        raise _malformed(path, "not a JSON object")
    if set(record) != set(TARBALL_FIELDS):
        raise _malformed(path, f"fields {sorted(record)}, not {list(TARBALL_FIELDS)}")
    if not _is_size(record.get("size")):
        raise _malformed(path, "'size' is not a number of bytes")
    if not isinstance(record.get("md5"), str) or not _MD5.fullmatch(record["md5"]):
        raise _malformed(path, "'md5' is not an md5 digest")
    for field in ("dspath", "storepath"):
        if not isinstance(record.get(field), str):
            raise _malformed(path, f"{field!r} is not a string")
    return record


def _is_tag_value(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(item, str) for item in value)
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def read_dicom_records(visit: Visit) -> list[dict[str, Any]]:
    """``<visit>_metadata_dicoms.json``, checked: a list of objects, each
    with exactly :data:`DICOM_FIELDS`: a string ``path``, an md5 ``md5``, a ``size`` and every exported
    tag (a string, an integer or a list of strings)."""
    path = visit.metadata_dicoms
    records = read_metadata(path)
    if not isinstance(records, list):
        raise _malformed(path, "not a JSON array")
    for number, record in enumerate(records, 1):
        problem = (
            "not a JSON object" if not isinstance(record, dict)
            else f"fields {sorted(record)}, not {list(DICOM_FIELDS)}" if set(record) != set(DICOM_FIELDS)
            else "'path' is not a string" if not isinstance(record.get("path"), str)
            else "'md5' is not an md5 digest" if not (isinstance(record.get("md5"), str)
                                                      and _MD5.fullmatch(record["md5"]))
            else "'size' is not a number of bytes" if not _is_size(record.get("size"))
            else next((f"tag {tag} is missing or not a string, integer or list of strings"
                       for tag in EXPORTED_TAGS if not _is_tag_value(record.get(tag))), None)
        )
        if problem:
            raise _malformed(path, f"entry {number}: {problem}")
    return records


def expected_md5(visit: Visit) -> str | None:
    """The md5 recorded in the archive's ``.md5sum``, if there is one."""
    try:
        text = visit.md5sum.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise IcfError(f"{visit.md5sum}: unreadable ({exc})") from None
    fields = text.split()
    if len(fields) != 2 or fields[1] != visit.tarball.name or len(fields[0]) != 32:
        raise IcfError(f"{visit.md5sum}: not an md5sum line for {visit.tarball.name}")
    return fields[0].lower()


def checked_member_path(entry: TarEntry, top: str, seen: set[str], name: str) -> str:
    """The member's path if it is safe and new, else IcfError."""
    parts = entry.path.rstrip("/").split("/") if entry.is_dir else entry.path.split("/")
    bad = (
        entry.path.startswith("/") or parts[0] != top
        or any(part in ("", ".", "..") for part in parts)
        or (not entry.is_dir and len(parts) < 2)
    )
    if bad:
        raise IcfError(f"{name}: member {entry.path!r} is not a relative path under {top}/ "
                       "(archive not made by make_studyvisit_archive, or tampered with)")
    path = "/".join(parts)
    if path in seen:
        raise IcfError(f"{name}: member {entry.path!r} appears twice")
    seen.add(path)
    return path


def describe_member(read: Callable[[int], bytes]) -> tuple[str, dict | None]:
    """(md5, technical tags or None if not DICOM) of a member's content."""
    md5 = hashlib.md5()

    def hashed(n: int) -> bytes:
        data = read(n)
        md5.update(data)
        return data

    try:
        tags = read_header(hashed).technical_tags()
    except NotDicom:
        tags = None
    while hashed(1 << 20):
        pass
    return md5.hexdigest(), tags


def deposit_metadata(visit: Visit, force: bool = False,
                     progress: Callable[[Iterable, int], Iterable] = lambda items, total: items
                     ) -> MetadataSummary:
    if not visit.tarball.is_file():
        raise IcfError(f"{visit.tarball}: no such archive")
    if visit.metadata_tarball.exists() and not force:
        raise IcfError(f"{visit.metadata_tarball}: exists already (use --force to replace "
                       f"it and {visit.metadata_dicoms.name})")
    recorded = expected_md5(visit)
    name = str(visit.tarball)
    members = dicoms = 0
    seen: set[str] = set()
    with doing("reading the archive"):
        raw = open(visit.tarball, "rb")
    with raw, PartialFile(visit.metadata_dicoms) as listing, \
            PartialFile(visit.metadata_tarball) as tarball_json, \
            doing("reading the archive, writing the metadata", visit.study_dir):
        source = HashingReader(raw)
        out = listing.file
        out.write(b"[")
        for entry, read in progress(iter_tar(source, name), None):
            path = checked_member_path(entry, visit.archive_top, seen, name)
            if entry.is_dir:
                continue
            members += 1
            md5, tags = describe_member(read)
            if tags is None:
                continue
            record = {"path": path, "md5": md5, "size": entry.size, **tags}
            out.write(b",\n" if dicoms else b"\n")
            out.write(json.dumps(record, ensure_ascii=False).encode("utf-8"))
            dicoms += 1
        out.write(b"\n]\n")
        digest = source.md5.hexdigest()
        if recorded is not None and recorded != digest:
            raise IcfError(f"{name}: archive corrupted: md5 {digest} but {visit.md5sum.name} says {recorded}")
        tarball_json.file.write(json_bytes({
            "size": source.size, "md5": digest,
            "dspath": visit.dataset_tar_path, "storepath": visit.store_tar_path,
        }))
        with signals_held():
            listing.commit(overwrite=True)
            tarball_json.commit(overwrite=force)
    if members > dicoms:
        log.info("%d of %d files in the archive are not DICOM and are not listed", members - dicoms, members)
    return MetadataSummary(members, dicoms, source.size, digest)
