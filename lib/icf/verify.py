"""Fixity: prove that a visit's files in the store still say what they said.

One pass over the archive re-hashes it against ``<visit>_dicom.tar.md5sum``
and ``<visit>_metadata_tarball.json``, and every member against
``<visit>_metadata_dicoms.json`` (md5 and size; a DICOM member missing from
the list, or a listed one missing from the archive, is a mismatch too). If
the dataset deposit exists, every DICOM's annex key in it must match the
list (see :func:`icf.dataset.deposit_problems`).

Each problem is reported as ``<study>/<visit>: <file>: <what>``.
"""

from __future__ import annotations

from typing import Iterator

from icf import IcfError
from icf.metadata import checked_member_path, describe_member, expected_md5
from icf.output import read_json
from icf.store import Visit
from icf.tarball import HashingReader, iter_tar


def archive_problems(visit: Visit) -> Iterator[str]:
    """Mismatches between the archive, its .md5sum and the two JSON files."""
    tarball = read_json(visit.metadata_tarball)
    listed = {record["path"]: record for record in read_json(visit.metadata_dicoms)}
    recorded = expected_md5(visit)
    if recorded is None:
        yield f"{visit.md5sum.name}: missing"
    seen: set[str] = set()
    name = str(visit.tarball)
    try:
        with open(visit.tarball, "rb") as raw:
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
                elif (record["md5"], record["size"]) != (md5, entry.size):
                    yield (f"{path}: md5 {md5} size {entry.size} in the archive, but "
                           f"{record['md5']} size {record['size']} in {visit.metadata_dicoms.name}")
    except FileNotFoundError:
        raise IcfError(f"{visit.tarball}: missing") from None
    except IcfError as exc:  # a corrupt archive is a finding, not a crash
        yield str(exc)
        return
    digest = source.md5.hexdigest()
    if recorded is not None and recorded != digest:
        yield f"{visit.tarball.name}: md5 is {digest}, {visit.md5sum.name} says {recorded}"
    if (tarball.get("md5"), tarball.get("size")) != (digest, source.size):
        yield (f"{visit.tarball.name}: md5 {digest} size {source.size}, but "
               f"{visit.metadata_tarball.name} says {tarball.get('md5')} size {tarball.get('size')}")
    for path in listed:
        yield f"{path}: listed in {visit.metadata_dicoms.name} but not in the archive"


def verify(visit: Visit) -> list[str]:
    """Every problem found with ``visit``, each prefixed with ``<study>/<visit>``."""
    problems = list(archive_problems(visit))
    if visit.deposit_refs.exists() or visit.deposit_repo_export.exists():
        from icf.dataset import deposit_problems

        problems.extend(deposit_problems(visit))
    return [f"{visit.study}/{visit.visit}: {problem}" for problem in problems]
