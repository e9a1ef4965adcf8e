"""Step 2: from a visit's TAR, write ``<visit>_metadata_tarball.json`` and
``<visit>_metadata_dicoms.json`` (formats: :mod:`icf.records`) in one
sequential pass.

The archive is read once (:class:`ArchiveScan`, which ``verify_visit`` uses
too): its md5 and size, every member's md5 and size and every DICOM
member's technical tags (:data:`icf.dicom.EXPORTED_TAGS`, nothing else) all
come from that read. Members are checked as they go by: only regular files
and directories under ``<study>_<visit>/``, with relative, unique paths free
of ``.`` and ``..`` components; anything else means the archive was not made
by step 1 or was tampered with, and nothing is written. If
``<visit>_dicom.tar.md5sum`` exists and disagrees, the archive is corrupted
and nothing is written.

The DICOM list streams into its output file, so memory does not grow with
the visit. The two files are committed together: the DICOM list first, the
tarball file last; the tarball file's presence marks a complete set (a lone
DICOM list is an interrupted run's, and is replaced).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

from icf import IcfError, Progress, doing, no_progress
from icf.dicom import NotDicom, read_header
from icf.output import PartialFile, signals_held
from icf.records import DicomListWriter, DicomRecord, TagValue, TarballRecord, read_md5sum
from icf.store import Visit, member_path_problem
from icf.tarball import Hashing, MemberContent, iter_tar

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


@dataclass(frozen=True)
class ScannedMember:
    """A file member of a visit's archive: path, size, md5, and its
    exported tags, or None if it is not DICOM."""

    path: str
    size: int
    md5: str
    tags: dict[str, TagValue] | None

    def record(self) -> DicomRecord:
        """Its entry in the DICOM list (for a DICOM member)."""
        return DicomRecord(self.path, self.md5, self.size, self.tags or {})


class ArchiveScan:
    """One sequential pass over ``visit``'s TAR.

    Iterating yields a :class:`ScannedMember` per file member, in archive
    order; a member path that step 1 would never write (outside
    ``<study>_<visit>/``, absolute, with ``.``/``..``, twice) and every
    reading or format problem is IcfError naming the archive. Once the
    iteration is complete, :attr:`md5` and :attr:`size` are the whole
    file's.
    """

    def __init__(self, visit: Visit):
        self.visit = visit
        self._hashing: Hashing | None = None

    def __iter__(self) -> Iterator[ScannedMember]:
        name, top = str(self.visit.tarball), self.visit.archive_top
        seen: set[str] = set()
        with doing("reading the archive", self.visit.tarball), open(self.visit.tarball, "rb") as raw:
            self._hashing = source = Hashing(raw)
            for entry, content in iter_tar(source, name):
                if problem := member_path_problem(entry.path, top, entry.is_dir):
                    raise IcfError(f"{name}: member {entry.path!r} {problem} "
                                   "(archive not made by make_studyvisit_archive, or tampered with)")
                path = entry.path.rstrip("/")
                if path in seen:
                    raise IcfError(f"{name}: member {entry.path!r} appears twice")
                seen.add(path)
                if not entry.is_dir:
                    yield ScannedMember(path, entry.size, *_described(content))

    @property
    def md5(self) -> str:
        assert self._hashing is not None, "scan not run"
        return self._hashing.hexdigest()

    @property
    def size(self) -> int:
        assert self._hashing is not None, "scan not run"
        return self._hashing.size


def _described(content: MemberContent) -> tuple[str, dict[str, TagValue] | None]:
    """(md5, exported tags or None if not DICOM) of a member's content."""
    hashing = Hashing(content)
    try:
        tags = read_header(hashing.read).technical_tags()
    except NotDicom:
        tags = None
    hashing.read_to_end()
    return hashing.hexdigest(), tags


def deposit_metadata(visit: Visit, force: bool = False, progress: Progress = no_progress) -> MetadataSummary:
    if not visit.tarball.is_file():
        raise IcfError(f"{visit.tarball}: no such archive")
    if visit.metadata_tarball.exists() and not force:
        raise IcfError(f"{visit.metadata_tarball}: exists already (use --force to replace "
                       f"it and {visit.metadata_dicoms.name})")
    recorded = read_md5sum(visit)
    scan = ArchiveScan(visit)
    members = 0
    with PartialFile(visit.metadata_dicoms) as listing, \
            PartialFile(visit.metadata_tarball) as tarball_json, \
            doing("writing the metadata", visit.study_dir):
        dicoms = DicomListWriter(listing.file)
        for member in progress(scan, None):
            members += 1
            if member.tags is not None:
                dicoms.add(member.record())
        dicoms.close()
        if recorded is not None and recorded != scan.md5:
            raise IcfError(f"{visit.tarball}: archive corrupted: md5 {scan.md5} "
                           f"but {visit.md5sum.name} says {recorded}")
        tarball_json.file.write(TarballRecord.of(visit, scan.size, scan.md5).json())
        with signals_held():
            listing.commit(overwrite=True)
            tarball_json.commit(overwrite=force)
    if members > dicoms.count:
        log.info("%d of %d files in the archive are not DICOM and are not listed",
                 members - dicoms.count, members)
    return MetadataSummary(members, dicoms.count, scan.size, scan.md5)
