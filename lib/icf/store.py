"""The store's layout: where each file of a visit lives, and the IDs that name them.

Every path the four steps and ``verify_visit`` read or write is spelled here, once, as in the
contract with existing users (``docs/formats.rst``)::

    <store>/<study>/<visit>_dicom.tar
    <store>/<study>/<visit>_dicom.tar.md5sum
    <store>/<study>/<visit>_metadata_tarball.json
    <store>/<study>/<visit>_metadata_dicoms.json
    <store>/<study>/<visit>_XDLRA--refs
    <store>/<study>/<visit>_XDLRA--repo-export
    <store>/<study>/catalog/
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

#: A study or visit ID: letters, digits, ``.``, ``_`` and ``-``, not starting
#: with ``.`` or ``-`` (so never empty, ``..``, a path, or an option).
ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")

#: Namespace for the UUIDs derived from study and visit IDs (uuid5), so that a
#: rebuild gives the same dataset id, annex UUIDs and catalog ids everywhere.
ICF_NAMESPACE = uuid.UUID("5d9e6a5e-3c0b-5f6e-9d49-1c7f0a4b2e10")


#: A series key (:func:`series_key`): 16 hex digits, or empty.
SERIES_KEY = re.compile(r"([0-9a-f]{16})?")


def series_key(study: str, series_uid: str) -> str:
    """The opaque key that stands for a SeriesInstanceUID in every output.

    A UID never leaves the archive as it is: UIDs are linkable identifiers
    and often embed dates and device serial numbers. The key is the first
    16 hex digits of SHA-256 over the study ID and the UID, so it is stable
    (the same series gives the same key on every run and in every visit of
    the study, which lets a re-exported series be recognised), holds no part
    of the UID (its dates, device serials), and does not link across studies.
    It is not a secret: whoever has (or can guess) the UID and the study ID
    can compute the key. No UID
    gives ``""``.
    """
    if not series_uid:
        return ""
    return hashlib.sha256(f"icf-series\0{study}\0{series_uid}".encode()).hexdigest()[:16]


def check_id(value: str) -> str:
    """Return ``value`` if it is a safe study/visit ID, else raise ValueError."""
    if not ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid ID {value!r}: use letters, digits, '.', '_' and '-', "
            "not starting with '.' or '-'"
        )
    return value


def natural_key(visit_id: str) -> tuple:
    """Sort key that orders IDs as people do: ``v2`` before ``v10`` (and,
    for IDs equal but for leading zeros, ``v1`` before ``v01``)."""
    parts = tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                  for part in re.split(r"([0-9]+)", visit_id) if part)
    return (parts, visit_id)


def study_visits(store: Path, study: str) -> list[str]:
    """The IDs of the visits of ``study`` that have an archive or metadata,
    in natural order; other files are ignored."""
    found = set()
    for suffix in ("_dicom.tar", "_metadata_tarball.json"):
        for path in (store / study).glob(f"*{suffix}"):
            visit = path.name[:-len(suffix)]
            if ID_PATTERN.fullmatch(visit):
                found.add(visit)
    return sorted(found, key=natural_key)


def derived_uuid(*parts: str) -> str:
    """A UUID that depends only on ``parts`` (e.g. study, visit, purpose)."""
    return str(uuid.uuid5(ICF_NAMESPACE, "/".join(parts)))


class _StudyFile:
    """A file of a visit in the study directory: ``<study>/<visit><suffix>``."""

    def __init__(self, suffix: str):
        self.suffix = suffix

    def __get__(self, visit: "Visit", owner: type) -> Path:
        return visit.study_dir / f"{visit.visit}{self.suffix}"


@dataclass(frozen=True)
class Visit:
    """One visit of one study in one store, and the paths of its files."""

    store: Path
    study: str
    visit: str

    def __post_init__(self) -> None:
        check_id(self.study)
        check_id(self.visit)

    @property
    def study_dir(self) -> Path:
        return self.store / self.study

    tarball = _StudyFile("_dicom.tar")
    md5sum = _StudyFile("_dicom.tar.md5sum")
    metadata_tarball = _StudyFile("_metadata_tarball.json")
    metadata_dicoms = _StudyFile("_metadata_dicoms.json")
    deposit_refs = _StudyFile("_XDLRA--refs")
    deposit_repo_export = _StudyFile("_XDLRA--repo-export")

    @property
    def archive_files(self) -> tuple[Path, Path]:
        """What step 1 makes."""
        return self.tarball, self.md5sum

    @property
    def metadata_files(self) -> tuple[Path, Path]:
        """What step 2 makes."""
        return self.metadata_tarball, self.metadata_dicoms

    @property
    def deposit_files(self) -> tuple[Path, Path]:
        """What step 3 makes, in the order it puts them in place (``refs`` marks completion)."""
        return self.deposit_repo_export, self.deposit_refs

    @property
    def catalog_dir(self) -> Path:
        return self.study_dir / "catalog"

    @property
    def archive_top(self) -> str:
        """The one top directory of every archive member: ``<study>_<visit>``."""
        return f"{self.study}_{self.visit}"

    @property
    def dataset_tar_path(self) -> str:
        """Where the TAR appears in the visit dataset (``dspath``)."""
        return f"icf/{self.visit}_dicom.tar"

    @property
    def store_tar_path(self) -> str:
        """The TAR's path relative to the store root (``storepath``)."""
        return f"{self.study}/{self.visit}_dicom.tar"

    def tar_url(self, store_url: str) -> str:
        return f"{store_url.rstrip('/')}/{self.store_tar_path}"

    def clone_url(self, store_url: str) -> str:
        """The ``datalad clone`` URL of the visit's dataset deposit
        (see :func:`clone_url`)."""
        quoted = urllib.parse.quote(store_url.rstrip("/"), safe=_URL_KEPT)
        return clone_url(quoted, self.study, self.visit)


