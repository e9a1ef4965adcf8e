"""Visit archives: writing a visit's files as a reproducible TAR, and reading
such a TAR back member by member in one pass (or its headers alone).

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
from typing import Any, BinaryIO, Iterator, Protocol

from icf import IcfError, doing

BLOCK = 512
RECORD = 20 * BLOCK
#: The largest mtime a ustar header holds (11 octal digits): 2242-03-16.
MAX_MTIME = 8**11 - 1
_MAX_USTAR_SIZE = 8**11 - 1
_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputFile:
    """A regular file to archive: where it is, where it goes, how big it is.

    ``outside`` is where a symlink leads when that is outside the input
    directory: the file is archived, but the operator is told (step 1's
    warning), as its content was not where the visit's files are.
    """

    source: Path
    member: str
    size: int
    outside: Path | None = None


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


class Hashing:
    """Wraps a file (or anything with ``read`` or ``write``) and MD5-hashes
    and counts every byte read or written through it: the one place the
    md5 of an archive or a member is computed."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.md5 = hashlib.md5()
        self.size = 0

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        self.md5.update(data)
        self.size += len(data)
        return data

    def write(self, data: bytes) -> None:
        self.stream.write(data)
        self.md5.update(data)
        self.size += len(data)

    def skip(self, n: int) -> int:
        """Read and hash the next ``n`` bytes, a chunk at a time; return how
        many there were (fewer at the end of the file)."""
        done = 0
        while done < n and (chunk := self.read(min(_CHUNK, n - done))):
            done += len(chunk)
        return done

    def read_to_end(self) -> None:
        while self.read(_CHUNK):
            pass

    def hexdigest(self) -> str:
        return self.md5.hexdigest()


def write_archive(files: list[InputFile], mtimes: list[int], out: Hashing) -> Iterator[InputFile]:
    """Write ``files`` with ``mtimes`` (same order) as a complete TAR to
    ``out``, yielding each file once it is written; the TAR is complete when
    the generator is exhausted.

    Each file's content is streamed; a file whose size changed since it was
    collected is an error (the archive would not hold what was seen)."""
    for item, mtime in zip(files, mtimes, strict=True):
        for block in member_headers(item.member, item.size, mtime):
            out.write(block)
        copied = 0
        with open_regular(item.source) as source:
            while True:
                with doing("reading", item.source):
                    chunk = source.read(_CHUNK)
                if not chunk:
                    break
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

#: The most a pax extended header or a GNU long name may hold. Step 1 writes
#: one ``path`` record (a path is at most a few KiB), so anything near this
#: is not an archive of ours, and reading it whole must not take the
#: machine's memory.
MAX_EXTENDED_HEADER = 1 << 20


class _SeekingReader:
    """Reads from ``raw`` and seeks over skipped bytes: for reading headers
    only, at a cost that does not grow with the members' sizes. ``size``
    counts the bytes read or skipped."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.size = 0
        self.end = os.fstat(raw.fileno()).st_size

    def read(self, n: int) -> bytes:
        data = self.raw.read(n)
        self.size += len(data)
        return data

    def skip(self, n: int) -> int:
        """Seek over the next ``n`` bytes; return how many there were. Never
        past the end of the file (a missing tail is truncation, which the
        caller reports) and never backwards (``n`` < 0 skips nothing)."""
        done = max(0, min(n, self.end - self.size))
        self.raw.seek(done, os.SEEK_CUR)
        self.size += done
        return done


class _Source(Protocol):
    size: int

    def read(self, n: int) -> bytes: ...

    def skip(self, n: int) -> int: ...


@dataclass(frozen=True)
class TarEntry:
    """A member as its header describes it (the content follows it)."""

    path: str
    size: int
    mtime: int
    is_dir: bool
    offset: int  # where the content starts, in bytes from the start of the TAR


class MemberContent:
    """A member's content as :func:`iter_tar` hands it out: ``read(n)``
    gives the next at most ``n`` bytes, never past the member's end."""

    def __init__(self, source: Hashing, entry: TarEntry, name: str):
        self._source, self._entry, self._name = source, entry, name
        self._remaining = entry.size

    def read(self, n: int) -> bytes:
        if n < 0:  # a file's read(-1) reads all; a member must come in bounded pieces
            raise ValueError(f"read({n}): the size must be >= 0")
        wanted = min(n, self._remaining)
        data = self._source.read(wanted)
        if len(data) < wanted:
            raise _corrupted(self._name, f"truncated at byte {self._source.size}, "
                                         f"in member {self._entry.path!r}")
        self._remaining -= wanted
        return data


