"""Step 2: from a visit's TAR, write ``<visit>_metadata_tarball.json`` and
``<visit>_metadata_dicoms.json`` (formats: :mod:`icf.records`) in one
sequential pass.

The archive is read once (:class:`ArchiveScan`, which ``verify_visit`` uses
too): its md5 and size, every member's md5 and size and every DICOM
member's header (:func:`icf.dicom.all_tags`, of which only the exported
tags and the derived fields leave the archive) all come from that read.
Members are checked as they go by: only regular files and directories under
``<study>_<visit>/``, with relative, unique paths free of ``.`` and ``..``
components; anything else means the archive was not made by step 1 or was
tampered with, and nothing is written. If ``<visit>_dicom.tar.md5sum``
exists and disagrees, the archive is corrupted and nothing is written.

The DICOM list streams into its output file. The two files are committed
together: the DICOM list first, the tarball file last; the tarball file's
presence marks a complete set (a lone DICOM list is an interrupted run's,
and is replaced).

The visit summary in the tarball file (:class:`VisitSummary`) lists the
image series (files of kind ``image``, grouped by their series key, ordered
by SeriesNumber, then key) and the findings, in the order of
:data:`icf.records.FINDING_CODES`, each only when it applies:

- ``mixed-studies``: the DICOM files carry more than one StudyInstanceUID
  (0020,000D) (count: studies; paths: the first file of each study);
- ``duplicate-instance-different-bytes``, ``duplicate-instance-same-bytes``:
  a file has the SOPInstanceUID (0008,0018) of an earlier file (in archive
  order) and different, or the same, bytes (md5) as that earlier file
  (count and paths: the later files);
- ``instance-gaps``: in an image series, the integer InstanceNumbers
  (0020,0013) repeat, or do not run from their smallest to their largest
  without a gap (count: series; paths: the series' first file);
- ``not-dicom``: files that are not DICOM (they stay in the archive but in
  no list or dataset);
- ``no-timestamp``: DICOM files without a usable date and time (see
  :meth:`icf.dicom.DicomHeader.timestamp`; step 1 gave them the visit's latest);
- ``not-depositable``: DICOM files whose path step 3 refuses
  (:func:`icf.annex.deposit_refusal`).

Memory grows with the visit by a few hundred bytes per DICOM (an instance
digest and md5, and InstanceNumbers per series), to find duplicates and
gaps, and by one record per series; the lists themselves stream.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator

from icf import IcfError, Progress, doing, no_progress
from icf.annex import deposit_refusal
from icf.dicom import DicomHeader, Identity, NotDicom, read_header
from icf.output import PartialFile, signals_held
from icf.records import (
    FINDING_CODES,
    FINDING_PATHS,
    INTEGRITY_CODES,
    DicomListWriter,
    DicomRecord,
    Finding,
    SeriesSummary,
    TarballRecord,
    read_md5sum,
    series_order,
)
from icf.store import Visit, member_path_problem, series_key
from icf.tarball import Hashing, MemberContent, iter_tar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetadataSummary:
    """What step 2 reports: how many file members and DICOMs it listed, and
    the record it wrote for the archive."""

    members: int
    dicoms: int
    record: TarballRecord

    def __str__(self) -> str:
        findings = len(self.record.findings)
        return (f"{self.dicoms} DICOMs of {self.members} files listed, {len(self.record.series)} image "
                f"series, {findings or 'no'} finding{'' if findings == 1 else 's'}, "
                f"archive {self.record.size} bytes, md5 {self.record.md5}")


@dataclass(frozen=True)
class ScannedMember:
    """A file member of a visit's archive: path, size, where its content
    starts in the TAR, md5, and its DICOM header, or None if it is not DICOM."""

    path: str
    size: int
    offset: int
    md5: str
    header: DicomHeader | None

    def record(self, study: str, identity: Identity | None = None) -> DicomRecord:
        """Its entry in the DICOM list (for a DICOM member of ``study``;
        ``identity``: its header's, if already known)."""
        assert self.header is not None
        identity = identity or self.header.identity()
        return DicomRecord(self.path, self.md5, self.size, self.offset, series_key(study, identity.series),
                           identity.kind, identity.frames, identity.instance_number,
                           self.header.technical_tags())


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
                    yield ScannedMember(path, entry.size, entry.offset, *_described(content))

    @property
    def md5(self) -> str:
        assert self._hashing is not None, "scan not run"
        return self._hashing.hexdigest()

    @property
    def size(self) -> int:
        assert self._hashing is not None, "scan not run"
        return self._hashing.size


def _described(content: MemberContent) -> tuple[str, DicomHeader | None]:
    """(md5, header or None if not DICOM) of a member's content."""
    hashing = Hashing(content)
    try:
        header: DicomHeader | None = read_header(hashing.read)
    except NotDicom:
        header = None
    hashing.read_to_end()
    return hashing.hexdigest(), header


@dataclass
class _Paths:
    """How many files something applies to, and the first few of them."""

    count: int = 0
    paths: list[str] = field(default_factory=list)

    def add(self, path: str) -> None:
        self.count += 1
        if len(self.paths) < FINDING_PATHS:
            self.paths.append(path)


@dataclass
class _Series:
    first: DicomRecord
    files: int = 0
    frames: int = 0
    instances: list[int] = field(default_factory=list)


class VisitSummary:
    """The image series and findings of a visit (see the module docstring),
    built by :meth:`add` from the scanned members in archive order."""

    def __init__(self, study: str):
        self.study = study
        self.series: dict[str, _Series] = {}
        self.studies: dict[bytes, str | None] = {}  # digest of StudyInstanceUID -> first file (first 10)
        self.instances: dict[bytes, str] = {}  # digest of SOPInstanceUID -> md5 of the first file
        self.flagged: dict[str, _Paths] = defaultdict(_Paths)

    def add(self, member: ScannedMember) -> DicomRecord | None:
        """Count ``member`` in; its DICOM record, or None if it is not DICOM."""
        if member.header is None:
            self.flagged["not-dicom"].add(member.path)
            return None
        identity = member.header.identity()
        record = member.record(self.study, identity)
        if identity.study and (study := _digest(identity.study)) not in self.studies:
            self.studies[study] = member.path if len(self.studies) < FINDING_PATHS else None
        if identity.sop_instance:
            instance = _digest(identity.sop_instance)
            if instance in self.instances:
                same = self.instances[instance] == member.md5
                self.flagged[f"duplicate-instance-{'same' if same else 'different'}-bytes"].add(member.path)
            else:
                self.instances[instance] = member.md5
        if member.header.timestamp() is None:
            self.flagged["no-timestamp"].add(member.path)
        if deposit_refusal(member.path):
            self.flagged["not-depositable"].add(member.path)
        if record.kind == "image":
            series = self.series.setdefault(record.series, _Series(record))
            series.files += 1
            series.frames += record.frames
            if isinstance(record.instance, int):
                series.instances.append(record.instance)
        return record

    def _ordered(self) -> list[tuple[str, _Series]]:
        """The image series, by SeriesNumber (numbers first), then key."""
        return sorted(self.series.items(),
                      key=lambda item: (series_order(item[1].first.tags["SeriesNumber"]), item[0]))

    def image_series(self) -> list[SeriesSummary]:
        return [SeriesSummary(key, s.first.tags, s.files, s.frames) for key, s in self._ordered()]

    def findings(self) -> list[Finding]:
        """The findings that apply, in :data:`FINDING_CODES` order."""
        found = dict(self.flagged)
        if len(self.studies) > 1:
            found["mixed-studies"] = _Paths(len(self.studies), [p for p in self.studies.values() if p])
        gaps = _Paths()
        described = []
        for _, series in self._ordered():
            if problem := _instance_problem(series.instances):
                gaps.add(series.first.path)
                described.append(f"series {series.first.tags['SeriesNumber'] or '(no number)'}: {problem}")
        if gaps.count:
            found["instance-gaps"] = gaps
        messages = {
            "mixed-studies": "{count} studies (StudyInstanceUID) in one visit",
            "duplicate-instance-different-bytes":
                "{count} file(s) repeat the SOPInstanceUID of an earlier file, with different bytes",
            "duplicate-instance-same-bytes":
                "{count} file(s) repeat the SOPInstanceUID of an earlier file, with the same bytes",
            "instance-gaps": "{count} image series with gaps or repeats in InstanceNumber: "
                             + "; ".join(described[:5]) + ("; ..." if len(described) > 5 else ""),
            "not-dicom": "{count} file(s) are not DICOM: archived, but in no list or dataset",
            "no-timestamp": "{count} DICOM file(s) have no usable date and time",
            "not-depositable": "{count} DICOM file(s) cannot be deposited as a dataset "
                               "(a path with '&', '#', a line break or a .git component)",
        }
        return [Finding(code, found[code].count, messages[code].format(count=found[code].count),
                        found[code].paths)
                for code in FINDING_CODES if code in found]


def _digest(uid: str) -> bytes:
    return hashlib.md5(uid.encode()).digest()


def _instance_problem(numbers: list[int]) -> str:
    """How integer InstanceNumbers fall short of running from their least
    to their largest once each ("" if they do)."""
    if not numbers:
        return ""
    unique = set(numbers)
    missing = max(unique) - min(unique) + 1 - len(unique)
    repeated = len(numbers) - len(unique)
    parts = [f"{missing} missing" if missing else "", f"{repeated} repeated" if repeated else ""]
    return ", ".join(part for part in parts if part)


def deposit_metadata(visit: Visit, force: bool = False, strict: bool = False,
                     progress: Progress = no_progress) -> MetadataSummary:
    """Write the visit's two metadata files; with ``strict``, a data-integrity
    finding (:data:`icf.records.INTEGRITY_CODES`) is an error and nothing is written."""
    if not visit.tarball.is_file():
        raise IcfError(f"{visit.tarball}: no such archive")
    if visit.metadata_tarball.exists() and not force:
        raise IcfError(f"{visit.metadata_tarball}: exists already (use --force to replace "
                       f"it and {visit.metadata_dicoms.name})")
    recorded = read_md5sum(visit)
    scan = ArchiveScan(visit)
    summary = VisitSummary(visit.study)
    members = 0
    with PartialFile(visit.metadata_dicoms) as listing, \
            PartialFile(visit.metadata_tarball) as tarball_json, \
            doing("writing the metadata", visit.study_dir):
        dicoms = DicomListWriter(listing.file)
        for member in progress(scan, None):
            members += 1
            if (dicom := summary.add(member)) is not None:
                dicoms.add(dicom)
        dicoms.close()
        if recorded is not None and recorded != scan.md5:
            raise IcfError(f"{visit.tarball}: archive corrupted: md5 {scan.md5} "
                           f"but {visit.md5sum.name} says {recorded}")
        record = TarballRecord.of(visit, scan.size, scan.md5, summary.image_series(), summary.findings())
        for finding in record.findings:
            log.warning("%s: %s: %s", finding.code, finding.message, ", ".join(map(repr, finding.paths)))
        integrity = [f.code for f in record.findings if f.code in INTEGRITY_CODES]
        if strict and integrity:
            raise IcfError(f"{visit.tarball}: {' and '.join(integrity)} (--strict: nothing written)")
        tarball_json.file.write(record.json())
        with signals_held():
            listing.commit(overwrite=True)
            tarball_json.commit(overwrite=force)
    return MetadataSummary(members, dicoms.count, record)
