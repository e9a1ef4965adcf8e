"""``tarslice``: a git-annex special remote that gets a DICOM's bytes by
range from its visit's TAR, instead of the whole TAR.

Our archives are uncompressed, so each member's content lies at a fixed
byte offset (recorded by step 2 as ``offset`` in the DICOM list). Step 3
gives every DICOM's key, beside its archivist locator, a locator

    ``tarslice:<key of the TAR>#offset=<offset>&size=<size>``

and marks the key present in this remote, at a lower cost than archivist
(:data:`COST`). To retrieve a key, the remote asks git-annex for the key's
locator (``GETURLS``) and for the URLs of the TAR's key (its uncurl URL in
the store), then reads exactly the member's span:

- ``file://`` URLs: a seek and a read;
- ``http(s)://`` URLs: one GET with ``Range: bytes=<first>-<last>`` over a
  session kept for the process (``datalad get`` of many files reuses the
  connection), with the credentials datalad-next's uncurl would use (its
  ``DataladAuth``: the credential system, matched by realm).

What is accepted as the TAR: a file, ``Content-Range`` total or 200's
``Content-Length`` equal to the size in the TAR's key (another file at the
URL is refused). A server that ignores Range (200 with the whole TAR) is
read up to the member's end and no further, once per process and only for
a member in the first :data:`MAX_SKIP` bytes: after that the remote fails
at once for that URL, so that git-annex falls back to archivist, which
downloads the TAR once, instead of this remote downloading its beginning
for every member.

The bytes are checked against the key's size and MD5 before the transfer is
reported a success (git-annex checks them again), so a wrong span never
becomes content: git-annex then tries the next remote, archivist, which
downloads the whole TAR. A client without this remote installed never uses
it: git-annex skips a remote whose program it cannot run, and archivist
serves the same keys.

``checkpresent`` (what ``git annex drop`` relies on) asks for the span's
last byte and checks the TAR's size; it answers "unknown" when no URL could
be asked. Every message to git-annex is one line, whatever a URL or a
server sends (the protocol is line based). A server that sends nothing for
:data:`TIMEOUT` seconds, or less than :data:`MIN_RATE` on average, fails
the transfer.

The remote is read-only (it cannot store or remove). It starts in ~30 ms,
importing neither DataLad nor requests until an HTTP transfer needs them:
``git annex init`` (part of ``datalad clone``) starts it four times in every
clone, once per question (EXPORTSUPPORTED, IMPORTSUPPORTED, INITREMOTE,
GETCOST; measured with git-annex 10.20261026). It imports nothing else from
icf-utils, so that ``pip install`` of this repository gives
researchers this one module and its executable ``git-annex-remote-tarslice``.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any, BinaryIO, Callable, Iterator, NamedTuple
from urllib.parse import unquote, urlsplit

from annexremote import Master, RemoteError, SpecialRemote

#: The remote's name, type and locator prefix.
NAME = "tarslice"
PREFIX = f"{NAME}:"
#: git-annex's semiExpensiveRemoteCost, below the 200 that archivist and
#: uncurl get by not answering GETCOST.
COST = 175
#: The TAR URLs it reads from.
SCHEMES = ("file", "http", "https")
CHUNK = 1 << 16
#: Seconds to wait for a server to connect or send the next bytes.
TIMEOUT = 60
#: The slowest a transfer may be on average, in bytes per second (after
#: TIMEOUT seconds of grace): a server sending a byte now and then cannot
#: hold a ``datalad get`` forever.
MIN_RATE = 64 << 10
#: How far into a TAR a member may start for the remote to read up to it
#: when the server ignores Range (beyond, archivist's one download is cheaper).
MAX_SKIP = 64 << 20

_NUMBER = r"[0-9]{1,18}"  # below 2**63: what a file offset can be
_LOCATOR = re.compile(rf"tarslice:(?P<tar_key>[^#\s]+)#offset=(?P<offset>{_NUMBER})&size=(?P<size>{_NUMBER})")
_KEY = re.compile(rf"(?P<backend>[A-Z0-9]+)-s(?P<size>{_NUMBER})(?:-[a-zA-Z][0-9]+)*--(?P<name>[^\s/]+)")


def one_line(text: str) -> str:
    """``text`` fit for git-annex's line protocol: line breaks spelled ``\\n``."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def key_fields(key: str) -> re.Match[str]:
    """A git-annex key's ``backend``, ``size`` and ``name``; RemoteError for
    a key without a size (ours all have one; without, a server could fill
    the disk)."""
    match = _KEY.fullmatch(key)
    if not match:
        raise RemoteError(f"not a git-annex key with a size: {key!r}")
    return match


