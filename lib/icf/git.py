"""Running git and git-annex: an isolated environment, process groups that
die with the run, and the build repository step 3 deposits from.

Determinism: git runs with ``GIT_CONFIG_GLOBAL=/dev/null`` and
``GIT_CONFIG_NOSYSTEM=1``, so neither the user's configuration nor a missing
identity changes (or breaks) anything, and nothing outside the build
directory is ever configured. In the build repository every date (author,
committer, git-annex log timestamps through ``GIT_ANNEX_VECTOR_CLOCK``) is
the one timestamp given, and the identity is :data:`IDENTITY`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from icf import IcfError, doing
from icf.output import locked
from icf.store import Visit

#: Who "made" the commits (no user identity is needed or used).
IDENTITY = ("ICF deposit_visit_dataset", "icf-utils@localhost")


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


def _failure(repo: Path, what: str, stderr: bytes, status: int) -> IcfError:
    """IcfError ``<repo>: git <what> failed: <git's last error line>``."""
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return IcfError(f"{repo}: git {what} failed: {lines[-1] if lines else status}")


def run_git(repo: Path, env: dict[str, str], *args: str, input: bytes | None = None) -> bytes:
    """``git <args>`` in ``repo``; its output, or IcfError with git's last error line."""
    with git_process(repo, env, list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE) as process:
        out, err = process.communicate(input)
    if process.returncode != 0:
        raise _failure(repo, " ".join(args[:2]), err, process.returncode)
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
            # DataLad (in the datalad-annex push helper) makes its SSH socket
            # directory under ~/.cache; a cluster job may have no writable HOME
            DATALAD_LOCATIONS_SOCKETS=str(workdir / "datalad-sockets"),
        )

    def git(self, *args: str, input: bytes | None = None) -> bytes:
        return run_git(self.repo, self.env, *args, input=input)

    def init(self, description: str, config: dict[str, str]) -> None:
        """``git init`` and ``git annex init <description>`` with ``config`` set before."""
        self.repo.mkdir()
        self.git("init", "-q", "--initial-branch=main", "--template=")
        for name, value in config.items():
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
            assert stream is not None

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
                raise _failure(self.repo, "fast-import", errors.read(), process.returncode)

    def push(self, url: str) -> None:
        self.git("remote", "add", "deposit", url)
        self.git("push", "-q", "deposit", "main", "git-annex")


def _quoted(path: str) -> str:
    """A path in git's C-style quotes (fast-import accepts it for any name)."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


class BuildDir:
    """``.<visit>_XDLRA.build`` in the study directory: locked while a run
    uses it, emptied first (a killed run's leftovers), removed at the end."""

    def __init__(self, visit: Visit):
        self.path = visit.study_dir / f".{visit.visit}_XDLRA.build"
        self._stack = ExitStack()

    def __enter__(self) -> Path:
        try:
            with doing("preparing the build directory"):
                self.path.mkdir(exist_ok=True)
                self._stack.enter_context(locked(
                    self.path, wait=False, busy="another run is building this deposit right now"))
                for entry in self.path.iterdir():
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except BaseException:
            self._stack.close()
            raise
        return self.path

    def __exit__(self, *exc_info: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._stack.close()
