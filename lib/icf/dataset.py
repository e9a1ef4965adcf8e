"""Step 3: from a visit's two JSON files, deposit a clonable DataLad dataset
as ``<visit>_XDLRA--refs`` and ``<visit>_XDLRA--repo-export``.

What a clone shows (``docs/formats.md``): ``icf/<visit>_dicom.tar`` (content
from the ``uncurl`` special remote at ``<store-url>/<study>/<visit>_dicom.tar``)
and one annexed file per DICOM at its archive path (content extracted from the
TAR by the ``archivist`` special remote via ``dl+archive:`` URLs), each DICOM
with git-annex metadata for the non-empty exported tags.

How it is built, and why that way (no process per file):

- The repository is made with a handful of git/git-annex calls whose number
  does not depend on the visit: ``git init``, ``git annex init``, one
  ``git annex examinekey --batch`` (object directories), one
  ``git fast-import`` and one ``git push``.
- Keys are computed here, not by git-annex: ``MD5E-s<size>--<md5><ext>`` with
  git-annex's extension rule (:func:`key_extension`) under pinned settings
  :data:`KEY_SETTINGS`. A DICOM named ``MR.1.3.46.670589...`` has no
  extension (its last dot-part is longer than 4 characters).
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
``XDLRA--refs`` (the same commit ids) on every run and machine, because

- every date (author, committer, git-annex log timestamps through
  ``GIT_ANNEX_VECTOR_CLOCK``) is the archive's timestamp: the largest member
  mtime in the TAR headers (step 1 sets it from the DICOMs' StudyDate/Time);
- the dataset id is ``derived_uuid(study, visit)`` (the catalog's id for the
  visit), the annex UUID and the special remotes' UUIDs are
  ``derived_uuid(study, visit, "annex" | "uncurl" | "archivist")``, and the
  annex description and author identity are fixed (:data:`IDENTITY`);
- git runs with ``GIT_CONFIG_GLOBAL=/dev/null`` and ``GIT_CONFIG_NOSYSTEM=1``
  plus the pinned settings, so neither the user's configuration nor a
  missing identity changes (or breaks) anything, and nothing outside the
  build directory is ever configured.

``XDLRA--repo-export`` is a ZIP made by the datalad-annex remote helper; its
entry timestamps vary, its content does not.

File names: ``archivist`` takes the member path literally from
``dl+archive:<key>#path=<path>&size=<n>`` (no percent-decoding; the path ends
at the first ``&``, the key at the last ``#``), so a path containing ``&`` or
``#`` cannot be addressed, and a line break cannot pass git-annex's logs.
Such paths are refused, naming the file, before anything is written, and so
are paths git would refuse to check out (a ``.git`` component in any case,
``.gitmodules`` and the like, see :func:`icf.store.git_refusal`): the
deposit would be accepted here and fail in every clone. Spaces, quotes,
``%``, ``?``, ``+``, ``;``, ``=`` and non-ASCII work as they are.

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
from the repository inside ``repo-export``; tested), :func:`deposit_problems`
(``verify_visit``) reports the stale ``refs``, and the next run (make sees
``refs`` older than the metadata) replaces it.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from icf import IcfError, doing
from icf.dicom import EXPORTED_TAGS
from icf.metadata import read_dicom_records, read_tarball_record
from icf.output import write_files
from icf.store import Visit, check_store_url, derived_uuid, git_refusal
from icf.tarball import latest_member_mtime

#: git-annex settings that decide keys; pinned for the build repository.
KEY_SETTINGS = {
    "annex.backend": "MD5E",
    "annex.maxextensionlength": "4",
    "annex.maxextensions": "2",
}
#: Who "made" the commits (no user identity is needed or used).
IDENTITY = ("ICF deposit_visit_dataset", "icf-utils@localhost")
#: Characters a member path cannot contain (see the module docstring).
FORBIDDEN_IN_PATH = {"&": "'&'", "#": "'#'", "\n": "a line break", "\r": "a carriage return"}

DATALAD_GITATTRIBUTES = b"* annex.backend=MD5E\n**/.git* annex.largefiles=nothing\n"
DATALAD_DIR_GITATTRIBUTES = (
    b"config annex.largefiles=nothing\n"
    b"metadata/aggregate* annex.largefiles=nothing\n"
    b"metadata/objects/** annex.largefiles=(anything)\n"
)


@dataclass(frozen=True)
class AnnexedFile:
    """One file of the dataset: its path, key, and where its content is."""

    path: str
    key: str
    url: str
    remote: str  # "uncurl" or "archivist"
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DatasetSummary:
    files: int
    timestamp: int

    def __str__(self) -> str:
        return f"deposited a dataset of {self.files} DICOMs and the archive"


# -- keys -------------------------------------------------------------------


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


def metadata_value(value: str) -> str:
    """A value as git-annex's metadata log spells it (Types/MetaData.hs):
    base64 with a ``!`` prefix if it has a space or line break or starts with ``!``."""
    if any(c in value for c in " \r\n") or value.startswith("!"):
        return "!" + base64.b64encode(value.encode("utf-8")).decode("ascii")
    return value


# -- reading the inputs -----------------------------------------------------


def dataset_files(visit: Visit, store_url: str) -> list[AnnexedFile]:
    """The TAR and every DICOM as annexed files, from the two JSON files;
    IcfError naming the file for anything that cannot be deposited."""
    tarball = read_tarball_record(visit)
    tar_key = annex_key(tarball["md5"], tarball["size"], visit.tarball.name)
    files = [AnnexedFile(visit.dataset_tar_path, tar_key, visit.tar_url(store_url), "uncurl")]
    problems = []
    seen = {visit.dataset_tar_path}
    for record in read_dicom_records(visit):
        path, md5, size = record["path"], record["md5"], record["size"]
        bad = [what for char, what in FORBIDDEN_IN_PATH.items() if char in path]
        parts = path.split("/")
        if bad:
            problems.append(f"{path!r} contains {' and '.join(bad)} (archivist cannot address it)")
        elif parts[0] != visit.archive_top or len(parts) < 2:
            problems.append(f"{path!r} is not a relative path under {visit.archive_top}/")
        elif refusal := git_refusal(path):
            problems.append(f"{path!r} {refusal}")
        elif path in seen:
            problems.append(f"{path!r} is listed twice")
        seen.add(path)
        tags = tuple((tag, str(record[tag])) for tag in EXPORTED_TAGS)
        files.append(AnnexedFile(
            path, annex_key(md5, size, path),
            f"dl+archive:{tar_key}#path={path}&size={size}", "archivist",
            tuple((tag, value) for tag, value in tags if value != ""),
        ))
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise IcfError(f"{visit.metadata_dicoms}: cannot deposit {'; '.join(problems[:5])}{more}"
                       " (see the admin guide: paths a dataset cannot hold)")
    return files


# -- the git-annex branch's log lines ---------------------------------------


SPECIAL_REMOTES = ("uncurl", "archivist")


def branch_logs(files: list[AnnexedFile], uuids: dict[str, str], description: str,
                timestamp: int) -> Iterator[tuple[str, bytes]]:
    """The git-annex branch files, as (path, content), that ``git annex init
    <description>``, ``initremote`` of the two special remotes,
    ``registerurl --remote`` and ``metadata`` write at ``timestamp``:
    ``uuid.log`` and ``remote.log`` (lines sorted by UUID), and per key its
    location log (present in its remote), URL log and metadata log."""
    stamp = f"{timestamp}s"
    names = {uuids["annex"]: description, **{uuids[r]: r for r in SPECIAL_REMOTES}}
    yield "uuid.log", "".join(f"{u} {names[u]} timestamp={stamp}\n" for u in sorted(names)).encode()
    yield "remote.log", "".join(
        f"{uuids[r]} autoenable=true encryption=none externaltype={r} name={r} "
        f"type=external timestamp={stamp}\n"
        for r in sorted(SPECIAL_REMOTES, key=uuids.get)).encode()
    for item in files:
        base = branch_dir(item.key) + item.key
        yield base + ".log", f"{stamp} 1 {uuids[item.remote]}\n".encode()
        yield base + ".log.web", f"{stamp} 1 :{item.url}\n".encode()
        if item.metadata:
            fields = sorted(item.metadata, key=lambda fv: fv[0].casefold())
            line = " ".join(f"{field} +{metadata_value(value)}" for field, value in fields)
            yield base + ".log.met", f"{stamp} {line}\n".encode()


# -- building ----------------------------------------------------------------


def isolated_git_env(**settings: str) -> dict[str, str]:
    """The environment git runs in here: the caller's, minus anything that
    points git elsewhere, with neither global nor system configuration, and
    this Python's directory first on PATH: the pinned git-annex and
    datalad-next's helpers are installed there (in the venv or container),
    so ``.venv/bin/python bin/<script>`` works without activating the venv."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)])
    env = dict(os.environ, PATH=path, GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1",
               GIT_TERMINAL_PROMPT="0", **settings)
    for variable in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG"):
        env.pop(variable, None)
    return env


