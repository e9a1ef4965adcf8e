"""Fixity: prove that a visit's files in the store still say what they said.

One pass over the archive re-hashes it against ``<visit>_dicom.tar.md5sum``
and ``<visit>_metadata_tarball.json`` (md5, size, ``dspath``,
``storepath``), and re-derives every member's record of
``<visit>_metadata_dicoms.json`` from the archive: md5, size and every
exported tag (a DICOM member missing from the list, or a listed one missing
from the archive, is a mismatch too). If the dataset deposit exists, it
must be exactly what the metadata and the store URL give (see
:func:`icf.dataset.deposit_problems`). A malformed or unreadable file is a
mismatch, not a crash.

Each problem is reported as ``<study>/<visit>: <file>: <what>``.
"""

from __future__ import annotations

from typing import Iterator

from icf import IcfError, doing
from icf.dicom import EXPORTED_TAGS
from icf.metadata import (checked_member_path, describe_member, expected_md5, read_dicom_records,
                          read_tarball_record)
from icf.store import Visit
from icf.tarball import HashingReader, iter_tar


def archive_problems(visit: Visit) -> Iterator[str]:
    """Mismatches between the archive, its .md5sum and the two JSON files."""
    try:
        tarball = read_tarball_record(visit)
        listed = {record["path"]: record for record in read_dicom_records(visit)}
        recorded = expected_md5(visit)
    except IcfError as exc:
        yield str(exc)
        return
    if recorded is None:
        yield f"{visit.md5sum.name}: missing"
    for field, value in (("dspath", visit.dataset_tar_path), ("storepath", visit.store_tar_path)):
        if tarball[field] != value:
            yield f"{visit.metadata_tarball.name}: {field} is {tarball[field]!r}, but should be {value!r}"
    seen: set[str] = set()
    name = str(visit.tarball)
    try:
        with doing("reading the archive", visit.tarball), open(visit.tarball, "rb") as raw:
            source = HashingReader(raw)
            for entry, read in iter_tar(source, name):
                path = checked_member_path(entry, visit.archive_top, seen, name)
                if entry.is_dir:
                    continue
                md5, tags = describe_member(read)
                record = listed.pop(path, None)
                if record is None:
                    if tags is not None:
                        yield f"{path}: DICOM in the archive but not in {visit.metadata_dicoms.name}"
                    continue
                if (record["md5"], record["size"]) != (md5, entry.size):
                    yield (f"{path}: md5 {md5} size {entry.size} in the archive, but "
                           f"{record['md5']} size {record['size']} in {visit.metadata_dicoms.name}")
                for tag in EXPORTED_TAGS:
                    derived = tags.get(tag, "") if tags is not None else None
                    if record[tag] != derived:
                        yield (f"{path}: {tag} is {str(record[tag])[:200]!r} in "
                               f"{visit.metadata_dicoms.name}, but "
                               + ("the member is not DICOM" if derived is None
                                  else f"{str(derived)[:200]!r} in the archive"))
    except IcfError as exc:  # a missing or corrupt archive is a finding, not a crash
        yield str(exc)
        return
    digest = source.md5.hexdigest()
    if recorded is not None and recorded != digest:
        yield f"{visit.tarball.name}: md5 is {digest}, {visit.md5sum.name} says {recorded}"
    if (tarball["md5"], tarball["size"]) != (digest, source.size):
        yield (f"{visit.tarball.name}: md5 {digest} size {source.size}, but "
               f"{visit.metadata_tarball.name} says {tarball['md5']} size {tarball['size']}")
    for path in listed:
        yield f"{path}: listed in {visit.metadata_dicoms.name} but not in the archive"


def verify(visit: Visit, store_url: str) -> list[str]:
    """Every problem found with ``visit``, each prefixed with ``<study>/<visit>``;
    ``store_url`` is the URL the deposit was made for."""
    if not any(path.exists() for path in (*visit.archive_files, *visit.metadata_files)):
        raise IcfError(f"{visit.tarball}: no such archive and no metadata: nothing to verify")
    problems = list(archive_problems(visit))
    if visit.deposit_refs.exists() or visit.deposit_repo_export.exists():
        from icf.dataset import deposit_problems

        problems.extend(deposit_problems(visit, store_url))
    return [f"{visit.study}/{visit.visit}: {problem}" for problem in problems]