def clone_url(quoted_store_url: str, study: str, visit: str) -> str:
    """The ``datalad clone`` URL of a visit's dataset deposit, the one place
    its format is spelled.

    datalad-next reads it as a query string: it splits at ``&``, stops at
    ``#``, expands ``{...}`` and percent-decodes each value once before
    uncurl percent-decodes the URL again. So the store URL must come
    percent-encoded once more (``%20`` as ``%2520``; :meth:`Visit.clone_url`
    does it, and :func:`check_store_url` admits no other character that
    needs it), and ``{{annex_key}}`` stays the placeholder. The result
    holds no character that ends a single-quoted shell word.
    """
    return ("datalad-annex::?type=external&externaltype=uncurl"
            f"&url={quoted_store_url}/{study}/{visit}_{{{{annex_key}}}}&encryption=none")


def member_path_problem(path: str, top: str, directory: bool = False) -> str | None:
    """Why ``path`` cannot be an archive member of a visit whose members lie
    under ``top/`` (:attr:`Visit.archive_top`), or None: it must be
    relative, free of empty, ``.`` and ``..`` components, and below ``top``
    (a directory may be ``top`` itself; a trailing ``/`` is allowed)."""
    parts = (path[:-1] if directory and path.endswith("/") else path).split("/")
    if parts[0] != top or any(part in ("", ".", "..") for part in parts) \
            or (not directory and len(parts) < 2):
        return f"is not a relative path under {top}/"
    return None


def default_store_url(store: Path) -> str:
    """The ``file://`` URL of a store directory (the default ``--store-url``),
    every character outside RFC 3986's unreserved set percent-encoded."""
    return store.resolve().as_uri()


#: What a store URL may hold as it is: RFC 3986's unreserved and the
#: delimiters that are harmless in a clone URL and in a single-quoted shell
#: word. ``%`` only as an escape (``%XX``).
_URL_KEPT = "/:@!*()+,=~-._"
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://(?:[A-Za-z0-9/:@!*()+,=~._-]|%[0-9A-Fa-f]{2})*")


def check_store_url(value: str) -> str:
    """Return ``value`` if it can be a store URL, else raise ValueError.

    Refused unless percent-encoded: anything that would break the quoted
    clone command or the clone URL's query syntax (quotes, backtick, ``$``,
    ``;``, ``<``, ``>``, ``&``, ``#``, ``?``, ``{``, ``}``, ``\\``,
    whitespace, control characters, non-ASCII) and a ``%`` that is not an
    escape. A URL must have a scheme (``https://``, ``file://``).
    """
    if not _URL.fullmatch(value):
        bad = next((c for c in value if not (c.isascii() and (c.isalnum() or c in _URL_KEPT + "%"))),
                   None)
        why = (f"character {bad!r} must be percent-encoded" if bad is not None
               else "need scheme://... with every '%' starting a %XX escape")
        raise ValueError(f"invalid store URL {value!r}: {why}")
    return value


#: Names git reads as its own (configuration, attributes, submodules):
#: a dataset cannot hold a file of that name, nor ``.git`` itself.
_GIT_NAMES = (".git", ".gitmodules", ".gitattributes", ".gitignore", ".mailmap")
#: Their 8.3 short names on NTFS (``git~1`` and git's hashed forms).
_GIT_SHORT_NAMES = re.compile(r"(git|gitmod|gi7eba|gitatt|gi7d29|gitign|gi250a|mailma|maba30)~[0-9]")
#: Characters HFS+ ignores in names (git's ``is_hfs_dotgit``).
_HFS_IGNORED = dict.fromkeys([*range(0x200C, 0x2010), *range(0x202A, 0x202F),
                              *range(0x206A, 0x2070), 0xFEFF])


def git_refusal(path: str) -> str | None:
    """Why git would refuse to check out a file at ``path`` (relative,
    ``/``-separated), or None if it would not.

    Checked per component, the way git's ``verify_path`` does with its
    NTFS and HFS+ protections on (a clone may land on either): ``.`` and
    ``..``; an empty component; ``.git``, ``.gitmodules``,
    ``.gitattributes``, ``.gitignore`` and ``.mailmap`` in any letter case,
    also with trailing dots or spaces, an NTFS stream suffix (``:...``) or
    HFS+-ignored characters, and their NTFS short names (``git~1``...).
    The last four are refused too because git would read the annexed file
    as its own configuration.
    """
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"has a {part or 'empty'!r} path component"
        name = unicodedata.normalize("NFC", part.translate(_HFS_IGNORED)).split(":", 1)[0]
        name = name.rstrip(". ").casefold()
        if name in _GIT_NAMES or _GIT_SHORT_NAMES.fullmatch(name):
            return f"has the component {part!r}, which git keeps for itself"
    return None