def iter_tar(source: Hashing, name: str) -> Iterator[tuple[TarEntry, MemberContent]]:
    """Yield each file and directory member of the TAR that ``source`` reads,
    with its :class:`MemberContent`, in one sequential pass.

    Whatever the consumer does not read of a member is read and skipped for
    it, and the archive's end (zero blocks and padding) is read too, so that
    ``source`` has hashed the whole file when the generator is exhausted.
    Accepts ustar, pax (``x`` records ``path`` and ``size``) and GNU long
    names. Anything else raises IcfError naming ``name``, in time bounded by
    the file's size and memory bounded by :data:`MAX_EXTENDED_HEADER`:
    "not a valid archive: ..." for a file that is not a TAR or
    holds what step 1 never writes (links, devices, FIFOs, sparse files,
    global pax headers, names that are not UTF-8 or hold NUL), "archive
    corrupted: ..." for damage (a bad checksum or number, a malformed pax
    record, truncation, data after the end).
    """
    for entry in _entries(source, name):
        yield entry, MemberContent(source, entry, name)


def latest_member_mtime(path: Path) -> int:
    """The largest mtime of the file and directory members of the TAR at
    ``path`` (0 if it has none), from their headers alone.

    Member contents are seeked over, not read, so the cost does not grow
    with the members' sizes. The headers are checked exactly as by
    :func:`iter_tar`, with the same IcfError messages.
    """
    try:
        with open(path, "rb") as raw:
            return max((entry.mtime for entry in _entries(_SeekingReader(raw), str(path))), default=0)
    except OSError as exc:
        raise IcfError(f"{path}: reading the archive: {exc.strerror or exc}") from None


def _entries(source: _Source, name: str) -> Iterator[TarEntry]:
    """Parse the headers of the TAR that ``source`` reads (see
    :func:`iter_tar` for what is accepted) and yield each file and
    directory member with ``source`` at the start of its content.

    The consumer may read part of the content, never more, before resuming
    the generator, which then skips the rest and the padding: how much is
    counted from ``source.size``, so it never goes backwards.
    """
    extended: dict[bytes, bytes] = {}  # path/size for the next member, from pax or GNU headers
    extended_at = 0
    while True:
        at = source.size
        header = source.read(BLOCK)
        if len(header) < BLOCK:
            raise (_invalid(name, "empty file, not a TAR") if at == 0 == len(header)
                   else _invalid(name, f"not a TAR file ({len(header)} bytes)") if at == 0
                   else _corrupted(name, f"truncated at byte {at + len(header)}, in a header"))
        if header == bytes(BLOCK):
            if extended:
                raise _corrupted(name, f"extended header at byte {extended_at} is not followed by a member")
            break
        if not _checksum_ok(header):
            raise (_invalid(name, "not a TAR file (no TAR header at its start)") if at == 0
                   else _corrupted(name, f"header checksum mismatch at byte {at}"))
        typeflag = header[156:157]
        size = _header_number(header, "size", name, at)
        if typeflag in (b"x", b"L"):
            if size > MAX_EXTENDED_HEADER:
                raise _invalid(name, f"extended header of {size} bytes at byte {at} "
                                     f"(at most {MAX_EXTENDED_HEADER} are read)")
            padded = size + -size % BLOCK
            data = source.read(padded)
            if len(data) < padded:
                raise _corrupted(name, f"truncated at byte {source.size}, in the extended header at byte {at}")
            if typeflag == b"L":
                extended[b"path"] = data[:size].rstrip(b"\0")
            else:
                extended.update(_pax_records(data[:size], name, at))
            extended_at = at
            continue
        if typeflag not in (b"0", b"\0", b"7", b"5"):
            raise _invalid(name, f"member of type {typeflag.decode('ascii', 'replace')!r} at byte {at} "
                                 "(link, device, FIFO or other non-file)")
        if any(key.startswith(b"GNU.sparse.") for key in extended):
            raise _invalid(name, f"sparse member at byte {at}")
        if b"size" in extended:
            size = _pax_size(extended[b"size"], name, extended_at)
        path = _member_name(extended.get(b"path") or _ustar_path(header), name, at)
        mtime = _header_number(header, "mtime", name, at)
        if mtime > MAX_MTIME:
            raise _invalid(name, f"mtime {mtime} at byte {at} is after 2242")
        extended = {}
        start = source.size
        yield TarEntry(path, size, mtime, typeflag == b"5", start)
        rest = size + -size % BLOCK - (source.size - start)
        if source.skip(rest) < rest:
            raise _corrupted(name, f"truncated at byte {source.size}, in member {path!r}")
    _check_end(source, name)


