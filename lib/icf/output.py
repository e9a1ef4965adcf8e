"""Output files that appear complete or not at all, locks, and deterministic
JSON (and reading it back, with one-line errors).

A file is written under a hidden temporary name beside its final path
(``.<name>.partial``, so the rename never crosses a file system), flushed to
disk, and only then moved to its final name. A killed run leaves at most the
``.partial`` file, which the next run for the same output replaces (even if
another user left it). The partial file is locked (``flock``) while it is
written, so two runs for the same output cannot interleave: the second one
fails at once. Commits of files that belong together happen with SIGINT,
SIGTERM and SIGHUP held (:func:`signals_held`), so a signal lands before
the first rename or after the last, never between them.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from icf import IcfError, doing

#: The signals an operator stops a run with (Ctrl-C, kill/scancel, a closed terminal).
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold :data:`HELD_SIGNALS` inside; one that arrived meanwhile is
    delivered on leaving, once the block's work is complete."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def try_lock(fd: int, wait: bool = False) -> bool:
    """Take an exclusive ``flock`` on ``fd``; False if another holder has it
    and not ``wait``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


@contextmanager
def locked(path: Path, wait: bool, busy: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``, a directory or a lock file
    (created if missing).

    A lock file is opened read-only: flock needs no more, so a lock file
    another user created (and we cannot write) still works. Without
    ``wait``, a lock held by another run is IcfError ``<path>: <busy>``.
    """
    with doing("opening the lock file"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except IsADirectoryError:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not try_lock(fd, wait):
            raise IcfError(f"{path}: {busy}")
        yield
    finally:
        os.close(fd)


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


class PartialFile:
    """A locked, empty temporary file for ``final``; see :meth:`commit`."""

    def __init__(self, final: Path):
        self.final = final
        self.path = partial_path(final)
        with doing("creating a temporary file"):
            fd = self._open_locked()
        os.ftruncate(fd, 0)
        self.file: BinaryIO = os.fdopen(fd, "wb", buffering=1 << 20)

    def _open_locked(self) -> int:
        """The partial file, opened for writing and locked by us. One that
        no run holds but we cannot write (another user's leftover) is
        replaced, if the directory lets us."""
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except PermissionError as cannot_write:
                try:
                    fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise cannot_write from None  # the directory is not writable
                stale = True
            else:
                stale = False
            try:
                # the inode we locked may have been renamed into place, or
                # removed, by the run that held the lock before us
                ours = try_lock(fd) and os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                ours = False
            if not ours:
                os.close(fd)
                raise IcfError(f"{self.final}: another run is writing it right now")
            if not stale:
                return fd
            os.unlink(self.path)  # locked by us: no live run is writing it
            os.close(fd)

    def commit(self, overwrite: bool = False) -> None:
        """Flush to disk and move into place; refuse an existing file unless ``overwrite``."""
        with doing("writing"):
            self.file.flush()
            os.fsync(self.file.fileno())
            if overwrite:
                os.rename(self.path, self.final)
            else:
                try:
                    os.link(self.path, self.final)
                except FileExistsError:
                    self.discard()
                    raise IcfError(f"{self.final}: exists already, not overwritten") from None
                os.unlink(self.path)
            self.file.close()
            fsync_dir(self.final.parent)

    def discard(self) -> None:
        """Remove the partial file; nothing of it matters any more, so
        neither does a failure to flush its buffer (a full disk)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        try:
            self.file.close()
        except OSError:
            pass

    def __enter__(self) -> "PartialFile":
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.file.closed:
            self.discard()


def write_files(contents: dict[Path, bytes], overwrite: bool = False) -> None:
    """Write several files, none of them visible until all are complete.

    They are committed in the order given: put the one that marks the set as
    done last.
    """
    partials = []
    try:
        for final, data in contents.items():
            partials.append(PartialFile(final))
            with doing("writing"):
                partials[-1].file.write(data)
        with signals_held():
            for partial in partials:
                partial.commit(overwrite=overwrite)
    finally:
        for partial in partials:
            if not partial.file.closed:
                partial.discard()


def json_bytes(value: Any) -> bytes:
    """JSON as UTF-8 bytes, the same on every machine: the key order is the
    caller's, no ASCII escaping (locale-independent), one trailing newline."""
    return (json.dumps(value, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def read_json(path: Path, missing: str = "missing") -> Any:
    """The JSON value in ``path``; IcfError naming the file if it is
    ``missing`` (the caller's words) or not JSON."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise IcfError(f"{path}: {missing}") from None
    except OSError as exc:
        raise IcfError(f"{path}: reading: {exc.strerror}") from None
    except (ValueError, RecursionError) as exc:
        raise IcfError(f"{path}: not valid JSON ({type(exc).__name__}: {str(exc)[:100]})") from None


def fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot sync a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
