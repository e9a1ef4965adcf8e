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
from typing import Any, BinaryIO, Callable, NamedTuple
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


def read_file_span(url: str, content: _Content) -> None:
    """The span from a ``file://`` URL's file."""
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


class HttpSpans:
    """Ranged GETs over one HTTP session (connections kept alive between
    the keys of a ``datalad get``), authenticated as uncurl would be."""

    def __init__(self) -> None:
        import requests  # with datalad-next: only for HTTP, not at every start
        from datalad import cfg
        from datalad_next.utils import DataladAuth

        self.session = requests.Session()
        self.session.auth = self.auth = DataladAuth(cfg)
        self.errors = (requests.RequestException,)

    def read(self, url: str, content: _Content) -> None:
        span = content.span
        last = span.offset + span.size - 1
        headers = {"Range": f"bytes={span.offset}-{last}", "Accept-Encoding": "identity"}
        try:
            with self.session.get(url, headers=headers, stream=True, timeout=TIMEOUT) as response:
                if response.status_code == 206:
                    served = response.headers.get("Content-Range", "")
                    if not re.fullmatch(rf"bytes {span.offset}-{last}/([0-9]+|\*)", served):
                        raise RemoteError(f"{url}: asked for bytes {span.offset}-{last}, "
                                          f"answered with {served or 'no Content-Range'}")
                    skip = 0
                elif response.status_code == 200:  # Range ignored: the whole TAR follows
                    skip = span.offset
                else:
                    raise RemoteError(f"{url}: HTTP {response.status_code} {response.reason}")
                _take(response.raw, skip, span.size, content)
        except self.errors as exc:
            raise RemoteError(f"{url}: {exc}") from None
        self.auth.save_entered_credential(context=f"download from {url}")


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

    def _reader(self, scheme: str) -> Callable[[str, _Content], None]:
        """How to read a span from a URL of ``scheme`` (one of :data:`SCHEMES`)."""
        if scheme == "file":
            return read_file_span
        if self._http is None:
            self._http = HttpSpans()
        return self._http.read

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
        for locator in self.annex.geturls(key, PREFIX):
            span = Span.parse(locator)
            urls = [url for url in self.annex.geturls(span.tar_key, "")
                    if urlsplit(url).scheme in SCHEMES]
            if not urls:
                failures.append(f"no file or http(s) URL for the TAR {span.tar_key}")
            for url in urls:
                try:
                    reader = self._reader(urlsplit(url).scheme)
                    with open(filename, "wb") as out:
                        content = _Content(key, span, out, self.annex.progress)
                        reader(url, content)
                    content.check(url)
                    return
                except RemoteError as exc:
                    failures.append(str(exc))
        raise RemoteError("; ".join(failures) or f"no {NAME} locator for {key}")

    def checkpresent(self, key: str) -> bool:
        """Whether the key has a locator: the TAR's own key is what says
        whether its bytes can be had (``git annex whereis`` of the TAR)."""
        return any(_LOCATOR.fullmatch(url) for url in self.annex.geturls(key, PREFIX))

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
