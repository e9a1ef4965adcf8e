"""Visit archives: collecting a visit's files, writing them as a reproducible
TAR, and reading such a TAR back member by member in one pass.

The archive format (the same bytes for the same files on every machine):

- POSIX.1-2001 (pax) TAR: every member has a ustar header; a pax extended
  header (named ``././@PaxHeader``, typeflag ``x``) precedes a member only
  when its path is not ASCII or does not fit the ustar name/prefix fields,
  and then holds just that ``path`` record (and ``size`` above 8 GiB).
- Regular file members only (no directory, link or device entries), each at
  ``<study>_<visit>/<path relative to the input directory>``; mode 0644,
  uid/gid 0, uname/gname ``root``, devmajor/devminor 0, an integer mtime.
- Members sorted by path, compared component by component as UTF-8 bytes
  (the order of ``tar --sort=name``: a directory's files come at the place
  of the directory's name).
- Closed by two zero blocks and padded to a multiple of 10240 bytes.

Nothing in a header comes from the machine, the run, or the input files'
owners, modes, atimes, ctimes or mtimes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from icf import IcfError

BLOCK = 512
RECORD = 20 * BLOCK
#: The largest mtime a ustar header holds (11 octal digits): 2242-03-16.
MAX_MTIME = 8**11 - 1
_MAX_USTAR_SIZE = 8**11 - 1
_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputFile:
    """A regular file to archive: where it is, where it goes, how big it is."""

    source: Path
    member: str
    size: int


@dataclass(frozen=True)
class Member:
    """One member read back from an archive, see :func:`iter_members`."""

    path: str
    size: int
    mtime: int
    md5: str


# -- collecting the input ---------------------------------------------------


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
    _walk(input_dir, (), top, found, problems)
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise IcfError(f"cannot archive faithfully: {shown}{more}")
    if not found:
        raise IcfError(f"{input_dir}: no regular file to archive")
    found.sort(key=lambda item: item[0])
    return [item for _, item in found]


def _walk(directory: Path, parts: tuple[bytes, ...], top: str,
          found: list, problems: list[str]) -> None:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: os.fsencode(e.name))
    except OSError as exc:
        problems.append(f"{directory}: cannot list directory ({exc.strerror})")
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            name = entry.name.encode("utf-8")
        except UnicodeEncodeError:
            problems.append(f"{os.fsencode(entry.path)!r}: file name is not valid UTF-8")
            continue
        try:
            info = os.stat(path)  # follows symlinks
        except OSError as exc:
            kind = "dangling or looping symlink" if entry.is_symlink() else exc.strerror
            problems.append(f"{path}: {kind}")
            continue
        if stat.S_ISDIR(info.st_mode):
            if entry.is_symlink():
                problems.append(f"{path}: symlink to a directory")
            else:
                _walk(path, parts + (name,), top, found, problems)
        elif stat.S_ISREG(info.st_mode):
            member = "/".join([top, *(p.decode() for p in parts), entry.name])
            found.append((parts + (name,), InputFile(path, member, info.st_size)))
        else:
            problems.append(f"{path}: not a regular file (FIFO, socket or device)")


def open_regular(path: Path) -> BinaryIO:
    """Open a file for reading, refusing anything but a regular file without
    blocking on a FIFO that took its place."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise IcfError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IcfError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb", buffering=0)


# -- writing -----------------------------------------------------------------


class HashingWriter:
    """Writes to ``out`` and hashes (MD5) and counts every byte written."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.md5.update(data)
        self.size += len(data)


def write_archive(files: list[InputFile], mtimes: list[int], out: HashingWriter) -> Iterator[InputFile]:
    """Write ``files`` with ``mtimes`` (same order) as a complete TAR to
    ``out``, yielding each file once it is written; the TAR is complete when
    the generator is exhausted.

    Each file's content is streamed; a file whose size changed since it was
    collected is an error (the archive would not hold what was seen)."""
    for item, mtime in zip(files, mtimes):
        for block in member_headers(item.member, item.size, mtime):
            out.write(block)
        copied = 0
        with open_regular(item.source) as source:
            while chunk := source.read(_CHUNK):
                copied += len(chunk)
                if copied > item.size:
                    break
                out.write(chunk)
        if copied != item.size:
            raise IcfError(f"{item.source}: file changed while being archived")
        if item.size % BLOCK:
            out.write(bytes(BLOCK - item.size % BLOCK))
        yield item
    out.write(bytes(2 * BLOCK))
    if out.size % RECORD:
        out.write(bytes(RECORD - out.size % RECORD))


def member_headers(path: str, size: int, mtime: int) -> list[bytes]:
    """The header block(s) of a regular file member: a pax extended header
    first only if the ustar fields cannot hold ``path`` or ``size``."""
    if not 0 <= mtime <= MAX_MTIME:
        raise ValueError(f"mtime {mtime} outside what a TAR header holds")
    encoded = path.encode("utf-8")
    records = {}
    split = _ustar_split(encoded) if path.isascii() else None
    if split is None:
        records["path"] = encoded
        split = (b"", encoded.decode("ascii", "replace").encode()[-100:])
    if size > _MAX_USTAR_SIZE:
        records["size"] = str(size).encode()
    blocks = []
    if records:
        payload = b"".join(_pax_record(key, value) for key, value in records.items())
        blocks.append(_ustar_header(b"", b"././@PaxHeader", len(payload), mtime, b"x"))
        blocks.append(payload + bytes(-len(payload) % BLOCK))
    blocks.append(_ustar_header(*split, min(size, _MAX_USTAR_SIZE), mtime, b"0"))
    return blocks


def _ustar_split(path: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) fields for ``path``, or None if it does not fit."""
    if len(path) <= 100:
        return b"", path
    for cut in range(min(len(path) - 1, 155), 0, -1):
        if path[cut:cut + 1] == b"/" and len(path) - cut - 1 <= 100:
            return path[:cut], path[cut + 1:]
    return None


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode() + body) != length:
        length += 1
    return str(length).encode() + body


