"""The store's layout: where each file of a visit lives, and the IDs that name them.

Every path the four tools read or write is spelled here, once, as in the
contract with existing users (``docs/formats.md``)::

    <store>/<study>/<visit>_dicom.tar
    <store>/<study>/<visit>_dicom.tar.md5sum
    <store>/<study>/<visit>_metadata_tarball.json
    <store>/<study>/<visit>_metadata_dicoms.json
    <store>/<study>/<visit>_XDLRA--refs
    <store>/<study>/<visit>_XDLRA--repo-export
    <store>/<study>/catalog/
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

#: A study or visit ID: letters, digits, ``.``, ``_`` and ``-``, not starting
#: with ``.`` or ``-`` (so never empty, ``..``, a path, or an option).
ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")

#: Namespace for the UUIDs derived from study and visit IDs (uuid5), so that a
#: rebuild gives the same dataset id, annex UUIDs and catalog ids everywhere.
ICF_NAMESPACE = uuid.UUID("5d9e6a5e-3c0b-5f6e-9d49-1c7f0a4b2e10")


def check_id(value: str) -> str:
    """Return ``value`` if it is a safe study/visit ID, else raise ValueError."""
    if not ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid ID {value!r}: use letters, digits, '.', '_' and '-', "
            "not starting with '.' or '-'"
        )
    return value


def derived_uuid(*parts: str) -> str:
    """A UUID that depends only on ``parts`` (e.g. study, visit, purpose)."""
    return str(uuid.uuid5(ICF_NAMESPACE, "/".join(parts)))


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

    def _file(self, suffix: str) -> Path:
        return self.study_dir / f"{self.visit}{suffix}"

    @property
    def tarball(self) -> Path:
        return self._file("_dicom.tar")

    @property
    def md5sum(self) -> Path:
        return self._file("_dicom.tar.md5sum")

    @property
    def metadata_tarball(self) -> Path:
        return self._file("_metadata_tarball.json")

    @property
    def metadata_dicoms(self) -> Path:
        return self._file("_metadata_dicoms.json")

    @property
    def deposit_refs(self) -> Path:
        return self._file("_XDLRA--refs")

    @property
    def deposit_repo_export(self) -> Path:
        return self._file("_XDLRA--repo-export")

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
        """The ``datalad clone`` URL of the visit's dataset deposit."""
        return (
            "datalad-annex::?type=external&externaltype=uncurl"
            f"&url={store_url.rstrip('/')}/{self.study}/{self.visit}_{{{{annex_key}}}}"
            "&encryption=none"
        )


def default_store_url(store: Path) -> str:
    """The ``file://`` URL of a store directory (the default ``--store-url``)."""
    return store.resolve().as_uri()