class Span(NamedTuple):
    """Where a member's content lies: bytes ``offset`` to ``offset + size - 1``
    of the TAR whose annex key is ``tar_key``."""

    tar_key: str
    offset: int
    size: int

    @property
    def locator(self) -> str:
        return f"{PREFIX}{self.tar_key}#offset={self.offset}&size={self.size}"

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def tar_size(self) -> int:
        return int(key_fields(self.tar_key)["size"])

    @staticmethod
    def parse(locator: str) -> Span:
        match = _LOCATOR.fullmatch(locator)
        if not match:
            raise RemoteError(f"not a {NAME} locator: {locator!r}")
        span = Span(match["tar_key"], int(match["offset"]), int(match["size"]))
        if span.end > span.tar_size:
            raise RemoteError(f"{locator!r} lies beyond the end of its TAR")
        return span


class _Content:
    """Writes a member's bytes to ``out``, checking them against the key:
    :meth:`check` raises RemoteError unless exactly the key's size arrived
    with the key's MD5 (for MD5 and MD5E keys)."""

    def __init__(self, key: str, span: Span, out: BinaryIO, progress: Callable[[int], None]):
        import hashlib  # here, not at the start: git-annex starts the remote 4 times in every clone

        fields = key_fields(key)
        if int(fields["size"]) != span.size:
            raise RemoteError(f"{key}: its locator says {span.size} bytes")
        self.key, self.span, self.out, self.progress = key, span, out, progress
        self.md5 = fields["name"].split(".", 1)[0] if fields["backend"] in ("MD5", "MD5E") else None
        self.hash = hashlib.md5()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.hash.update(data)
        self.size += len(data)
        self.progress(self.size)

    def check(self, source: str) -> None:
        if self.size != self.span.size:
            raise RemoteError(f"{source}: {self.size} of the {self.span.size} bytes at offset "
                              f"{self.span.offset} arrived")
        if self.md5 is not None and self.hash.hexdigest() != self.md5:
            raise RemoteError(f"{source}: the bytes at offset {self.span.offset} are not {self.key} "
                              "(another TAR at this URL?)")


