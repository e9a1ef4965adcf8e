"""Fixity: prove that a visit's files in the store still say what they said.

One pass over the archive (:class:`icf.metadata.ArchiveScan`) re-hashes it
against ``<visit>_dicom.tar.md5sum`` and ``<visit>_metadata_tarball.json``
(md5, size, ``dspath``, ``storepath``), and re-derives every member's record
of ``<visit>_metadata_dicoms.json`` from the archive: md5, size and every
exported tag (a DICOM member missing from the list, or a listed one missing
from the archive, is a mismatch too). If the dataset deposit exists, it must
be exactly what the metadata and the store URL give (:func:`deposit_problems`,
reading the deposit files without cloning). A malformed or unreadable file
is a mismatch, not a crash.

Each problem is reported as ``<study>/<visit>: <file>: <what>``.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from icf import IcfError, doing
from icf.annex import branch_logs, dataset_config_files, dataset_uuids, deposit_description
from icf.dataset import visit_files
from icf.git import isolated_git_env, run_git
from icf.metadata import ArchiveScan, VisitSummary
from icf.records import (
    DicomListWriter,
    TarballRecord,
    md5sum_line,
    read_dicom_records,
    read_md5sum,
    read_tarball_record,
)
from icf.store import Visit
from icf.tarball import latest_member_mtime


def archive_problems(visit: Visit) -> Iterator[str]:
    """Mismatches between the archive, its .md5sum and the two JSON files:
    every value, then (values agreeing) every byte, since steps 1 and 2
    write the same bytes for the same archive (a file whose entries were
    reordered or reformatted by hand says the same, but is not theirs)."""
    expected: dict[Path, bytes] = {}
    problems = 0
    for problem in _value_problems(visit, expected):
        problems += 1
        yield problem
    for path, content in expected.items() if problems == 0 else ():
        with doing("reading", path):
            if path.read_bytes() != content:
                yield f"{path.name}: its values agree with the archive, but not its bytes (edited by hand?)"


def _value_problems(visit: Visit, expected: dict[Path, bytes]) -> Iterator[str]:
    """The value mismatches; ``expected`` gets the bytes of the three files
    as the archive gives them."""
    try:
        tarball = read_tarball_record(visit)
        listed = {record.path: record for record in read_dicom_records(visit)}
        recorded = read_md5sum(visit)
    except IcfError as exc:
        yield str(exc)
        return
    if recorded is None:
        yield f"{visit.md5sum.name}: missing"
    dicoms_name = visit.metadata_dicoms.name
    scan = ArchiveScan(visit)
    summary = VisitSummary(visit.study)
    listing = io.BytesIO()
    dicoms = DicomListWriter(listing)
    try:
        for member in scan:
            derived = summary.add(member)
            if derived is not None:
                dicoms.add(derived)
            record = listed.pop(member.path, None)
            if record is None:
                if derived is not None:
                    yield f"{member.path}: DICOM in the archive but not in {dicoms_name}"
            elif derived is None:
                yield f"{member.path}: listed in {dicoms_name}, but the member is not DICOM"
            elif (record.md5, record.size) != (derived.md5, derived.size):
                yield (f"{member.path}: md5 {derived.md5} size {derived.size} in the archive, but "
                       f"{record.md5} size {record.size} in {dicoms_name}")
            else:
                yield from _field_problems(f"{member.path}: ", record.json_value(), derived.json_value(),
                                           dicoms_name)
    except IcfError as exc:  # a missing or corrupt archive is a finding, not a crash
        yield str(exc)
        return
    dicoms.close()
    if recorded is not None and recorded != scan.md5:
        yield f"{visit.tarball.name}: md5 is {scan.md5}, {visit.md5sum.name} says {recorded}"
    derived_record = TarballRecord.of(visit, scan.size, scan.md5, summary.image_series(), summary.findings())
    yield from _field_problems("", tarball.json_value(), derived_record.json_value(),
                               visit.metadata_tarball.name)
    for path in listed:
        yield f"{path}: listed in {dicoms_name} but not in the archive"
    expected.update({visit.md5sum: md5sum_line(visit, scan.md5), visit.metadata_tarball: derived_record.json(),
                     visit.metadata_dicoms: listing.getvalue()})


def _field_problems(prefix: str, found: dict, derived: dict, name: str) -> Iterator[str]:
    """A line per field whose value in the file ``name`` differs from the
    one derived from the archive (values cut to 200 characters)."""
    for field, value in derived.items():
        if found[field] != value:
            yield (f"{prefix}{field} is {str(found[field])[:200]!r} in {name}, "
                   f"but {str(value)[:200]!r} in the archive")


def verify(visit: Visit, store_url: str) -> list[str]:
    """Every problem found with ``visit``, each prefixed with ``<study>/<visit>``;
    ``store_url`` is the URL the deposit was made for."""
    if not any(path.exists() for path in (*visit.archive_files, *visit.metadata_files)):
        raise IcfError(f"{visit.tarball}: no such archive and no metadata: nothing to verify")
    problems = list(archive_problems(visit))
    if visit.deposit_refs.exists() or visit.deposit_repo_export.exists():
        problems.extend(deposit_problems(visit, store_url))
    return [f"{visit.study}/{visit.visit}: {problem}" for problem in problems]


# -- reading a deposit back --------------------------------------------------


@dataclass(frozen=True)
class Deposit:
    """What the two deposit files hold, read without cloning: the files of
    the ``main`` and ``git-annex`` branches, path -> (mode, content)."""

    main: dict[str, tuple[str, bytes]]
    annex: dict[str, tuple[str, bytes]]


def read_deposit(visit: Visit) -> Deposit:
    """Read ``XDLRA--repo-export`` (a ZIP of a bare git repository) and
    check that ``XDLRA--refs`` names exactly the branches it holds. Four git
    processes, whatever the size. Anything unreadable (a damaged ZIP, a
    repository git cannot read, refs that are not refs) is IcfError."""
    name = visit.deposit_repo_export
    try:
        text = visit.deposit_refs.read_text(encoding="utf-8")
        refs = dict(line.split(" ", 1)[::-1] for line in text.splitlines() if " " in line)
    except (OSError, UnicodeDecodeError) as exc:
        raise IcfError(f"{visit.deposit_refs}: unreadable ({exc})") from None
    if "refs/heads/main" not in refs:
        raise IcfError(f"{visit.deposit_refs}: no refs/heads/main")
    env = isolated_git_env()
    with tempfile.TemporaryDirectory(prefix="icf-verify-") as bare:
        try:
            with zipfile.ZipFile(name) as archive:
                archive.extractall(bare)  # checks each file entry's header and CRC
                # but skips directory entries: open each, which reads its header
                # (bit rot there would go unnoticed); no content is read twice
                for entry in archive.infolist():
                    if entry.is_dir():
                        try:
                            archive.open(entry).close()
                        except zipfile.BadZipFile:
                            raise zipfile.BadZipFile(f"entry {entry.filename!r} is damaged") from None
        except Exception as exc:  # zipfile raises many kinds on damaged data
            raise IcfError(f"{name}: not a readable deposit ({type(exc).__name__}: {exc})") from None
        exported = dict(line.split(" ", 1)[::-1] for line in run_git(
            Path(bare), env, "for-each-ref", "--format=%(objectname) %(refname)").decode().splitlines())
        if {**exported, "HEAD": "@refs/heads/main"} != refs or text != _refs_text(refs):
            raise IcfError(f"{visit.deposit_refs}: names other commits than {name.name} holds "
                           "(an interrupted deposit? rerun deposit_visit_dataset --force)")
        try:
            return Deposit(*(_branch_files(Path(bare), env, branch) for branch in ("main", "git-annex")))
        except IcfError as exc:
            raise IcfError(f"{name}: not a readable deposit ({str(exc).replace(bare, '<repo>')})") from None


def _refs_text(refs: dict[str, str]) -> str:
    """``XDLRA--refs`` as datalad-annex writes it: ``<sha> <ref>`` lines
    sorted by ref, then ``@refs/heads/main HEAD``, no trailing newline."""
    lines = [f"{sha} {ref}" for ref, sha in sorted(refs.items()) if ref != "HEAD"]
    return "".join(line + "\n" for line in [*lines, f"{refs.get('HEAD')} HEAD"])


def _branch_files(repo: Path, env: dict[str, str], branch: str) -> dict[str, tuple[str, bytes]]:
    entries = [entry.split(b"\t", 1) for entry in
               run_git(repo, env, "ls-tree", "-r", "-z", f"refs/heads/{branch}").split(b"\0") if entry]
    files = [(path.decode("utf-8", "surrogateescape"), info.split()) for info, path in entries]
    blobs = run_git(repo, env, "cat-file", "--batch",
                    input=b"".join(info[2] + b"\n" for _, info in files))
    contents = {}
    at = 0  # walked by offset: slicing off each blob would copy the rest every time
    for path, info in files:
        end = blobs.find(b"\n", at)
        header = blobs[at:end if end >= 0 else len(blobs)]
        fields = header.split()
        if end < 0 or len(fields) != 3 or fields[1] != b"blob" or not fields[2].isdigit() or len(fields[2]) > 12:
            raise IcfError(f"{repo}: {branch}: {path!r} is not a file ({header[:80]!r})")
        size = int(fields[2])
        contents[path] = (info[0].decode(), blobs[end + 1:end + 1 + size])
        at = end + 2 + size
    return contents


_LOG_KINDS = {".log.web": "URL", ".log.met": "git-annex metadata", ".log": "location log"}


def _log_key(branch_path: str) -> str:
    """The key a git-annex branch file is about (``uuid.log``: ``uuid``)."""
    name = branch_path.rsplit("/", 1)[-1]
    suffix = next((suffix for suffix in _LOG_KINDS if name.endswith(suffix)), "")
    return name[:len(name) - len(suffix)]


def _differing_lines(found: bytes | None, expected: bytes) -> tuple[str, str]:
    """How a git-annex branch file differs, for a message: the lines each
    side has that the other lacks (all of them if only their order
    differs), each side's at most 200 characters."""
    ours = expected.decode("utf-8", "replace").split("\n")  # not splitlines: a stray \r must show
    if found is None:
        return "missing", repr("\n".join(ours)[:200])
    theirs = found.decode("utf-8", "replace").split("\n")
    extra, lacking = [line for line in theirs if line not in ours], [line for line in ours if line not in theirs]
    if not extra and not lacking:
        extra, lacking = theirs, ours
    shown, given = (repr("\n".join(lines)[:200]) if lines else "no other line" for lines in (extra, lacking))
    return shown, given


