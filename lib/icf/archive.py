"""Step 1: pack a visit's directory into ``<visit>_dicom.tar`` plus ``.md5sum``.

Member mtimes come from the DICOM headers (see
:meth:`icf.dicom.DicomHeader.timestamp`), so the archive does not depend on
when or where the files were copied. Files without a usable DICOM timestamp
(non-DICOM files, DICOMDIR, undated objects) and the archive file itself get
the latest DICOM timestamp of the visit; with none at all, 0.

Symlinks to regular files are archived as the files they point to; those
that lead outside the input directory are named in a warning, since their
content is not where the visit's files are.

The archive is written to ``.<visit>_dicom.tar.partial`` in the study
directory, hashed while it is written, and linked into place only when
complete, never over an existing archive. The ``.md5sum`` is put in place
just before the archive, so a complete archive always has one.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from icf import IcfError, Progress, doing, no_progress
from icf.annex import deposit_refusal
from icf.dicom import TIMESTAMP_TAGS, NotDicom, read_header
from icf.output import PartialFile, signals_held
from icf.records import md5sum_line
from icf.store import Visit
from icf.tarball import MAX_MTIME, Hashing, InputFile, open_regular, write_archive

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveSummary:
    """What step 1 reports: files and DICOMs archived, the archive's size
    and md5, and how many symlinks led outside the input directory."""

    files: int
    dicoms: int
    size: int
    md5: str
    outside_links: int

    def __str__(self) -> str:
        return (f"{self.files} files ({self.dicoms} DICOMs, {self.files - self.dicoms} other files), "
                f"{self.size} bytes, md5 {self.md5}")


def dicom_timestamp(item: InputFile) -> tuple[bool, int | None]:
    """(is DICOM, its timestamp or None); a timestamp a TAR cannot hold is an error."""
    with open_regular(item.source) as stream:
        try:
            timestamp = read_header(stream.read, TIMESTAMP_TAGS).timestamp()
        except NotDicom:
            return False, None
    if timestamp is not None and not 0 <= timestamp <= MAX_MTIME:
        when = "before 1970" if timestamp < 0 else "after 2242"
        raise IcfError(f"{item.source}: DICOM date is {when}, which a TAR header cannot hold")
    return True, timestamp


def make_archive(visit: Visit, input_dir: Path, progress: Progress = no_progress) -> ArchiveSummary:
    """Archive ``input_dir`` as ``visit``'s TAR; ``progress(items, total)``
    wraps the two per-file loops (e.g. in a progress bar)."""
    _check_output_outside(visit, input_dir)
    if visit.tarball.exists():
        raise IcfError(f"{visit.tarball}: archive exists already, not overwritten")
    files = collect_input(input_dir, visit.archive_top)

    found = [dicom_timestamp(item) for item in progress(files, len(files))]
    dated = [timestamp for _, timestamp in found if timestamp is not None]
    latest = max(dated, default=0)
    if not dated:
        log.warning("none of the %d files has a usable DICOM timestamp; all get 1970-01-01 00:00:00 UTC",
                    len(files))
    elif len(dated) < len(files):
        log.warning(
            "%d of %d files have no usable DICOM timestamp; they get the latest one, %s",
            len(files) - len(dated), len(files),
            datetime.fromtimestamp(latest, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    mtimes = [latest if timestamp is None else timestamp for _, timestamp in found]
    outside = [item for item in files if item.outside is not None]
    if outside:
        log.warning("followed %d symlink(s) to files outside the input directory and archived those files: %s",
                    len(outside), _some([f"{item.source} -> {item.outside}" for item in outside]))
    refused = [f"{item.member!r} {why}" for item in files if (why := deposit_refusal(item.member))]
    if refused:
        log.warning("%d file(s) archived, but the visit cannot be deposited as it is "
                    "(see the admin guide): %s", len(refused), _some(refused))

    with doing("creating the study directory"):
        visit.study_dir.mkdir(parents=True, exist_ok=True)
    with PartialFile(visit.tarball) as tar, PartialFile(visit.md5sum) as md5sum, \
            doing("writing the archive", tar.path):
        if visit.tarball.exists():  # made by a run that held the lock before us
            raise IcfError(f"{visit.tarball}: archive exists already, not overwritten")
        writer = Hashing(tar.file)
        for _ in progress(write_archive(files, mtimes, writer), len(files)):
            pass
        digest = writer.hexdigest()
        tar.file.flush()
        os.utime(tar.path, (latest, latest))
        md5sum.file.write(md5sum_line(visit, digest))
        with signals_held():
            md5sum.commit(overwrite=True)
            tar.commit(overwrite=False)
    return ArchiveSummary(len(files), sum(is_dicom for is_dicom, _ in found),
                          writer.size, digest, len(outside))


def collect_input(input_dir: Path, top: str) -> list[InputFile]:
    """Every regular file under ``input_dir``, sorted, as archive members
    under ``top/``; symlinks to regular files count as regular files.

    Raises IcfError naming every path that cannot be archived faithfully:
    unreadable directories, FIFOs, sockets, devices, dangling or looping
    symlinks, symlinks to directories, names that are not valid UTF-8.
    Nothing is opened here, so special files cannot block.
    """
    if not input_dir.exists():
        raise IcfError(f"{input_dir}: input directory does not exist")
    if not input_dir.is_dir():
        raise IcfError(f"{input_dir}: input is not a directory")
    found: list[tuple[tuple[bytes, ...], InputFile]] = []
    problems: list[str] = []
    _walk(input_dir, top, found, problems)
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise IcfError(f"cannot archive faithfully: {shown}{more}")
    if not found:
        raise IcfError(f"{input_dir}: no regular file to archive")
    found.sort(key=lambda item: item[0])
    return [item for _, item in found]


def _walk(input_dir: Path, top: str, found: list[tuple[tuple[bytes, ...], InputFile]],
          problems: list[str]) -> None:
    """Append every regular file under ``input_dir`` to ``found``, keyed by
    its path components as UTF-8 (the archive's sort key), and every path
    that cannot be archived to ``problems``, in depth-first order.

    The walk keeps its own stack of open levels (each a sorted listing, so
    no directory stays open), not Python's: a tree deeper than the
    recursion limit is as archivable as any other. Names are read as bytes
    and decoded as UTF-8 whatever the locale, so the archive does not
    depend on it (a Latin-1 locale would otherwise turn ``ä`` into ``Ã¤``).
    """
    root = input_dir.resolve()
    stack: list[tuple[tuple[bytes, ...], Iterator[os.DirEntry[bytes]]]] = []

    def enter(directory: Path, parts: tuple[bytes, ...]) -> None:
        try:
            entries = sorted(os.scandir(os.fsencode(directory)), key=lambda e: e.name)
        except OSError as exc:
            problems.append(f"{directory}: cannot list directory ({exc.strerror})")
            return
        stack.append((parts, iter(entries)))

    enter(input_dir, ())
    while stack:
        parts, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        path = Path(os.fsdecode(entry.path))
        try:
            name = entry.name.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{entry.path!r}: file name is not valid UTF-8")
            continue
        try:
            info = os.stat(entry.path)  # follows symlinks
        except OSError as exc:
            kind = "dangling or looping symlink" if entry.is_symlink() else exc.strerror
            problems.append(f"{path}: {kind}")
            continue
        if stat.S_ISDIR(info.st_mode):
            if entry.is_symlink():
                problems.append(f"{path}: symlink to a directory")
            else:
                enter(path, parts + (entry.name,))
        elif stat.S_ISREG(info.st_mode):
            member = "/".join([top, *(p.decode("utf-8") for p in parts), name])
            target = Path(os.path.realpath(path)) if entry.is_symlink() else None
            outside = target if target is not None and root not in target.parents else None
            found.append((parts + (entry.name,), InputFile(path, member, info.st_size, outside)))
        else:
            problems.append(f"{path}: not a regular file (FIFO, socket or device)")


def _some(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``names``, then how many more there are."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _check_output_outside(visit: Visit, input_dir: Path) -> None:
    study_dir, source = visit.study_dir.resolve(), input_dir.resolve()
    if study_dir == source or source in study_dir.parents:
        raise IcfError(f"{visit.study_dir}: output location is inside the input directory {input_dir}")
