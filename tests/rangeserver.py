"""A store served over HTTP on 127.0.0.1 for tests and the benchmark, as a
web server serves it: single byte ranges (``Range: bytes=a-b``, 206 with
``Content-Range``; Python's ``http.server`` ignores Range), optional basic
authentication (realm "icf"), and counts of the requests and body bytes
sent per file, so a test can tell what a client downloaded.

Misbehaviours, switched on and off while it runs (attributes of
:class:`Served`), for the client's checks: ``ignore_range`` answers every
GET with 200 and the whole file, ``corrupt_ranges`` flips a byte in every
ranged answer (whole files stay intact), ``drip`` sends 16 bytes at a time
with a pause between.
"""

from __future__ import annotations

import base64
import os
import re
import threading
import time
from collections import Counter
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

CHUNK = 1 << 16


class Served:
    """What the server did (connections; requests, ranged requests and body
    bytes per path relative to the served directory), and how it misbehaves."""

    def __init__(self) -> None:
        self.ignore_range = False
        self.corrupt_ranges = False
        self.drip = 0.0  # seconds between pieces of 16 bytes (0: as fast as it can)
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.ranged: Counter[str] = Counter()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes.clear()
            self.ranged.clear()
            self.connections = 0


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) of a single ``bytes=`` range of a file of ``size``
    bytes (RFC 9110 14.1.2: ``a-b``, ``a-``, ``-n``), or None to ignore the
    header (absent, several ranges, or invalid: the whole file then)."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or match[1] == match[2] == "":
        return None
    if match[1] == "":  # the last n bytes
        return max(0, size - int(match[2])), size - 1
    first = int(match[1])
    last = min(int(match[2]), size - 1) if match[2] else size - 1
    if match[2] and int(match[2]) < first:
        return None
    return first, last


class RangeHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a web server does: clients reuse connections
    served: Served
    credentials: tuple[str, str] | None = None

    def log_message(self, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.served.lock:
            self.served.connections += 1

    def _authorized(self) -> bool:
        if self.credentials is None:
            return True
        expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        if self.headers.get("Authorization") == expected:
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="icf"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_HEAD(self) -> None:
        if self._authorized():
            super().do_HEAD()

    def do_GET(self) -> None:
        if not self._authorized():
            return
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            super().do_GET()  # directories, 404s: as http.server does
            return
        name = os.path.relpath(path, self.directory)
        size = os.path.getsize(path)
        wanted = None if self.served.ignore_range else _byte_range(self.headers.get("Range", ""), size)
        first, last = wanted or (0, size - 1)
        with open(path, "rb") as file:
            if wanted and first >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if wanted:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            with self.served.lock:
                self.served.requests[name] += 1
                self.served.ranged[name] += bool(wanted)
            file.seek(first)
            left = last - first + 1
            try:
                while left > 0:
                    data = file.read(min(16 if self.served.drip else CHUNK, left))
                    time.sleep(self.served.drip)
                    if not data:
                        break
                    if wanted and self.served.corrupt_ranges:
                        data = bytes([data[0] ^ 0xFF]) + data[1:]
                    self.wfile.write(data)
                    left -= len(data)
                    with self.served.lock:
                        self.served.bytes[name] += len(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client had what it wanted


@contextmanager
def range_server(directory: Path, credentials: tuple[str, str] | None = None) -> Iterator[tuple[str, Served]]:
    """Serve ``directory`` on 127.0.0.1 while the block runs: yields its
    base URL and the :class:`Served` counts."""
    served = Served()
    handler = type("Handler", (RangeHandler,), {"served": served, "credentials": credentials})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()