class FileSpans:
    """Spans of TARs at ``file://`` URLs: a seek and a read."""

    @staticmethod
    def _open(url: str, span: Span) -> BinaryIO | None:
        """The TAR, checked to be the span's TAR's size; None if missing."""
        path = unquote(urlsplit(url).path)
        try:
            tar = open(path, "rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RemoteError(f"{path!r}: {exc.strerror or exc}") from None
        size = tar.seek(0, 2)
        if size != span.tar_size:
            tar.close()
            raise RemoteError(f"{path!r} has {size} bytes, not the {span.tar_size} of {span.tar_key}")
        return tar

    def read(self, url: str, content: _Content) -> None:
        tar = self._open(url, content.span)
        if tar is None:
            raise RemoteError(f"{url}: no such file")
        with tar:
            try:
                tar.seek(content.span.offset)
                left = content.span.size
                while left and (data := tar.read(min(CHUNK, left))):
                    content.write(data)
                    left -= len(data)
            except OSError as exc:
                raise RemoteError(f"{url}: {exc.strerror or exc}") from None

    def holds(self, url: str, span: Span) -> bool:
        tar = self._open(url, span)
        if tar is not None:
            tar.close()
        return tar is not None


class HttpSpans:
    """Spans of TARs at ``http(s)://`` URLs: ranged GETs over one session,
    authenticated as uncurl would be."""

    def __init__(self) -> None:
        import requests  # with datalad-next: only for HTTP, not at every start
        import urllib3
        from datalad import cfg
        from datalad_next.utils import DataladAuth

        self.session = requests.Session()
        self.session.auth = self.auth = DataladAuth(cfg)
        self.errors = (requests.RequestException, urllib3.exceptions.HTTPError, ValueError)
        self.ignoring_range: set[str] = set()  # URLs answered with 200 to a ranged GET

    def _get(self, url: str, span: Span, first: int, last: int) -> Any:
        """The response to ``GET url`` for bytes ``first``-``last`` (to be
        used as a context manager): 206 for exactly those bytes of a file of
        the span's TAR's size, 200 with that size (Range ignored), or 404;
        RemoteError for anything else."""
        headers = {"Range": f"bytes={first}-{last}", "Accept-Encoding": "identity"}
        response = self.session.get(url, headers=headers, stream=True, timeout=TIMEOUT)
        status = response.status_code
        if status == 206:
            served = response.headers.get("Content-Range", "")
            wrong = f"answered with {served!r}" if served != f"bytes {first}-{last}/{span.tar_size}" else None
        elif status == 200:
            length = response.headers.get("Content-Length", "")
            wrong = f"answered 200 with {length!r} bytes" if length != str(span.tar_size) else None
        elif status == 404:
            wrong = None
        else:
            wrong = f"answered {status} {response.reason}"
        if wrong:
            response.close()
            raise RemoteError(f"{url}: asked for bytes {first}-{last} of the {span.tar_size} of "
                              f"{span.tar_key}, {wrong}")
        return response

    def read(self, url: str, content: _Content) -> None:
        span = content.span
        if url in self.ignoring_range:
            raise RemoteError(f"{url}: the server ignores Range (archivist gets the whole TAR once)")
        try:
            with self._get(url, span, span.offset, span.end - 1) as response:
                if response.status_code == 404:
                    raise RemoteError(f"{url}: HTTP 404 {response.reason}")
                skip = 0
                if response.status_code == 200:  # the whole TAR follows
                    self.ignoring_range.add(url)
                    if span.offset > MAX_SKIP:
                        raise RemoteError(f"{url}: the server ignores Range, and the member starts "
                                          f"{span.offset} bytes in (archivist gets the whole TAR once)")
                    skip = span.offset
                _take(response.raw, skip, span.size, content)
        except self.errors as exc:
            raise RemoteError(f"{url}: {exc}") from None
        self.auth.save_entered_credential(context=f"download from {url}")

    def holds(self, url: str, span: Span) -> bool:
        """Whether the server has the span's TAR (its last byte, and the size)."""
        try:
            with self._get(url, span, span.end - 1, span.end - 1) as response:
                return response.status_code != 404
        except self.errors as exc:
            raise RemoteError(f"{url}: {exc}") from None


def _take(stream: Any, skip: int, size: int, content: _Content) -> None:
    """Read ``skip`` bytes of ``stream`` and drop them, then ``size`` bytes
    into ``content``; never more (the rest of a whole TAR stays unread), and
    RemoteError if it comes slower than :data:`MIN_RATE`. ``read1`` returns
    what has arrived, so the deadline is checked however slow the bytes."""
    deadline = time.monotonic() + TIMEOUT + (skip + size) / MIN_RATE
    for count, keep in ((skip, False), (size, True)):
        while count:
            data = stream.read1(min(CHUNK, count), decode_content=False)
            if not data:
                return
            if keep:
                content.write(data)
            count -= len(data)
            if time.monotonic() > deadline:
                raise RemoteError(f"slower than {MIN_RATE >> 10} KiB/s on average: given up")


class TarSliceRemote(SpecialRemote):
    """The special remote's answers to git-annex (see the module docstring)."""

    def __init__(self, annex: Any):
        super().__init__(annex)
        self._http: HttpSpans | None = None

    def _sources(self, key: str, failures: list[str]) -> Iterator[tuple[Span, str, FileSpans | HttpSpans]]:
        """(span, TAR URL, how to reach it) for each locator of ``key`` and
        each file or http(s) URL of its TAR; what is wrong with the others
        goes into ``failures``."""
        for locator in self.annex.geturls(key, PREFIX):
            try:
                span = Span.parse(locator)
            except RemoteError as exc:
                failures.append(str(exc))
                continue
            urls = [url for url in self.annex.geturls(span.tar_key, "") if urlsplit(url).scheme in SCHEMES]
            if not urls:
                failures.append(f"no file or http(s) URL of the TAR {span.tar_key}")
            for url in urls:
                yield span, url, self._source(urlsplit(url).scheme)

    def _source(self, scheme: str) -> FileSpans | HttpSpans:
        if scheme == "file":
            return FileSpans()
        if self._http is None:
            self._http = HttpSpans()
        return self._http

    def initremote(self) -> None:
        pass

    def prepare(self) -> None:
        pass

    def getcost(self) -> int:
        return COST

    def claimurl(self, url: str) -> bool:
        return url.startswith(PREFIX)

    def checkurl(self, url: str) -> bool:
        return _LOCATOR.fullmatch(url) is not None

    def transfer_retrieve(self, key: str, filename: str) -> None:
        failures: list[str] = []
        for span, url, source in self._sources(key, failures):
            try:
                with open(filename, "wb") as out:
                    content = _Content(key, span, out, self.annex.progress)
                    if span.size:
                        source.read(url, content)
                content.check(url)
                return
            except (RemoteError, OSError, ValueError, OverflowError) as exc:
                failures.append(str(exc))
        raise RemoteError(one_line("; ".join(failures) or f"{key}: no {NAME} locator"))

    def checkpresent(self, key: str) -> bool:
        """Whether a TAR the key's locators name is there, of its size and
        long enough to hold the span (``git annex drop`` asks before it
        drops a clone's copy); RemoteError (unknown) if a URL could not be
        asked and none had it. Its bytes are not read: that is ``git annex
        fsck --from tarslice``."""
        failures: list[str] = []
        for span, url, source in self._sources(key, failures):
            try:
                if source.holds(url, span):
                    return True
            except (RemoteError, OSError, ValueError, OverflowError) as exc:
                failures.append(str(exc))
        if failures:
            raise RemoteError(one_line("; ".join(failures)))
        return False

    def transfer_store(self, key: str, filename: str) -> None:
        raise RemoteError(f"{NAME} is read-only: it gets bytes from TARs in the store")

    def remove(self, key: str) -> None:
        raise RemoteError(f"{NAME} is read-only: it gets bytes from TARs in the store")


def main() -> None:
    """``git-annex-remote-tarslice``: speak git-annex's external special
    remote protocol on stdin and stdout."""
    master = Master()
    master.LinkRemote(TarSliceRemote(master))
    master.Listen()
    sys.exit(0)
