"""Output files that appear complete or not at all, and deterministic JSON
(and reading it back, with one-line errors).

A file is written under a hidden temporary name beside its final path
(``.<name>.partial``, so the rename never crosses a file system), flushed to
disk, and only then moved to its final name. A killed run leaves at most the
``.partial`` file, which the next run for the same output truncates and
reuses. The partial file is locked (``flock``) while it is written, so two
runs for the same output cannot interleave: the second one fails at once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

from icf import IcfError


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


class PartialFile:
    """A locked, empty temporary file for ``final``; see :meth:`commit`."""

    def __init__(self, final: Path):
        self.final = final
        self.path = partial_path(final)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # the inode we locked may have been renamed into place by the run
            # that held the lock before us: then it is not ours to truncate
            if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            raise IcfError(f"{final}: another run is writing it right now") from None
        os.ftruncate(fd, 0)
        self.file: BinaryIO = os.fdopen(fd, "wb", buffering=1 << 20)

    def commit(self, overwrite: bool = False) -> None:
        """Flush to disk and move into place; refuse an existing file unless ``overwrite``."""
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
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.file.close()

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
            partials[-1].file.write(data)
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
    except (OSError, ValueError) as exc:
        raise IcfError(f"{path}: unreadable JSON ({exc})") from None


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