def _ustar_header(prefix: bytes, name: bytes, size: int, mtime: int, typeflag: bytes) -> bytes:
    def octal(value: int, width: int) -> bytes:
        return b"%0*o\0" % (width - 1, value)

    fields = [
        name.ljust(100, b"\0"), octal(0o644, 8), octal(0, 8), octal(0, 8),
        octal(size, 12), octal(mtime, 12), b" " * 8, typeflag, bytes(100),
        b"ustar\x0000", b"root".ljust(32, b"\0"), b"root".ljust(32, b"\0"),
        octal(0, 8), octal(0, 8), prefix.ljust(155, b"\0"), bytes(12),
    ]
    header = b"".join(fields)
    checksum = b"%06o\0 " % sum(header)
    return header[:148] + checksum + header[156:]


# -- reading -------------------------------------------------------------------


class HashingReader:
    """Reads from ``raw`` and hashes (MD5) and counts every byte read."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.md5 = hashlib.md5()
        self.size = 0

    def read(self, n: int) -> bytes:
        data = self.raw.read(n)
        self.md5.update(data)
        self.size += len(data)
        return data

    def read_exactly(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise IcfError(f"{what}: archive is truncated")
        return data


@dataclass(frozen=True)
class TarEntry:
    """A member as its header describes it (the content follows it)."""

    path: str
    size: int
    mtime: int
    is_dir: bool


def iter_tar(source: HashingReader, name: str) -> Iterator[tuple[TarEntry, Callable[[int], bytes]]]:
    """Yield each file and directory member of the TAR that ``source`` reads,
    with ``read(n)`` for the member's content, in one sequential pass.

    Whatever the consumer does not read of a member is read and skipped for
    it, and the archive's end (zero blocks and padding) is read too, so that
    ``source`` has hashed the whole file when the generator is exhausted.
    Accepts ustar, pax (``x`` records ``path`` and ``size``) and GNU long
    names; any other member type (links, devices, FIFOs, sparse files,
    global pax headers), a bad checksum, a truncated or non-TAR file raise
    IcfError naming ``name``.
    """
    long_path = None
    pax: dict[str, str] = {}
    while True:
        header = source.read(BLOCK)
        if not header:
            raise IcfError(f"{name}: {'empty file, not a TAR' if source.size == 0 else 'archive is truncated'}")
        if len(header) != BLOCK:
            raise IcfError(f"{name}: archive is truncated")
        if header == bytes(BLOCK):
            break
        if not _checksum_ok(header):
            what = "not a TAR archive" if source.size == BLOCK else f"corrupt header at byte {source.size - BLOCK}"
            raise IcfError(f"{name}: {what}")
        typeflag = header[156:157]
        try:
            size = _number(header[124:136])
        except ValueError:
            raise IcfError(f"{name}: corrupt header at byte {source.size - BLOCK}") from None
        if typeflag in (b"x", b"L"):
            data = source.read_exactly(size + (-size % BLOCK), name)[:size]
            if typeflag == b"L":
                long_path = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            else:
                pax = _pax_records(data, name)
            continue
        if typeflag not in (b"0", b"\0", b"7", b"5"):
            raise IcfError(f"{name}: member of type {typeflag.decode('ascii', 'replace')!r} "
                           f"(link, device, FIFO or other non-file) in the archive")
        path = pax.get("path") or long_path or _ustar_path(header)
        size = int(pax.get("size", size))
        entry = TarEntry(path, size, _number(header[136:148]), typeflag == b"5")
        pax, long_path = {}, None
        remaining = size

        def read(n: int) -> bytes:
            nonlocal remaining
            data = source.read(min(n, remaining))
            if len(data) < min(n, remaining):
                raise IcfError(f"{name}: archive is truncated in {path}")
            remaining -= len(data)
            return data

        yield entry, read
        while remaining:
            read(_CHUNK)
        source.read_exactly(-size % BLOCK, name)
    while chunk := source.read(RECORD):  # the second zero block and padding
        if chunk.count(0) != len(chunk):
            raise IcfError(f"{name}: data after the end of the archive")


def _checksum_ok(header: bytes) -> bool:
    try:
        stored = int(header[148:156].rstrip(b" \0").decode("ascii") or "-1", 8)
    except ValueError:
        return False
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
    return stored in (unsigned, signed)


def _number(field: bytes) -> int:
    """An octal header field, or GNU base-256 (high bit set)."""
    if field[0] & 0x80:
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    return int(field.rstrip(b" \0").decode("ascii") or "0", 8)


def _ustar_path(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:263] == b"ustar\0" else b""
    return (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")


def _pax_records(data: bytes, name: str) -> dict[str, str]:
    records = {}
    while data:
        length = data.partition(b" ")[0]
        try:
            record = data[len(length) + 1:int(length)]
        except ValueError:
            raise IcfError(f"{name}: corrupt pax header") from None
        key, _, value = record.rstrip(b"\n").partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        data = data[int(length):]
    return records
