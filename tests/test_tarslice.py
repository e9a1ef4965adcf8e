"""Issue 14: single DICOMs by range from the visit TAR (``icf.tarslice``).

Everything real: the deposit made by step 3, ``datalad clone`` and
``datalad get`` with git-annex, a store served over HTTP on 127.0.0.1 by a
server that honours Range (``tests/rangeserver.py``), and researchers'
virtual environments made fresh from the wheels ``make venv`` keeps
(offline): one with ``pip install <this repository>``, one with only
datalad-next (and git-annex), which must fall back to archivist.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from annexremote import RemoteError
from conftest import REPO
from rangeserver import _byte_range, range_server
from test_dataset import (
    SECRET,
    USER,
    credential_env,
    deposit,
    dicom_records,
    md5_of,
    run,
    user_env,
    visit_store,
)

from icf.store import Visit
from icf.tarslice import FileSpans, Span, _Content, _take, one_line

WHEELHOUSE = Path(sys.executable).parent.parent / "wheelhouse"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def objects(ds: Path) -> set[str]:
    """The keys whose content is in the clone."""
    return {p.name for p in (ds / ".git" / "annex" / "objects").rglob("*") if p.is_file()}


def tar_key(visit: Visit) -> str:
    return Span.parse(next(u for u in locators(visit) if u.startswith("tarslice:"))).tar_key


def locators(visit: Visit) -> list[str]:
    """The tarslice locators step 3 gave the visit's DICOMs, from the
    deposit (read back with verify's reader)."""
    from icf.verify import read_deposit

    logs = read_deposit(visit).annex
    return [line.split(" :", 1)[1] for path, (_, content) in logs.items() if path.endswith(".log.web")
            for line in content.decode().splitlines() if " :tarslice:" in line]


# --- the pieces, without git-annex -----------------------------------------

def test_locator_round_trip_and_refusals():
    span = Span("MD5E-s99999--0123456789abcdef0123456789abcdef.tar", 1536, 21128)
    assert span.locator == "tarslice:MD5E-s99999--0123456789abcdef0123456789abcdef.tar#offset=1536&size=21128"
    assert Span.parse(span.locator) == span
    for bad in ("tarslice:MD5E-s9--k#offset=1&size=-2", "tarslice:MD5E-s9--k#offset=1",
                "dl+archive:MD5E-s9--k#path=a&size=1", "tarslice:MD5E-s9--k#offset=1&size=2\nx",
                "tarslice:#offset=1&size=2", "tarslice:a b#offset=1&size=2",
                "tarslice:MD5E-s9--k#offset=1&size=1" + "0" * 19):  # beyond any file offset
        with pytest.raises(RemoteError, match="not a tarslice locator"):
            Span.parse(bad)
    with pytest.raises(RemoteError, match="beyond the end of its TAR"):
        Span.parse("tarslice:MD5E-s1024--k.tar#offset=1024&size=1")
    with pytest.raises(RemoteError, match="not a git-annex key with a size"):
        Span.parse("tarslice:MD5E--k.tar#offset=0&size=1")  # a size to check the TAR against


def test_messages_are_one_line():
    assert one_line("a\nTRANSFER-SUCCESS RETRIEVE k\r") == "a\\nTRANSFER-SUCCESS RETRIEVE k\\r"


def test_content_checks_size_and_md5():
    import hashlib

    data = b"DICM" * 100
    key = f"MD5E-s{len(data)}--{hashlib.md5(data).hexdigest()}.dcm"
    span = Span("MD5E-s9--x.tar", 512, len(data))
    good = _Content(key, span, io.BytesIO(), lambda n: None)
    good.write(data)
    good.check("here")
    short = _Content(key, span, io.BytesIO(), lambda n: None)
    short.write(data[:-1])
    with pytest.raises(RemoteError, match="399 of the 400 bytes"):
        short.check("here")
    wrong = _Content(key, span, io.BytesIO(), lambda n: None)
    wrong.write(data[:-1] + b"!")
    with pytest.raises(RemoteError, match="are not MD5E-s400"):
        wrong.check("here")
    with pytest.raises(RemoteError, match="its locator says 401 bytes"):
        _Content(key, Span("t", 0, 401), io.BytesIO(), lambda n: None)
    with pytest.raises(RemoteError, match="not a git-annex key with a size"):
        _Content("URL--http&c%%x", span, io.BytesIO(), lambda n: None)


def test_file_spans_read_and_presence(tmp_path):
    tar = tmp_path / "a b%.tar"
    tar.write_bytes(bytes(range(256)) * 8)
    url = "file://" + str(tar).replace("%", "%25").replace(" ", "%20")
    span = Span(f"MD5E-s{tar.stat().st_size}--{'0' * 32}.tar", 512, 100)
    out = io.BytesIO()
    FileSpans().read(url, _Content("SHA256E-s100--x", span, out, lambda n: None))
    assert out.getvalue() == tar.read_bytes()[512:612]
    assert FileSpans().holds(url, span)
    assert not FileSpans().holds(url + "x", span)  # no such file: not there
    other = Span(f"MD5E-s{tar.stat().st_size + 1}--{'0' * 32}.tar", 512, 100)
    with pytest.raises(RemoteError, match="not the 2049 of"):  # another file at the URL: unknown
        FileSpans().holds(url, other)


def test_test_server_reads_ranges_as_the_rfc_says():
    assert _byte_range("bytes=0-9", 100) == (0, 9) and _byte_range("bytes=90-", 100) == (90, 99)
    assert _byte_range("bytes=-10", 100) == (90, 99) and _byte_range("bytes=95-200", 100) == (95, 99)
    assert _byte_range("bytes=100-", 100) == (100, 99)  # unsatisfiable: 416
    for ignored in ("", "bytes=5-3", "bytes=0-1,5-6", "items=0-1", "bytes=-"):
        assert _byte_range(ignored, 100) is None


def test_whole_file_answer_is_read_only_up_to_the_span():
    """A server ignoring Range sends the whole TAR: what is read stops at
    the member's end."""
    tar = bytes(range(256)) * 64
    stream = io.BytesIO(tar)
    stream.read1 = (lambda read: lambda n, decode_content=False: read(n))(stream.read)  # urllib3's signature
    out = io.BytesIO()
    span = Span("t", 1024, 700)
    _take(stream, span.offset, span.size, _Content("SHA256E-s700--x", span, out, lambda n: None))
    assert out.getvalue() == tar[1024:1724]
    assert stream.tell() <= 1724


def test_a_dripping_server_is_given_up(tmp_path, monkeypatch):
    """Bytes that come slower than MIN_RATE (after TIMEOUT's grace) end the
    transfer, however slowly each arrives (scaled down here: 0.3 s of grace,
    10 kB/s; the server sends 320 B/s)."""
    import hashlib

    from icf import tarslice

    tar = tmp_path / "v.tar"
    tar.write_bytes(os.urandom(4096))
    member = tar.read_bytes()[512:1536]
    key = f"MD5E-s1024--{hashlib.md5(member).hexdigest()}.dcm"
    span = Span(f"MD5E-s4096--{'0' * 32}.tar", 512, 1024)
    monkeypatch.setattr(tarslice, "TIMEOUT", 0.3)
    monkeypatch.setattr(tarslice, "MIN_RATE", 10_000)
    with range_server(tmp_path) as (url, served):
        spans = tarslice.HttpSpans()
        served.drip = 0.05
        started = time.monotonic()
        with pytest.raises(RemoteError, match="slower than"):
            spans.read(f"{url}/v.tar", _Content(key, span, io.BytesIO(), lambda n: None))
        assert time.monotonic() - started < 2  # the whole member would take 3.2 s
        served.drip = 0
        out = io.BytesIO()
        spans.read(f"{url}/v.tar", _Content(key, span, out, lambda n: None))
    assert out.getvalue() == member


# --- git-annex, datalad and HTTP --------------------------------------------

@pytest.fixture(scope="module")
def http_deposit(tmp_path_factory):
    """The sample visit, deposited for a store served over HTTP with basic
    auth; yields (visit, store URL, server counts, root)."""
    root = tmp_path_factory.mktemp("tarslice")
    store = root / "store"
    with range_server(store.parent, (USER, SECRET)) as (base, served):
        url = f"{base}/store"
        visit = visit_store(store)
        result = deposit(visit, "--store-url", url, env=user_env(root / "home"))
        assert result.returncode == 0, result.stderr
        yield visit, url, served, root


def researcher_env(home: Path, venv_bin: Path, base_url: str) -> dict:
    """A researcher's session: ``venv_bin`` and the system on PATH (not
    this checkout's venv), credentials for the store."""
    env = credential_env(home, base_url, USER, SECRET)
    env["PATH"] = f"{venv_bin}:{SYSTEM_PATH}"
    return env


def get(ds: Path, env: dict, *paths: str, jobs: int = 1) -> subprocess.CompletedProcess:
    return run([Path(env["PATH"].split(":")[0]) / "datalad", "get", "-J", str(jobs), *paths],
               cwd=ds, env=env, timeout=300)


def clone_visit(visit: Visit, url: str, target: Path, env: dict) -> Path:
    run([Path(env["PATH"].split(":")[0]) / "datalad", "clone", visit.clone_url(url), target],
        cwd=target.parent, env=env, timeout=300)
    return target


@pytest.mark.slow
def test_ranged_get_over_http_fetches_only_the_members(http_deposit, tmp_path):
    visit, url, served, _ = http_deposit
    env = researcher_env(tmp_path / "home", Path(sys.executable).parent, url.rsplit("/", 1)[0])
    ds = clone_visit(visit, url, tmp_path / "clone", env)
    records = dicom_records(visit)
    wanted = records[3:5]
    served.reset()
    result = get(ds, env, *(r["path"] for r in wanted))
    assert "from tarslice" in result.stdout, result.stdout
    tar_name = f"store/{visit.tarball.relative_to(visit.store)}"
    # two ranged requests, each for exactly its member's bytes; the TAR never whole
    assert served.ranged[tar_name] == served.requests[tar_name] == 2, served.requests
    assert served.connections == 1  # the second over the first's connection (kept alive)
    assert served.bytes[tar_name] == sum(r["size"] for r in wanted)
    for record in wanted:
        assert md5_of(ds / record["path"]) == record["md5"]
    assert tar_key(visit) not in objects(ds)
    assert len(objects(ds)) == 2
    run(["git", "annex", "fsck", "-q"], cwd=ds, env=env)
    # the locators carry the offsets of the DICOM list
    assert sorted(locators(visit)) == sorted(Span(tar_key(visit), r["offset"], r["size"]).locator for r in records)


@pytest.mark.slow
def test_presence_is_asked_of_the_server(http_deposit, tmp_path):
    """``checkpresentkey`` (what ``git annex drop`` relies on) asks the
    server for the member's last byte: present while the TAR is there, not
    present without it, unknown when the server cannot be asked."""
    visit, url, served, _ = http_deposit
    env = researcher_env(tmp_path / "home", Path(sys.executable).parent, url.rsplit("/", 1)[0])
    ds = clone_visit(visit, url, tmp_path / "clone", env)
    key = run(["git", "annex", "lookupkey", dicom_records(visit)[0]["path"]], cwd=ds, env=env).stdout.strip()

    def present() -> int:
        return run(["git", "annex", "checkpresentkey", key, "tarslice"], cwd=ds, env=env, check=False).returncode

    served.reset()
    assert present() == 0
    assert served.ranged[f"store/{visit.tarball.relative_to(visit.store)}"] == 1
    moved = visit.tarball.with_name("elsewhere.tar")
    visit.tarball.rename(moved)
    try:
        assert present() == 1
    finally:
        moved.rename(visit.tarball)
    env["DATALAD_CREDENTIAL_ICF_SECRET"] = "wrong"
    assert present() == 100  # git-annex's "could not be checked"


@pytest.mark.slow
def test_a_crafted_url_cannot_forge_answers(http_deposit, tmp_path):
    """The line protocol: a TAR URL naming a file whose name holds a line
    break and a forged reply must not make git-annex take a second key for
    present (checked in one batch, as ``git annex drop`` of several does)."""
    visit, url, served, _ = http_deposit
    env = researcher_env(tmp_path / "home", Path(sys.executable).parent, url.rsplit("/", 1)[0])
    ds = clone_visit(visit, url, tmp_path / "clone", env)
    first, second = (run(["git", "annex", "lookupkey", r["path"]], cwd=ds, env=env).stdout.strip()
                     for r in dicom_records(visit)[:2])
    decoy = tmp_path / f"x\nCHECKPRESENT-SUCCESS {second}\n"
    decoy.write_bytes(b"not the TAR")
    crafted = "file://" + str(decoy).replace("\n", "%0A").replace(" ", "%20")
    run(["git", "annex", "registerurl", tar_key(visit), crafted], cwd=ds, env=env)
    moved = visit.tarball.with_name("elsewhere.tar")
    visit.tarball.rename(moved)  # neither key's TAR can be had now
    try:
        checked = subprocess.run(["git", "annex", "checkpresentkey", "--batch", "tarslice"], cwd=ds, env=env,
                                 input=f"{first}\n{second}\n", capture_output=True, text=True, timeout=120)
    finally:
        moved.rename(visit.tarball)
    # one answer per key, neither "present" (git-annex's batch answer for present is 1)
    assert checked.stdout.split() == ["0", "0"], (checked.stdout, checked.stderr)


@pytest.mark.slow
def test_wrong_credentials_get_nothing(http_deposit, tmp_path):
    visit, url, _, _ = http_deposit
    env = researcher_env(tmp_path / "home", Path(sys.executable).parent, url.rsplit("/", 1)[0])
    ds = clone_visit(visit, url, tmp_path / "clone", env)
    first = dicom_records(visit)[0]
    wrong = dict(env, DATALAD_CREDENTIAL_ICF_SECRET="wrong")
    failed = run([Path(sys.executable).parent / "datalad", "get", first["path"]], cwd=ds, env=wrong, check=False)
    assert failed.returncode != 0
    assert not (ds / first["path"]).exists() and objects(ds) == set()


@pytest.mark.slow
@pytest.mark.parametrize("misbehaviour", ["ignore_range", "corrupt_ranges"])
def test_misbehaving_server_never_gives_a_wrong_file(http_deposit, misbehaviour, tmp_path):
    """A server that ignores Range (200 with the whole TAR) still gives the
    member, read up to its end; one that sends wrong bytes for a range makes
    tarslice fail, and git-annex falls back to archivist (whole TAR)."""
    visit, url, served, _ = http_deposit
    env = researcher_env(tmp_path / "home", Path(sys.executable).parent, url.rsplit("/", 1)[0])
    ds = clone_visit(visit, url, tmp_path / "clone", env)
    first = dicom_records(visit)[0]
    served.reset()
    setattr(served, misbehaviour, True)
    try:
        result = get(ds, env, first["path"])
    finally:
        setattr(served, misbehaviour, False)
    assert md5_of(ds / first["path"]) == first["md5"]
    tar_name = f"store/{visit.tarball.relative_to(visit.store)}"
    if misbehaviour == "ignore_range":
        assert "from tarslice" in result.stdout and tar_key(visit) not in objects(ds)
        # several files in one get: the first by tarslice (reading the TAR up
        # to its end), then archivist downloads the TAR once, rather than
        # tarslice downloading its beginning again for every file
        more = dicom_records(visit)[1:4]
        served.reset()
        served.ignore_range = True
        try:
            get(ds, env, *(r["path"] for r in more))
        finally:
            served.ignore_range = False
        assert all(md5_of(ds / r["path"]) == r["md5"] for r in more)
        assert served.requests[tar_name] == 2 and tar_key(visit) in objects(ds), served.requests
    else:  # archivist got the whole TAR (unranged), which is then in the clone
        assert served.requests[tar_name] > served.ranged[tar_name] > 0, served.requests
        assert tar_key(visit) in objects(ds)
    run(["git", "annex", "fsck", "-q"], cwd=ds, env=env)


# --- fresh researcher venvs -------------------------------------------------

def fresh_venv(path: Path, *requirements: str) -> Path:
    """A new venv holding only ``requirements``, installed offline from the
    wheels ``make venv`` keeps; its bin directory."""
    if not WHEELHOUSE.is_dir():
        pytest.fail(f"{WHEELHOUSE} missing: run `make venv` (it keeps the wheels these tests install offline)")
    subprocess.run([sys.executable, "-m", "venv", path], check=True, timeout=120)
    result = subprocess.run(
        [path / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-index", "--find-links", WHEELHOUSE, *requirements],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, PIP_NO_CACHE_DIR="1"))
    assert result.returncode == 0, result.stderr
    return path / "bin"


@pytest.fixture(scope="module")
def researcher_venvs(tmp_path_factory):
    """(with the remote: ``pip install <repo>`` and git-annex; without it:
    datalad-next and git-annex only)."""
    root = tmp_path_factory.mktemp("venvs")
    return (fresh_venv(root / "with-tarslice", str(REPO), "git-annex"),
            fresh_venv(root / "datalad-next-only", "datalad-next", "git-annex"))


@pytest.mark.slow
def test_pip_install_of_the_repository_gives_the_remote(researcher_venvs, http_deposit, tmp_path):
    with_remote, _ = researcher_venvs
    assert (with_remote / "git-annex-remote-tarslice").is_file()
    listed = subprocess.run([with_remote / "python", "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout
    names = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert {"icf-utils-tarslice", "datalad-next", "git-annex"} <= names
    assert not names & {"pydicom", "datalad-catalog"}  # the facility's tools are not installed
    site = next((with_remote.parent / "lib").glob("python3*/site-packages"))
    assert sorted(p.name for p in (site / "icf").glob("*.py")) == ["__init__.py", "tarslice.py"]
    visit, url, served, _ = http_deposit
    env = researcher_env(tmp_path / "home", with_remote, url.rsplit("/", 1)[0])
    ds = clone_visit(visit, url, tmp_path / "clone", env)
    records = dicom_records(visit)[:2]
    served.reset()
    get(ds, env, *(r["path"] for r in records), jobs=2)
    assert all(md5_of(ds / r["path"]) == r["md5"] for r in records)
    assert objects(ds) == {p.resolve().name for p in (ds / r["path"] for r in records)}
    tar_name = f"store/{visit.tarball.relative_to(visit.store)}"
    assert served.bytes[tar_name] == sum(r["size"] for r in records)
    run(["git", "annex", "fsck", "-q"], cwd=ds, env=env)


@pytest.mark.slow
def test_without_the_remote_archivist_serves_transparently(researcher_venvs, http_deposit, tmp_path):
    """A clone made without tarslice gets from archivist (the TAR lands in
    it); installed later, ``git annex enableremote tarslice`` and
    ``verifyremote`` (as the user guide says) make the clone use it."""
    with_remote, datalad_next_only = researcher_venvs
    assert not (datalad_next_only / "git-annex-remote-tarslice").exists()
    visit, url, _, _ = http_deposit
    env = researcher_env(tmp_path / "home", datalad_next_only, url.rsplit("/", 1)[0])
    ds = clone_visit(visit, url, tmp_path / "clone", env)
    first = dicom_records(visit)[0]
    result = get(ds, env, first["path"])
    assert "from archivist" in result.stdout, result.stdout
    assert md5_of(ds / first["path"]) == first["md5"]
    assert tar_key(visit) in objects(ds)
    run(["git", "annex", "fsck", "-q", first["path"]], cwd=ds, env=env)
    env = researcher_env(tmp_path / "home", with_remote, url.rsplit("/", 1)[0])
    run(["git", "annex", "drop", "--force", "--key", tar_key(visit)], cwd=ds, env=env)
    # as the user guide says: enable it, then confirm it as git-annex asks
    run(["git", "annex", "enableremote", "tarslice"], cwd=ds, env=env)
    asked = run(["git", "annex", "verifyremote", "tarslice"], cwd=ds, env=env).stdout
    confirm = re.search(r"run: +git-annex (verifyremote tarslice --safe \S+)", asked)
    assert confirm, asked
    run(["git", "annex", *confirm[1].split()], cwd=ds, env=env)
    second = dicom_records(visit)[1]
    assert "from tarslice" in get(ds, env, second["path"]).stdout
    assert md5_of(ds / second["path"]) == second["md5"] and tar_key(visit) not in objects(ds)