def deposit_problems(visit: Visit, store_url: str) -> Iterator[str]:
    """Everything in the deposit that differs from what the metadata JSON,
    the archive and ``store_url`` give: each annexed file's path and key,
    the dataset's own files, and every file of the git-annex branch (the
    archive's URL, each DICOM's archivist locator, each key's metadata and
    location, the remotes and UUIDs)."""
    try:
        deposit = read_deposit(visit)
        files = visit_files(visit, store_url)
        timestamp = latest_member_mtime(visit.tarball)
    except IcfError as exc:
        yield str(exc)
        return
    name = visit.deposit_refs.name
    uuids = dataset_uuids(visit)
    for path, content in dataset_config_files(uuids).items():
        if deposit.main.pop(path, None) != ("100644", content):
            yield f"{path}: missing or changed in the dataset deposit {name}"
    paths_of_key: dict[str, list[str]] = {}
    reported: set[str] = set()  # keys already named: their git-annex logs differ too
    for item in files:
        paths_of_key.setdefault(item.key, []).append(item.path)
        mode, target = deposit.main.pop(item.path, ("", b""))
        found_key = target.decode("utf-8", "replace").rsplit("/", 1)[-1]
        if not mode:
            reported.add(item.key)
            yield f"{item.path}: missing from the dataset deposit {name}"
        elif mode != "120000" or not target.endswith(f"/{item.key}/{item.key}".encode()):
            reported.update((item.key, found_key))
            yield f"{item.path}: key {found_key} in the dataset deposit, but {item.key} from the metadata"
    for path, (_, target) in deposit.main.items():
        reported.add(target.decode("utf-8", "replace").rsplit("/", 1)[-1])
        yield f"{path}: in the dataset deposit {name}, but not in the metadata"
    expected = dict(branch_logs(files, uuids, deposit_description(visit), timestamp))
    for path in [path for path in {*expected, *deposit.annex} if _log_key(path) in reported]:
        expected.pop(path, None)
        deposit.annex.pop(path, None)
    for path, content in expected.items():
        found = deposit.annex.pop(path, ("", None))[1]
        if found != content:
            about = ", ".join(paths_of_key.get(_log_key(path), [path]))
            what = next((kind for suffix, kind in _LOG_KINDS.items() if path.endswith(suffix)), "record")
            shown, given = _differing_lines(found, content)
            yield (f"{about}: {what} in the dataset deposit is {shown}, but the metadata and "
                   f"store URL give {given}")
    for path in deposit.annex:
        yield f"git-annex branch file {path} in the dataset deposit {name} is not from the metadata"
