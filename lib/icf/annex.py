"""What a visit's dataset holds, computed without git: annex keys, the
git-annex branch's log files, the dataset's own files, and which paths a
dataset can hold. Pure functions; step 3 (:mod:`icf.dataset`) writes their
output into a repository and ``verify_visit`` (:mod:`icf.verify`) compares a
deposit against it.

- Keys are ``MD5E-s<size>--<md5><ext>`` with git-annex's extension rule
  (:func:`key_extension`) under the pinned :data:`KEY_SETTINGS`. A DICOM
  named ``MR.1.3.46.670589...`` has no extension (its last dot-part is
  longer than 4 characters).
- Every DICOM has two locators: archivist's ``dl+archive:`` URL and
  :mod:`icf.tarslice`'s span of the TAR (present in both remotes; git-annex
  prefers tarslice, the cheaper, where it is installed).
- The git-annex branch gets the lines ``initremote``, ``registerurl
  --batch --remote=...`` and ``metadata --batch`` would write
  (:func:`branch_logs`; a test builds both ways and compares the branches
  file by file).
- IDs are derived from the study and visit (:func:`dataset_uuids`), so a
  rebuild gives the same dataset id, annex UUIDs and commits.

Paths: ``archivist`` takes the member path literally from
``dl+archive:<key>#path=<path>&size=<n>`` (no percent-decoding; the path ends
at the first ``&``, the key at the last ``#``), so a path containing ``&`` or
``#`` cannot be addressed, and a line break cannot pass git-annex's logs.
Nor can a path git refuses to check out (:func:`icf.store.git_refusal`).
:func:`deposit_refusal` says why for each; spaces, quotes, ``%``, ``?``,
``+``, ``;``, ``=`` and non-ASCII work as they are.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Iterable, Iterator

from icf.records import DicomRecord, TarballRecord
from icf.store import Visit, derived_uuid, git_refusal
from icf.tarslice import NAME as TARSLICE
from icf.tarslice import Span

#: git-annex settings that decide keys; pinned for the build repository.
KEY_SETTINGS = {
    "annex.backend": "MD5E",
    "annex.maxextensionlength": "4",
    "annex.maxextensions": "2",
}
#: Characters a member path cannot contain (see the module docstring).
FORBIDDEN_IN_PATH = {"&": "'&'", "#": "'#'", "\n": "a line break", "\r": "a carriage return"}
#: The special remotes every dataset has, by name (also their externaltype):
#: datalad-next's two, and ours (:mod:`icf.tarslice`).
SPECIAL_REMOTES = ("uncurl", "archivist", TARSLICE)

DATALAD_GITATTRIBUTES = b"* annex.backend=MD5E\n**/.git* annex.largefiles=nothing\n"
DATALAD_DIR_GITATTRIBUTES = (
    b"config annex.largefiles=nothing\n"
    b"metadata/aggregate* annex.largefiles=nothing\n"
    b"metadata/objects/** annex.largefiles=(anything)\n"
)


@dataclass(frozen=True)
class AnnexedFile:
    """One file of the dataset: its path, key, and where its content is:
    (remote, URL) pairs, the remote one of :data:`SPECIAL_REMOTES`."""

    path: str
    key: str
    locators: tuple[tuple[str, str], ...]
    metadata: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (field, values), see metadata_fields


def key_extension(name: str, max_length: int = 4, max_count: int = 2) -> str:
    """The extension git-annex's MD5E backend keeps from file ``name``
    (``selectExtension`` in git-annex's Backend/Utilities.hs): of the
    dot-separated parts after the base name's first dot, the trailing run
    of parts at most ``max_length`` bytes long, keeping only parts of ASCII
    letters/digits or non-ASCII bytes, at most ``max_count`` of them."""
    base = name.rsplit("/", 1)[-1].lstrip(".").encode("utf-8")
    if b"." not in base:
        return ""
    parts = base[base.index(b"."):].split(b".")
    short: list[bytes] = []
    for part in reversed(parts):
        if len(part) > max_length:
            break
        short.append(part)
    valid = [p for p in short if all(c > 127 or chr(c).isalnum() for c in p)][:max_count]
    return "".join("." + p.decode("utf-8") for p in reversed(valid) if p)


def annex_key(md5: str, size: int, name: str) -> str:
    return f"MD5E-s{size}--{md5}{key_extension(name)}"


def branch_dir(key: str) -> str:
    """The key's directory on the git-annex branch (``hashdirlower``)."""
    digest = hashlib.md5(key.encode("utf-8")).hexdigest()
    return f"{digest[:3]}/{digest[3:6]}/"


def annex_symlink(path: str, object_dir: str, key: str) -> bytes:
    """The target of the annex symlink at ``path`` (``object_dir``: the
    key's ``hashdirmixed``, which git-annex computes)."""
    depth = path.count("/")
    return f"{'../' * depth}.git/annex/objects/{object_dir}{key}/{key}".encode("utf-8")


def metadata_value(value: str) -> str:
    """A value as git-annex's metadata log spells it (Types/MetaData.hs):
    base64 with a ``!`` prefix if it has a space or line break or starts with ``!``."""
    if any(c in value for c in " \r\n") or value.startswith("!"):
        return "!" + base64.b64encode(value.encode("utf-8")).decode("ascii")
    return value


def deposit_refusal(path: str) -> str | None:
    """Why a dataset cannot hold a file at ``path``, or None if it can."""
    bad = [what for char, what in FORBIDDEN_IN_PATH.items() if char in path]
    if bad:
        return f"contains {' and '.join(bad)} (archivist cannot address it)"
    return git_refusal(path)


def metadata_fields(record: DicomRecord) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A DICOM's git-annex metadata: every exported tag, its ``series`` key
    and ``InstanceNumber``, each with its values (a multi-valued tag has
    several; empty values are left out, and so is a field without any)."""
    fields = {**record.tags, "series": record.series, "InstanceNumber": record.instance}
    found = []
    for name, value in fields.items():
        values = tuple(str(v) for v in (value if isinstance(value, list) else [value]) if str(v) != "")
        if values:
            found.append((name, values))
    return tuple(found)


def annexed_files(visit: Visit, tarball: TarballRecord, dicoms: Iterable[DicomRecord],
                  store_url: str) -> list[AnnexedFile]:
    """The TAR and every DICOM as annexed files; raises ValueError naming
    (up to five of) the paths a dataset cannot hold."""
    tar_key = annex_key(tarball.md5, tarball.size, visit.tarball.name)
    files = [AnnexedFile(visit.dataset_tar_path, tar_key, (("uncurl", visit.tar_url(store_url)),))]
    problems = []
    for record in dicoms:
        refusal = deposit_refusal(record.path)
        if refusal:
            problems.append(f"{record.path!r} {refusal}")
        files.append(AnnexedFile(
            record.path, annex_key(record.md5, record.size, record.path),
            (("archivist", f"dl+archive:{tar_key}#path={record.path}&size={record.size}"),
             (TARSLICE, Span(tar_key, record.offset, record.size).locator)),
            metadata_fields(record),
        ))
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"cannot deposit {'; '.join(problems[:5])}{more}"
                         " (see the admin guide: paths a dataset cannot hold)")
    return files


def branch_logs(files: list[AnnexedFile], uuids: dict[str, str], description: str,
                timestamp: int) -> Iterator[tuple[str, bytes]]:
    """The git-annex branch files, as (path, content), that ``git annex init
    <description>``, ``initremote`` of the special remotes, ``registerurl
    --batch --remote`` (once per remote, in :data:`SPECIAL_REMOTES` order)
    and ``metadata`` write at ``timestamp``: ``uuid.log`` and ``remote.log``
    (lines sorted by UUID), and per key its location log (present in each
    of its remotes, sorted by UUID), URL log and metadata log.

    Files with the same content share a key: its URL log then has one line
    per locator, by remote and then in the order of ``files`` (the order
    ``registerurl --batch`` appends them in), and its metadata is the first
    file's (identical bytes give identical tags). A field's values are sorted by their UTF-8 bytes,
    fields case-insensitively, as ``git annex metadata`` writes them."""
    stamp = f"{timestamp}s"
    names = {uuids["annex"]: description, **{uuids[r]: r for r in SPECIAL_REMOTES}}
    yield "uuid.log", "".join(f"{u} {names[u]} timestamp={stamp}\n" for u in sorted(names)).encode()
    yield "remote.log", "".join(
        f"{uuids[r]} autoenable=true encryption=none externaltype={r} name={r} "
        f"type=external timestamp={stamp}\n"
        for r in sorted(SPECIAL_REMOTES, key=uuids.__getitem__)).encode()
    by_key: dict[str, list[AnnexedFile]] = {}
    for item in files:
        by_key.setdefault(item.key, []).append(item)
    for key, items in by_key.items():
        base = branch_dir(key) + key
        first = items[0]
        remotes = sorted({uuids[remote] for remote, _ in first.locators})
        yield base + ".log", "".join(f"{stamp} 1 {uuid}\n" for uuid in remotes).encode()
        urls = dict.fromkeys(url for remote in SPECIAL_REMOTES for item in items
                             for locator_remote, url in item.locators if locator_remote == remote)
        yield base + ".log.web", "".join(f"{stamp} 1 :{url}\n" for url in urls).encode()
        if first.metadata:
            fields = sorted(first.metadata, key=lambda fv: fv[0].casefold())
            line = " ".join(
                " ".join([field, *(f"+{metadata_value(v)}" for v in sorted(values, key=str.encode))])
                for field, values in fields)
            yield base + ".log.met", f"{stamp} {line}\n".encode()


def dataset_uuids(visit: Visit) -> dict[str, str]:
    """The dataset id (``dataset``, also the catalog's id for the visit) and
    the annex UUIDs of the build repository and the special remotes."""
    return {
        "dataset": derived_uuid(visit.study, visit.visit),
        **{purpose: derived_uuid(visit.study, visit.visit, purpose)
           for purpose in ("annex", *SPECIAL_REMOTES)},
    }


def dataset_config_files(uuids: dict[str, str]) -> dict[str, bytes]:
    """The dataset's own files on ``main`` (all but the annexed ones)."""
    return {
        ".gitattributes": DATALAD_GITATTRIBUTES,
        ".datalad/.gitattributes": DATALAD_DIR_GITATTRIBUTES,
        ".datalad/config": f'[datalad "dataset"]\n\tid = {uuids["dataset"]}\n'.encode(),
    }


def deposit_description(visit: Visit) -> str:
    """The annex description of the build repository (in ``uuid.log``)."""
    return f"ICF deposit {visit.study}/{visit.visit}"
