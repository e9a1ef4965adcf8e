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
- ``http(s)://`` URLs: one GET with ``Range: bytes=<first>-<last>``, with
  the credentials datalad-next's uncurl would use (its ``DataladAuth``: the
  credential system, matched by realm). A server that ignores the range and
  answers 200 with the whole TAR is read up to the member's end and no
  further; anything but 200 or a 206 for exactly the requested span is a
  failure.

The bytes are checked against the key's size and MD5 before the transfer is
reported a success (git-annex checks them again), so a wrong span never
becomes content: git-annex then tries the next remote, archivist, which
downloads the whole TAR. A client without this remote installed never uses
it: git-annex skips a remote whose program it cannot run, and archivist
serves the same keys.

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

_LOCATOR = re.compile(r"tarslice:(?P<tar_key>[^#\s]+)#offset=(?P<offset>[0-9]+)&size=(?P<size>[0-9]+)")
_KEY = re.compile(r"(?P<backend>[A-Z0-9]+)(?:-s(?P<size>[0-9]+))?(?:-[a-zA-Z][0-9]+)*--(?P<name>.+)")


class Span(NamedTuple):
    """Where a member's content lies: bytes ``offset`` to ``offset + size - 1``
    of the TAR whose annex key is ``tar_key``."""

    tar_key: str
    offset: int
    size: int

    @property
    def locator(self) -> str:
        return f"{PREFIX}{self.tar_key}#offset={self.offset}&size={self.size}"

    @staticmethod
    def parse(locator: str) -> Span:
        match = _LOCATOR.fullmatch(locator)
        if not match:
            raise RemoteError(f"not a {NAME} locator: {locator!r}")
        return Span(match["tar_key"], int(match["offset"]), int(match["size"]))


class _Content:
    """Writes a member's bytes to ``path``, checking them against the key:
    :meth:`check` raises RemoteError unless exactly the key's size arrived
    with the key's MD5 (for MD5 and MD5E keys)."""

    def __init__(self, key: str, span: Span, out: BinaryIO, progress: Callable[[int], None]):
        import hashlib  # here, not at the start: git-annex starts the remote 4 times in every clone

        match = _KEY.fullmatch(key)
        if not match:
            raise RemoteError(f"not a git-annex key: {key!r}")
        if match["size"] is not None and int(match["size"]) != span.size:
            raise RemoteError(f"{key}: its locator says {span.size} bytes")
        self.key, self.span, self.out, self.progress = key, span, out, progress
        self.md5 = match["name"].split(".", 1)[0] if match["backend"] in ("MD5", "MD5E") else None
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
                              f"{self.span.offset} (the TAR is shorter)")
        if self.md5 is not None and self.hash.hexdigest() != self.md5:
            raise RemoteError(f"{source}: the bytes at offset {self.span.offset} are not {self.key} "
                              "(another TAR at this URL?)")


class FileSpans:
    """Spans of TARs at ``file://`` URLs: a seek and a read."""

    @staticmethod
    def read(url: str, content: _Content) -> None:
        path = unquote(urlsplit(url).path)
        try:
            with open(path, "rb") as tar:
                tar.seek(content.span.offset)
                left = content.span.size
                while left and (data := tar.read(min(CHUNK, left))):
                    content.write(data)
                    left -= len(data)
        except OSError as exc:
            raise RemoteError(f"{path}: {exc.strerror or exc}") from None

    @staticmethod
    def holds(url: str, span: Span) -> bool:
        """Whether the file is there and long enough to hold ``span``."""
        path = unquote(urlsplit(url).path)
        try:
            with open(path, "rb") as tar:
                return tar.seek(0, 2) >= span.offset + span.size
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise RemoteError(f"{path}: {exc.strerror or exc}") from None


