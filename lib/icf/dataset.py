"""Step 3: from a visit's two JSON files, deposit a clonable DataLad dataset
as ``<visit>_XDLRA--refs`` and ``<visit>_XDLRA--repo-export``.

What a clone shows (``docs/formats.rst``): ``icf/<visit>_dicom.tar`` (content
from the ``uncurl`` special remote at ``<store-url>/<study>/<visit>_dicom.tar``)
and one annexed file per DICOM at its archive path (content extracted from the
TAR by the ``archivist`` special remote via ``dl+archive:`` URLs), each DICOM
with git-annex metadata for the non-empty exported tags.

How it is built, and why that way (no process per file):

- The repository is made with a handful of git/git-annex calls whose number
  does not depend on the visit: ``git init``, ``git annex init``, one
  ``git annex examinekey --batch`` (object directories), one
  ``git fast-import`` and one ``git push``.
- Keys, log lines and IDs are computed by :mod:`icf.annex`, not by
  git-annex.
- ``git fast-import`` writes the tree of annex symlinks (branch ``main``) and,
  on top of the git-annex branch left by ``git annex init``, one commit
  holding the two special remotes (``uuid.log``, ``remote.log``) and every
  key's location log (present in uncurl or archivist), URL log and metadata
  log -- the same lines ``initremote``, ``registerurl --batch --remote=...``
  and ``metadata --batch`` write (a test builds both ways and compares the
  git-annex branches file by file). ``initremote`` itself is not run: it
  starts each remote's Python program (~1.5 s each).
- The two deposit files come from a ``git push`` to a ``datalad-annex::`` URL
  whose uncurl URL points into the build directory; they are then moved into
  the study directory (``repo-export`` first, ``refs`` last). Neither file
  contains the build directory's URL.

Determinism: the same JSON files, TAR and store URL give the same
``XDLRA--refs`` (the same commit ids) on every run and machine: every date
is the archive's timestamp (the largest member mtime in the TAR headers;
step 1 sets it from the DICOMs' StudyDate/Time), the IDs are derived from
study and visit (:func:`icf.annex.dataset_uuids`), and git runs isolated
from the user's configuration (:mod:`icf.git`).
``XDLRA--repo-export`` is a ZIP of a bare repository made by the
datalad-annex remote helper: its entry times vary, and so do the bytes of
git's pack (its delta search is not deterministic across machines), but
not the git objects and refs it holds (``make test-container`` compares a
host's and the container's deposits that way).

File names a dataset cannot hold (``&``, ``#``, line breaks, ``.git``
components and the like, see :func:`icf.annex.deposit_refusal`) are
refused, naming the file, before anything is written: the deposit would be
accepted here and fail in every clone.

Users behind HTTP authentication (tested with basic auth): uncurl asks
datalad-next's credential system, both for ``datalad clone`` and for
``datalad get``. Credentials are found by *realm*: for a server answering
``WWW-Authenticate: Basic realm="icf"`` at ``https://host``, the realm is
``https://host/icf``. Either store one once (not tested here) with
``datalad credentials set icf user=<name> realm=https://host/icf
type=user_password`` (asks for the secret), or supply it per session in the
environment (the way the tests use)::

    DATALAD_CREDENTIAL_ICF_USER=<name> DATALAD_CREDENTIAL_ICF_SECRET=<secret>
    DATALAD_CREDENTIAL_ICF_REALM=https://host/icf DATALAD_CREDENTIAL_ICF_TYPE=user_password

Without a matching credential (and no terminal to ask on) or with a wrong
one, the clone fails and ``datalad get`` fails without leaving content.

Crash safety: everything is built in ``.<visit>_XDLRA.build/`` in the study
directory (locked while in use, emptied by the next run if a run was killed);
the deposit files are written as ``.partial`` files and renamed into place at
the very end, ``repo-export`` first and ``refs`` last. An existing deposit is
refused unless ``force``. Two renames cannot be one atomic step: a crash
between them leaves the new ``repo-export`` beside the previous ``refs``.
That pair still clones, as the new dataset (datalad-next takes the branches
from the repository inside ``repo-export``; tested), :func:`icf.verify.deposit_problems`
(``verify_visit``) reports the stale ``refs``, and the next run (make sees
``refs`` older than the metadata) replaces it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from icf import IcfError, doing
from icf.annex import (
    KEY_SETTINGS,
    AnnexedFile,
    annex_symlink,
    annexed_files,
    branch_logs,
    dataset_config_files,
    dataset_uuids,
    deposit_description,
)
from icf.git import BuildDir, Builder
from icf.output import write_files
from icf.records import read_dicom_records, read_tarball_record
from icf.store import Visit, check_store_url
from icf.tarball import latest_member_mtime


@dataclass(frozen=True)
class DatasetSummary:
    files: int

    def __str__(self) -> str:
        return f"deposited a dataset of {self.files} DICOMs and the archive"


def visit_files(visit: Visit, store_url: str) -> list[AnnexedFile]:
    """The visit's annexed files, from its two metadata files; IcfError
    naming the DICOM list for a path a dataset cannot hold."""
    tarball = read_tarball_record(visit)
    try:
        return annexed_files(visit, tarball, read_dicom_records(visit), store_url)
    except ValueError as exc:
        raise IcfError(f"{visit.metadata_dicoms}: {exc}") from None


def deposit_dataset(visit: Visit, store_url: str, force: bool = False) -> DatasetSummary:
    """Build the visit's dataset and leave exactly its two deposit files."""
    try:
        check_store_url(store_url)
    except ValueError as exc:
        raise IcfError(str(exc)) from None
    deposit = visit.deposit_files
    existing = [p for p in deposit if p.exists()]
    if existing and not force:
        raise IcfError(f"{existing[0]}: exists already (use --force to replace the deposit)")
    files = visit_files(visit, store_url)
    if not visit.tarball.is_file():
        raise IcfError(f"{visit.tarball}: missing (the dataset's content comes from it)")
    timestamp = latest_member_mtime(visit.tarball)
    uuids = dataset_uuids(visit)
    with BuildDir(visit) as workdir, doing("building the deposit", workdir):
        builder = Builder(workdir, timestamp)
        description = deposit_description(visit)
        builder.init(description, {**KEY_SETTINGS, "annex.uuid": uuids["annex"]})
        object_dirs = builder.object_dirs([f.key for f in files])
        worktree = itertools.chain(
            ((path, "100644", content) for path, content in dataset_config_files(uuids).items()),
            ((item.path, "120000", annex_symlink(item.path, object_dir, item.key))
             for item, object_dir in zip(files, object_dirs, strict=True)))
        builder.fast_import(worktree, branch_logs(files, uuids, description, timestamp),
                            f"[ICF] visit {visit.study}/{visit.visit}: archive and "
                            f"{len(files) - 1} DICOMs")
        outbox = workdir / "deposit"
        outbox.mkdir()
        builder.push(Visit(workdir, "deposit", visit.visit).clone_url(workdir.resolve().as_uri()))
        built = {final: (outbox / final.name).read_bytes() for final in deposit}
        write_files(built, overwrite=force)
    return DatasetSummary(len(files) - 1)