def _check_end(source: _Source, name: str) -> None:
    """After the first zero block: the second one, then only zero padding
    up to the end of the file (read in bounded chunks)."""
    if len(source.read(BLOCK)) < BLOCK:
        raise _corrupted(name, f"truncated at byte {source.size}, in the end-of-archive marker")
    while chunk := source.read(RECORD):
        if any(chunk):
            offset = source.size - len(chunk.lstrip(b"\0"))
            raise _corrupted(name, f"data after the end of the archive, at byte {offset}")
        if len(chunk) % BLOCK:
            raise _corrupted(name, f"the file ends inside a block, at byte {source.size}")


def _invalid(name: str, what: str) -> IcfError:
    """Not a TAR, or one holding what step 1 never writes."""
    return IcfError(f"{name}: not a valid archive: {what}")


def _corrupted(name: str, what: str) -> IcfError:
    """A TAR damaged after it was written: bytes changed, lost or added."""
    return IcfError(f"{name}: archive corrupted: {what}")


def _checksum_ok(header: bytes) -> bool:
    try:
        stored = _octal(header[148:156])
    except ValueError:
        return False
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
    return stored in (unsigned, signed)


_FIELDS = {"size": (124, 136), "mtime": (136, 148)}


def _header_number(header: bytes, field: str, name: str, at: int) -> int:
    """The ``size`` or ``mtime`` field of the header at byte ``at``: octal,
    or GNU base-256 (first byte 0x80, positive; 0xff is negative, which no
    size or mtime of ours is)."""
    start, end = _FIELDS[field]
    raw = header[start:end]
    if raw[0] == 0x80:
        return int.from_bytes(raw[1:], "big")
    if raw[0] == 0xFF:
        raise _corrupted(name, f"negative {field} in the header at byte {at}")
    try:
        return _octal(raw)
    except ValueError:
        raise _corrupted(name, f"{field} in the header at byte {at} is not a number") from None


def _octal(field: bytes) -> int:
    """An octal number field: digits up to a NUL or the end, spaces around
    them allowed, empty meaning 0; ValueError for anything else (int()
    alone would take signs, underscores and ``0o``)."""
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if digits.strip(b"01234567"):
        raise ValueError(f"not an octal number: {field!r}")
    return int(digits or b"0", 8)


def _ustar_path(header: bytes) -> bytes:
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:263] == b"ustar\0" else b""
    return prefix + b"/" + name if prefix else name


def _member_name(raw: bytes, name: str, at: int) -> str:
    """A member's path, which must be UTF-8 without NUL: step 1 refuses
    other names, and they could not be written to JSON faithfully."""
    if b"\0" in raw:
        raise _invalid(name, f"the name of the member at byte {at} contains NUL")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(name, f"the name of the member at byte {at} is not valid UTF-8") from None


def _pax_records(data: bytes, name: str, at: int) -> dict[bytes, bytes]:
    """The records of the pax extended header at byte ``at``, each
    ``<length> <key>=<value>\\n`` with ``length`` counting the whole record.

    Each record must end within ``data`` and after its own length field, so
    the loop advances on every record and ends.
    """
    records = {}
    pos = 0
    while pos < len(data):
        length, space, _ = data[pos:pos + 21].partition(b" ")
        end = pos + int(length) if space and length.isdigit() else -1
        if not pos + len(length) + 1 < end <= len(data) or data[end - 1:end] != b"\n":
            raise _corrupted(name, f"malformed pax record at byte {at + BLOCK + pos}")
        key, equals, value = data[pos + len(length) + 1:end - 1].partition(b"=")
        if not equals:
            raise _corrupted(name, f"pax record without '=' at byte {at + BLOCK + pos}")
        records[key] = value
        pos = end
    return records


def _pax_size(value: bytes, name: str, at: int) -> int:
    if not value.isdigit() or len(value) > 20:  # 20 digits: far beyond any file (and int()'s limit)
        raise _corrupted(name, f"size record of the pax header at byte {at} is not a number of bytes")
    return int(value)