class HttpSpans:
    """Spans of TARs at ``http(s)://`` URLs: ranged GETs over one session
    (connections kept alive between the keys of a ``datalad get``),
    authenticated as uncurl would be."""

    def __init__(self) -> None:
        import requests  # with datalad-next: only for HTTP, not at every start
        from datalad import cfg
        from datalad_next.utils import DataladAuth

        self.session = requests.Session()
        self.session.auth = self.auth = DataladAuth(cfg)
        self.errors = (requests.RequestException,)

    def _get(self, url: str, first: int, last: int) -> Any:
        """The response to ``GET url`` for bytes ``first``-``last`` (to be
        used as a context manager): 206 for exactly those bytes, or 200 for
        the whole file (Range ignored); RemoteError for anything else but 404."""
        headers = {"Range": f"bytes={first}-{last}", "Accept-Encoding": "identity"}
        response = self.session.get(url, headers=headers, stream=True, timeout=TIMEOUT)
        served = response.headers.get("Content-Range", "")
        if response.status_code == 206 and not re.fullmatch(rf"bytes {first}-{last}/([0-9]+|\*)", served):
            response.close()
            raise RemoteError(f"{url}: asked for bytes {first}-{last}, answered with {served or 'no Content-Range'}")
        if response.status_code not in (200, 206, 404):
            response.close()
            raise RemoteError(f"{url}: HTTP {response.status_code} {response.reason}")
        return response

    def read(self, url: str, content: _Content) -> None:
        span = content.span
        try:
            with self._get(url, span.offset, span.offset + span.size - 1) as response:
                if response.status_code == 404:
                    raise RemoteError(f"{url}: HTTP 404 {response.reason}")
                skip = span.offset if response.status_code == 200 else 0  # 200: the whole TAR follows
                _take(response.raw, skip, span.size, content)
        except self.errors as exc:
            raise RemoteError(f"{url}: {exc}") from None
        self.auth.save_entered_credential(context=f"download from {url}")

    def holds(self, url: str, span: Span) -> bool:
        """Whether the server has the span's last byte (a one-byte ranged GET)."""
        end = span.offset + span.size
        try:
            with self._get(url, end - 1, end - 1) as response:
                return response.status_code == 206 or (
                    response.status_code == 200 and int(response.headers.get("Content-Length", -1)) >= end)
        except self.errors as exc:
            raise RemoteError(f"{url}: {exc}") from None


def _take(stream: Any, skip: int, size: int, content: _Content) -> None:
    """Read ``skip`` bytes of ``stream`` and drop them, then ``size`` bytes
    into ``content``; never more (the rest of a whole TAR stays unread)."""
    for count, keep in ((skip, False), (size, True)):
        while count:
            data = stream.read(min(CHUNK, count), decode_content=False)
            if not data:
                return
            if keep:
                content.write(data)
            count -= len(data)


class TarSliceRemote(SpecialRemote):
    """The special remote's answers to git-annex (see the module docstring)."""

    def __init__(self, annex: Any):
        super().__init__(annex)
        self._http: HttpSpans | None = None

    def _sources(self, key: str) -> Iterator[tuple[Span, str, FileSpans | HttpSpans]]:
        """(span, TAR URL, how to reach it) for each locator of ``key`` and
        each file or http(s) URL of its TAR; RemoteError if there is none."""
        found = False
        for locator in self.annex.geturls(key, PREFIX):
            span = Span.parse(locator)
            for url in self.annex.geturls(span.tar_key, ""):
                scheme = urlsplit(url).scheme
                if scheme in SCHEMES:
                    found = True
                    yield span, url, self._source(scheme)
        if not found:
            raise RemoteError(f"{key}: no {NAME} locator with a file or http(s) URL of its TAR")

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
        failures = []
        for span, url, source in self._sources(key):
            try:
                with open(filename, "wb") as out:
                    content = _Content(key, span, out, self.annex.progress)
                    source.read(url, content)
                content.check(url)
                return
            except RemoteError as exc:
                failures.append(str(exc))
        raise RemoteError("; ".join(failures))

    def checkpresent(self, key: str) -> bool:
        """Whether a TAR the key's locators name is there, long enough to
        hold the span (``git annex drop`` asks before it drops a clone's
        copy); RemoteError (unknown) if no URL answered. Its bytes are not
        read: that is ``git annex fsck --from tarslice``."""
        failures = []
        for span, url, source in self._sources(key):
            try:
                if source.holds(url, span):
                    return True
            except RemoteError as exc:
                failures.append(str(exc))
        if failures:
            raise RemoteError("; ".join(failures))
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