@contextmanager
def git_process(repo: Path, env: dict[str, str], args: list[str], **popen: Any) -> Iterator[subprocess.Popen]:
    """``git <args>`` started in a process group of its own, which is killed
    whole if the block is left by an exception (a signal, an error): git-annex
    and the remote helpers it starts never outlive the run or keep writing
    into a build directory being removed."""
    process = subprocess.Popen(["git", *args], cwd=repo, env=env, start_new_session=True, **popen)
    try:
        yield process
    except BaseException:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        raise
    finally:
        for stream in (process.stdin, process.stdout, process.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:  # a pipe the killed or failed process no longer reads
                pass
        process.wait()


def run_git(repo: Path, env: dict[str, str], *args: str, input: bytes | None = None) -> bytes:
    """``git <args>`` in ``repo``; its output, or IcfError with git's last error line."""
    with git_process(repo, env, list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE) as process:
        out, err = process.communicate(input)
    if process.returncode != 0:
        message = err.decode("utf-8", "replace").strip().splitlines()
        raise IcfError(f"{repo}: git {args[0]} {args[1] if len(args) > 1 else ''} failed: "
                       f"{message[-1] if message else process.returncode}")
    return out


class Builder:
    """The build repository in ``workdir`` and the environment its git runs in."""

    def __init__(self, workdir: Path, timestamp: int):
        self.repo = workdir / "repo"
        self.timestamp = timestamp
        date = f"@{timestamp} +0000"
        name, email = IDENTITY
        self.env = isolated_git_env(
            GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=email, GIT_AUTHOR_DATE=date,
            GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email, GIT_COMMITTER_DATE=date,
            GIT_ANNEX_VECTOR_CLOCK=str(timestamp),
        )

    def git(self, *args: str, input: bytes | None = None) -> bytes:
        return run_git(self.repo, self.env, *args, input=input)

    def init(self, description: str, uuids: dict[str, str]) -> None:
        self.repo.mkdir()
        self.git("init", "-q", "--initial-branch=main", "--template=")
        for name, value in {**KEY_SETTINGS, "annex.uuid": uuids["annex"]}.items():
            self.git("config", name, value)
        self.git("annex", "init", "-q", description)
        journal = self.repo / ".git" / "annex" / "journal"
        if journal.is_dir() and any(journal.iterdir()):
            raise IcfError(f"{journal}: git-annex left uncommitted changes")

    def object_dirs(self, keys: list[str]) -> list[str]:
        """``hashdirmixed`` of each key (one ``examinekey --batch`` process)."""
        out = self.git("annex", "examinekey", "--batch", "--format=${hashdirmixed}\n",
                       input="".join(k + "\n" for k in keys).encode())
        dirs = out.decode().splitlines()
        if len(dirs) != len(keys):
            raise IcfError(f"{self.repo}: git annex examinekey answered {len(dirs)} of {len(keys)} keys")
        return dirs

    def fast_import(self, worktree: Iterable[tuple[str, str, bytes]],
                    annex: Iterable[tuple[str, bytes]], message: str) -> None:
        """One commit of ``worktree`` ((path, mode, content) items) on
        ``main``, one of ``annex`` ((path, content) items) on top of the
        git-annex branch; streamed into one ``git fast-import`` as generated."""
        name, email = IDENTITY
        who = f"{name} <{email}> {self.timestamp} +0000"
        with tempfile.TemporaryFile() as errors, \
                git_process(self.repo, self.env, ["fast-import", "--quiet", "--done"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors) as process:
            stream = process.stdin

            def data(payload: bytes) -> None:
                stream.write(b"data %d\n" % len(payload))
                stream.write(payload)
                stream.write(b"\n")

            try:
                stream.write(f"commit refs/heads/main\nauthor {who}\ncommitter {who}\n".encode())
                data(message.encode())
                for path, mode, payload in worktree:
                    stream.write(f"M {mode} inline {_quoted(path)}\n".encode("utf-8"))
                    data(payload)
                stream.write(f"commit refs/heads/git-annex\ncommitter {who}\n".encode())
                data(b"update")
                stream.write(b"from refs/heads/git-annex^0\n")
                for path, payload in annex:
                    stream.write(f"M 100644 inline {_quoted(path)}\n".encode("utf-8"))
                    data(payload)
                stream.write(b"done\n")
                stream.close()
            except BrokenPipeError:
                pass  # fast-import stopped early: its exit status and message tell why
            process.wait()
            if process.returncode != 0:
                errors.seek(0)
                message_lines = errors.read().decode("utf-8", "replace").strip().splitlines()
                raise IcfError(f"{self.repo}: git fast-import failed: "
                               f"{message_lines[-1] if message_lines else process.returncode}")

    def push(self, url: str) -> None:
        self.git("remote", "add", "deposit", url)
        self.git("push", "-q", "deposit", "main", "git-annex")


def _quoted(path: str) -> str:
    """A path in git's C-style quotes (fast-import accepts it for any name)."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _annex_symlink(path: str, object_dir: str, key: str) -> bytes:
    depth = path.count("/")
    return f"{'../' * depth}.git/annex/objects/{object_dir}{key}/{key}".encode("utf-8")


def dataset_uuids(visit: Visit) -> dict[str, str]:
    return {
        "dataset": derived_uuid(visit.study, visit.visit),
        **{purpose: derived_uuid(visit.study, visit.visit, purpose)
           for purpose in ("annex", "uncurl", "archivist")},
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


class BuildDir:
    """``.<visit>_XDLRA.build`` in the study directory: locked while a run
    uses it, emptied first (a killed run's leftovers), removed at the end."""

    def __init__(self, visit: Visit):
        self.path = visit.study_dir / f".{visit.visit}_XDLRA.build"

    def __enter__(self) -> Path:
        with doing("preparing the build directory"):
            return self._enter()

    def _enter(self) -> Path:
        self.path.mkdir(exist_ok=True)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise IcfError(f"{self.path}: another run is building this deposit right now") from None
        for entry in self.path.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        return self.path

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.fd)


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
    files = dataset_files(visit, store_url)
    if not visit.tarball.is_file():
        raise IcfError(f"{visit.tarball}: missing (the dataset's content comes from it)")
    timestamp = latest_member_mtime(visit.tarball)
    uuids = dataset_uuids(visit)
    with BuildDir(visit) as workdir, doing("building the deposit", workdir):
        builder = Builder(workdir, timestamp)
        description = deposit_description(visit)
        builder.init(description, uuids)
        object_dirs = builder.object_dirs([f.key for f in files])
        worktree = itertools.chain(
            ((path, "100644", content) for path, content in dataset_config_files(uuids).items()),
            ((item.path, "120000", _annex_symlink(item.path, object_dir, item.key))
             for item, object_dir in zip(files, object_dirs)))
        builder.fast_import(worktree, branch_logs(files, uuids, description, timestamp),
                            f"[ICF] visit {visit.study}/{visit.visit}: archive and "
                            f"{len(files) - 1} DICOMs")
        outbox = workdir / "deposit"
        outbox.mkdir()
        builder.push(Visit(workdir, "deposit", visit.visit).clone_url(workdir.resolve().as_uri()))
        built = {final: (outbox / final.name).read_bytes() for final in deposit}
        write_files(built, overwrite=force)
    return DatasetSummary(len(files) - 1, timestamp)


# -- reading a deposit back (fixity) ----------------------------------------


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
                archive.extractall(bare)
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
    for path, info in files:
        header, _, blobs = blobs.partition(b"\n")
        fields = header.split()
        if len(fields) != 3 or fields[1] != b"blob" or not fields[2].isdigit() or len(fields[2]) > 12:
            raise IcfError(f"{repo}: {branch}: {path!r} is not a file ({header[:80]!r})")
        size = int(fields[2])
        contents[path] = (info[0].decode(), blobs[:size])
        blobs = blobs[size + 1:]
    return contents


_LOG_KINDS = {".log.web": "URL", ".log.met": "git-annex metadata", ".log": "location log"}


def _log_key(branch_path: str) -> str:
    """The key a git-annex branch file is about (``uuid.log``: ``uuid``)."""
    name = branch_path.rsplit("/", 1)[-1]
    suffix = next((suffix for suffix in _LOG_KINDS if name.endswith(suffix)), "")
    return name[:len(name) - len(suffix)]


def deposit_problems(visit: Visit, store_url: str) -> Iterator[str]:
    """Everything in the deposit that differs from what the metadata JSON,
    the archive and ``store_url`` give: each annexed file's path and key,
    the dataset's own files, and every file of the git-annex branch (the
    archive's URL, each DICOM's archivist locator, each key's metadata and
    location, the remotes and UUIDs)."""
    try:
        deposit = read_deposit(visit)
        files = dataset_files(visit, store_url)
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
            shown = "missing" if found is None else repr(found.decode("utf-8", "replace").strip()[:200])
            yield (f"{about}: {what} in the dataset deposit is {shown}, but the metadata and "
                   f"store URL give {content.decode('utf-8', 'replace').strip()[:200]!r}")
    for path in deposit.annex:
        yield f"git-annex branch file {path} in the dataset deposit {name} is not from the metadata"
