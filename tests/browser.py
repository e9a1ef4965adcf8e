"""A real headless Chromium for tests, driven over the DevTools protocol.

Why this way: the pages under test are Vue apps that render in the browser,
so only a browser shows what a user sees. Chromium is driven through
``--remote-debugging-pipe`` (JSON messages, NUL-terminated, on file
descriptors 3 and 4), which needs nothing but the standard library: no
WebSocket client, no WebDriver.

The browser can reach 127.0.0.1 only: every other host name resolves to
nothing (``--host-resolver-rules``), background and component networking is
off, and each instance gets a fresh profile. Every request the page makes is
recorded in :attr:`Chromium.requests`, so a test can assert that all of them
stayed local, and every error the page reports (an uncaught exception, a
``console.error``, a failed load, an ``alert``) in :attr:`Chromium.errors`,
so a test can assert that there was none.

Without Chromium, :func:`chromium_or_skip` skips the test with a message
saying how to install it, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "install it with: sudo apt-get install chromium (Debian/Ubuntu)"


def chromium_or_skip() -> str:
    """The Chromium executable; skip the test without one (fail when CI=true)."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    message = f"no Chromium found ({', '.join(CHROMIUM_NAMES)}); {INSTALL_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (random port); yield its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class BrowserError(Exception):
    pass


class Chromium:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, executable: str, timeout: float = 30.0):
        self.timeout = timeout
        self.requests: list[str] = []
        #: what went wrong in the page, one line each (see :meth:`_record`)
        self.errors: list[str] = []
        self._profile = tempfile.mkdtemp(prefix="icf-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:  # the browser reads fd 3 and writes fd 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self._process = subprocess.Popen(
            [
                executable, "--headless", "--remote-debugging-pipe",
                "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions", "--no-first-run",
                "--no-default-browser-check", "--metrics-recording-only",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--user-data-dir={self._profile}", "--window-size=1280,2000",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self._session = self.send("Target.attachToTarget", targetId=page["targetId"],
                                  flatten=True)["sessionId"]
        self.page("Page.enable")
        self.page("Network.enable")
        self.page("Runtime.enable")
        self.page("Log.enable")
        # the page behaves as the focused one (the clipboard API needs focus)
        self.page("Emulation.setFocusEmulationEnabled", enabled=True)

    # -- protocol ---------------------------------------------------------
    def send(self, method: str, session: str | None = None, **params: Any) -> dict:
        """Send one command, wait for its answer (recording events meanwhile)."""
        sent = self._post(method, session, **params)
        while True:
            answer = self._receive()
            if answer.get("id") == sent:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            if "method" in answer:
                self._record(answer)

    def _post(self, method: str, session: str | None = None, **params: Any) -> int:
        """Send one command without waiting for its answer; return its id."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _record(self, event: dict) -> None:
        """Note a request or an error of the page. A JavaScript dialog
        (``alert``) is an error, and dismissed at once: it would block the
        page and every later command."""
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append("uncaught: " + (details.get("exception", {}).get("description")
                                               or details.get("text", "")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            self.errors.append(f"console.{params['type']}: {' '.join(args)}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".rstrip())
        elif method == "Page.javascriptDialogOpening":
            self.errors.append(f"{params.get('type')} dialog: {params.get('message')}")
            self._post("Page.handleJavaScriptDialog", event.get("sessionId"), accept=False)

    def page(self, method: str, **params: Any) -> dict:
        return self.send(method, self._session, **params)

    def _receive(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_browser], [], [], remaining)[0]:
                raise BrowserError(f"Chromium did not answer within {self.timeout} s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise BrowserError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    # -- what a test does -------------------------------------------------
    def open(self, url: str) -> None:
        """Go to ``url`` (only its fragment changed: in the same document)."""
        self.page("Page.navigate", url=url)

    def load(self, url: str) -> None:
        """Load ``url`` afresh, as typed into a new tab, even if only its
        fragment differs from the current page's."""
        self.page("Page.navigate", url="about:blank")
        self.wait_for("location.href === 'about:blank' && document.readyState === 'complete'", "about:blank")
        self.page("Page.navigate", url=url)

    def reload(self) -> None:
        self.page("Page.reload", ignoreCache=True)

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        """The value of a JavaScript expression (of the promise it gives, if
        ``await_promise``), evaluated as if the user did it."""
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=await_promise, userGesture=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str = "", timeout: float | None = None) -> Any:
        """Poll until the JavaScript ``expression`` is truthy (for at most
        ``timeout`` seconds, default :attr:`timeout`); return its value."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"never true: {what or expression}; the page shows:\n{self.text()[:3000]}")
            time.sleep(0.1)

    def text(self) -> str:
        """The page's visible text."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str) -> str:
        """Poll until the visible text contains every needle; return the text."""
        deadline = time.monotonic() + self.timeout
        while True:
            text = self.text()
            if all(n in text for n in needles):
                return text
            if time.monotonic() > deadline:
                missing = [n for n in needles if n not in text]
                raise BrowserError(f"page never showed {missing}; it shows:\n{text[:3000]}")
            time.sleep(0.2)

    def click_text(self, selector: str, label: str) -> None:
        """Click (real mouse events) the first ``selector`` element whose text is ``label``."""
        self._click(f"[...document.querySelectorAll({json.dumps(selector)})]"
                    f".find(e => e.innerText.trim() === {json.dumps(label)})",
                    f"no {selector} element labelled {label!r}")

    def click(self, selector: str) -> None:
        """Click (real mouse events) the first visible element that ``selector`` matches."""
        self._click(f"[...document.querySelectorAll({json.dumps(selector)})]"
                    ".find(e => e.getClientRects().length)", f"no visible {selector} element")

    def _click(self, element: str, missing: str) -> None:
        box = self.evaluate(
            "(() => { const e = %s; if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()" % element
        )
        if box is None:
            raise BrowserError(missing)
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1],
                      button="left", clickCount=1)

    def fill(self, selector: str, text: str) -> None:
        """Replace the text in the input field ``selector`` by ``text``, as if typed."""
        if not self.evaluate("(() => { const e = document.querySelector(%s); if (!e) return false;"
                             " e.focus(); e.select(); return true; })()" % json.dumps(selector)):
            raise BrowserError(f"no {selector} element")
        if text:
            self.page("Input.insertText", text=text)
        else:
            for kind in ("keyDown", "keyUp"):
                self.page("Input.dispatchKeyEvent", type=kind, key="Backspace", code="Backspace",
                          windowsVirtualKeyCode=8)

    def grant_clipboard(self, origin: str) -> None:
        """Let pages of ``origin`` (e.g. ``http://127.0.0.1:8000``) read and write the clipboard."""
        self.send("Browser.grantPermissions", origin=origin,
                  permissions=["clipboardReadWrite", "clipboardSanitizedWrite"])

    def clipboard(self) -> str:
        """The clipboard's text (see :meth:`grant_clipboard`)."""
        return self.evaluate("navigator.clipboard.readText()", await_promise=True)

    def screenshot(self, max_height: int = 3000, margin: int = 24) -> bytes:
        """A PNG of the page at the window's width, from its top down to
        ``margin`` below its lowest visible element (at most ``max_height``
        CSS pixels), once its fonts are loaded."""
        self.evaluate("document.fonts.ready.then(() => true)", await_promise=True)
        bottom = self.evaluate(
            "Math.max(0, ...[...document.body.querySelectorAll('*')].filter(e => e.getClientRects().length)"
            ".map(e => e.getBoundingClientRect().bottom + window.scrollY))")
        width = self.evaluate("document.documentElement.clientWidth")
        clip = {"x": 0, "y": 0, "width": width, "height": min(bottom + margin, max_height), "scale": 1}
        shot = self.page("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except BrowserError:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def non_local(urls: list[str]) -> list[str]:
    """The URLs in ``urls`` that leave 127.0.0.1 (data: URLs are local)."""
    return [u for u in urls if not (u.startswith("http://127.0.0.1:") or u.startswith("data:"))]
