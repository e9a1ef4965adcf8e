"""The study catalog as a researcher sees it (issue 12): a real headless
Chromium (tests/browser.py) on a real HTTP server on 127.0.0.1, visits made
by the real steps (1-4 from the bundled sample visit; 1, 2 and 4 from
crafted DICOMs where only the catalog matters).

What is checked, page by page:

- a visit page opens on its "Series" table (every series a row, by series
  number; the findings above it), also from a tab link typed in or followed
  from the study's "Visits" table;
- its clone command, copied with the dialog's copy button, is the one
  shown under the description, and works when pasted into bash, for a
  file:// and an http:// store whose path has a space, '&' and 'é': the
  clone's DICOMs can be got and have their recorded MD5;
- the study page opens on its "Visits" table (natural order, the visit's
  figures, a link to each), shows the description, licence and DOI of the
  catalog config, and neither "Binder" nor "unknown";
- "Last updated" survives a rerun of unchanged input (the bytes too);
- the study's search box finds a visit by protocol, sequence or series
  description;
- screenshots of both pages for the user guide (``make screenshots``).

No page may raise an error or load anything from beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import struct
import subprocess
import threading
import time
import urllib.parse
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from browser import Chromium, chromium_or_skip, non_local, serve
from conftest import SAMPLE_VISIT, make_dicom, run_tool
from test_dataset import VENV_BIN, clean_env, md5_of, user_env

from icf.catalog import DATASET_VERSION, human_size, series_columns, study_id, visit_id
from icf.store import Visit, default_store_url, natural_key

pytestmark = pytest.mark.slow

STUDY = "study1"
#: a store directory name that needs quoting everywhere: a space, '&', non-ASCII
HOSTILE_NAME = "st ore&\u00e9"
#: datalad-catalog 1.1.1 asks for an optional per-dataset config.json of
#: every page it shows, and falls back to the site's on a 404: not an error
OPTIONAL_CONFIG_404 = "status of 404 (File not found) http://127.0.0.1:"


# -- building visits with the real steps --------------------------------------------------

def step(script: str, visit: Visit, *args, env: dict | None = None) -> None:
    result = run_tool(script, "-q", "-o", visit.store, "--id", visit.study, visit.visit, *args,
                      env=env, timeout=300)
    assert result.returncode == 0, f"{script}: {result.stderr}"


def build_visit(visit: Visit, input_dir: Path, *, home: Path, store_url: str | None = None,
                deposit: bool = True, catalog_options: tuple = ()) -> None:
    """Steps 1 and 2, step 3 (``deposit``) and step 4 for ``visit``."""
    url = ("--store-url", store_url) if store_url else ()
    step("make_studyvisit_archive", visit, input_dir)
    step("deposit_visit_metadata", visit)
    if deposit:
        step("deposit_visit_dataset", visit, *url, env=clean_env(home))
    step("catalogify_studyvisit_from_meta", visit, *url, *catalog_options)


def catalog_url(base: str) -> str:
    """The catalog's home page under ``base``, the URL of the catalog directory."""
    return base.rstrip("/") + "/"


def visit_page(base: str, visit: Visit, tab: str = "series") -> str:
    return f"{catalog_url(base)}#/dataset/{visit_id(visit)}/{DATASET_VERSION}/{tab}"


def study_page(base: str, tab: str) -> str:
    return f"{catalog_url(base)}#/dataset/{study_id(STUDY)}/{DATASET_VERSION}/{tab}"


def catalog_bytes(visit: Visit) -> dict[str, bytes]:
    """Every record of the catalog and the visits' markers, by path."""
    return {str(p.relative_to(visit.catalog_dir)): p.read_bytes()
            for top in ("metadata", "visits") for p in sorted((visit.catalog_dir / top).rglob("*"))
            if p.is_file()}


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def file_store(tmp_path_factory):
    """The sample visit through steps 1-4 into a store at a hostile path,
    with the default store URL (its file:// URL): the visit and the store URL."""
    root = tmp_path_factory.mktemp("file")
    visit = Visit(root / HOSTILE_NAME, STUDY, "visit1")
    build_visit(visit, SAMPLE_VISIT, home=root / "home")
    return visit, default_store_url(visit.store)


@pytest.fixture(scope="module")
def http_store(tmp_path_factory):
    """The sample visit through steps 1-4 into a store at a hostile path,
    served (with its catalog) over HTTP on 127.0.0.1 and deposited and
    catalogued with that URL. Yields the visit and the store URL."""
    root = tmp_path_factory.mktemp("http")
    served = root / "srv"
    visit = Visit(served / HOSTILE_NAME, STUDY, "visit1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        store_url = f"http://127.0.0.1:{server.server_address[1]}/{urllib.parse.quote(HOSTILE_NAME)}"
        build_visit(visit, SAMPLE_VISIT, home=root / "home", store_url=store_url)
        yield visit, store_url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


#: the study's visits, in the order a person counts them, each with its
#: series: (SeriesNumber, ProtocolName, SequenceName, SeriesDescription, files),
#: every text unique to its visit (the search finds exactly one visit)
STUDY_VISITS = {
    "v1": [(10, "t1_mprage_sag", "tfl3d1_16ns", "anat T1w", 2), (2, "localizer_3pl", "fl2d1", "scout", 1),
           (1, "localizer_3pl", "fl2d1", "scout", 3)],
    "v2": [(5, "bold_rest", "epfid2d1_64", "func resting state", 3)],
    "v9": [(7, "dwi_ap", "ep_b1000", "diffusion AP", 2)],
    "v10": [(3, "fmap_phasediff", "fm2d2r", "field map", 2)],
}
STUDY_CONFIG = {
    "catalog_name": "Facility catalog",
    "study": {"description": "Pilot study of the imaging facility: phantoms and volunteers.",
              "license": {"name": "PDDL 1.0", "url": "https://opendatacommons.org/licenses/pddl/1-0/"},
              "doi": "https://doi.org/10.5555/icf.pilot"},
}


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    """A study of the visits of :data:`STUDY_VISITS` (crafted DICOMs; v1 also
    holds a file that is not DICOM, a finding), catalogued in a random order
    with a config that describes the study. Yields the visits by ID and the
    order they were catalogued in."""
    root = tmp_path_factory.mktemp("study")
    store = root / "store"
    config = root / "config" / "study.json"
    config.parent.mkdir()
    config.write_text(json.dumps(STUDY_CONFIG))
    visits = {}
    for name, series in STUDY_VISITS.items():
        visit = visits[name] = Visit(store, STUDY, name)
        for number, protocol, sequence, description, files in series:
            for i in range(files):
                make_dicom(root / name / f"s{number}" / f"{i}.dcm", SeriesNumber=number, ProtocolName=protocol,
                           SequenceName=sequence, SeriesDescription=description, InstanceNumber=i + 1,
                           pixel_bytes=2048 * (i + 1))
        if name == "v1":
            (root / name / "notes.txt").write_text("not a DICOM\n")
        step("make_studyvisit_archive", visit, root / name)
        step("deposit_visit_metadata", visit)
    order = list(visits)
    while order == sorted(order, key=natural_key) or order == sorted(order):
        random.shuffle(order)
    for name in order:
        step("catalogify_studyvisit_from_meta", visits[name], "--config-file", config)
    return visits, order


# -- reading the pages ----------------------------------------------------------------

def page_errors(browser: Chromium) -> list[str]:
    """The page's errors so far, but for datalad-catalog's optional
    ``metadata/<id>/<version>/config.json`` that is never there."""
    browser.evaluate("0")  # every event sent before this answer is recorded
    return [e for e in browser.errors
            if not (OPTIONAL_CONFIG_404 in e and e.endswith(f"/{DATASET_VERSION}/config.json"))]


ACTIVE_TAB = ("(() => { const t = document.querySelector('.nav-tabs a[role=tab][aria-selected=true]');"
              " return t ? t.innerText.trim() : null; })()")


def wait_tab(browser: Chromium, name: str) -> None:
    """Wait until the page shows tab ``name`` (title starting so) with its
    content, and still does a moment later (no other tab taking over)."""
    expression = (f"(() => {{ const t = {ACTIVE_TAB}; const pane = document.querySelector('.tab-pane.active');"
                  f" return t && t.startsWith({json.dumps(name)}) && pane && pane.innerText.trim().length > 0; }})()")
    browser.wait_for(expression, f"tab {name!r} shown (shown: {browser.evaluate(ACTIVE_TAB)!r})", timeout=15)
    time.sleep(0.5)
    assert browser.evaluate(expression), f"tab {name!r} replaced by {browser.evaluate(ACTIVE_TAB)!r}"


TABLE = """(() => {
  const pane = document.querySelector('.tab-pane.active'); const table = pane.querySelector('table');
  const text = e => e.innerText.trim();
  return {
    notes: [...pane.querySelectorAll('p')].filter(p => p.compareDocumentPosition(table) & 4).map(text),
    columns: [...table.querySelectorAll('thead th')].map(text),
    rows: [...table.querySelectorAll('tbody tr')].map(r => [...r.querySelectorAll('td')].map(text)),
    links: [...table.querySelectorAll('tbody a')].map(a => [text(a), a.getAttribute('href')]),
  }; })()"""


def shown_table(browser: Chromium) -> dict:
    """The table of the active tab: notes above it, columns, rows (cell
    texts), links (text, href)."""
    return browser.evaluate(TABLE)


def shown(browser: Chromium, selector: str) -> str:
    return browser.evaluate(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent") or ""


def last_updated(browser: Chromium) -> str:
    text = browser.wait_for_text("Last updated:")
    return text.split("Last updated:", 1)[1].split()[0]


# -- a visit page ------------------------------------------------------------------------------

def test_visit_page_opens_on_its_series_from_anywhere(file_store):
    executable = chromium_or_skip()
    visit, _ = file_store
    metadata = json.loads(visit.metadata_tarball.read_text())
    dicoms = json.loads(visit.metadata_dicoms.read_text())
    with serve(visit.catalog_dir) as url, Chromium(executable) as browser:
        # from the study's visits table
        browser.load(catalog_url(url))
        browser.wait_for_text(STUDY, "Visits")
        wait_tab(browser, "Visits")
        browser.click_text("table a", visit.visit)
        browser.wait_for_text(f"DICOM data of visit {visit.visit}")
        wait_tab(browser, "Series")
        assert browser.evaluate("location.hash") == f"#/dataset/{visit_id(visit)}/{DATASET_VERSION}/series"
        table = shown_table(browser)
        assert table["columns"] == series_columns()
        # one row per series, by series number; the sample has one, 401
        assert [row[0] for row in table["rows"]] == [str(s["SeriesNumber"]) for s in metadata["series"]] == ["401"]
        row = dict(zip(table["columns"], table["rows"][0], strict=True))
        assert row["series description"] == row["protocol name"] == "func_task-oneback_run-1"
        assert row["modality"] == "MR" and row["MR acquisition type"] == "2D"
        assert row["files"] == row["images"] == str(len(dicoms)) == "12"
        # the findings, above the table
        assert [note.split(":")[0] for note in table["notes"]] == [
            f"\u26a0 {f['code']}" for f in metadata["findings"]] == ["\u26a0 instance-gaps", "\u26a0 not-dicom"]
        # back to the study: its visits again
        browser.evaluate("history.back()")
        browser.wait_for_text("Study study1:")
        wait_tab(browser, "Visits")

        # tab links typed in (a fresh load), any case
        for tab in ("series", "Series", "SERIES"):
            browser.load(visit_page(url, visit, tab))
            browser.wait_for_text(f"DICOM data of visit {visit.visit}")
            wait_tab(browser, "Series")
        browser.load(study_page(url, "subdatasets"))
        browser.wait_for_text("Study study1:")
        wait_tab(browser, "Subdatasets")
        browser.click_text(".tab-pane.active .card h5 a", visit.visit)  # a visit's card
        browser.wait_for_text(f"DICOM data of visit {visit.visit}")
        wait_tab(browser, "Series")
        browser.load(study_page(url, "visits"))
        browser.wait_for_text("Study study1:")
        wait_tab(browser, "Visits")
        # and a tab link followed inside the app
        browser.open(visit_page(url, visit, "series"))
        browser.wait_for_text(f"DICOM data of visit {visit.visit}")
        wait_tab(browser, "Series")

        # tabs with nothing to show are not offered on a visit's page
        titles = browser.evaluate("[...document.querySelectorAll('.nav-tabs a[role=tab]')]"
                                  ".filter(a => a.getClientRects().length).map(a => a.innerText.trim())")
        assert titles == ["Series"]
        assert page_errors(browser) == []
        assert browser.requests and non_local(browser.requests) == []


def test_series_rows_by_series_number(study_store):
    executable = chromium_or_skip()
    visits, _ = study_store
    visit = visits["v1"]
    with serve(visit.catalog_dir) as url, Chromium(executable) as browser:
        browser.load(visit_page(url, visit))
        browser.wait_for_text("DICOM data of visit v1")
        wait_tab(browser, "Series")
        table = shown_table(browser)
        rows = [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]
        assert [(r["series number"], r["protocol name"], r["sequence name"], r["files"]) for r in rows] == [
            ("1", "localizer_3pl", "fl2d1", "3"), ("2", "localizer_3pl", "fl2d1", "1"),
            ("10", "t1_mprage_sag", "tfl3d1_16ns", "2")]
        assert [note.split(":")[0] for note in table["notes"]] == ["\u26a0 not-dicom"]
        assert page_errors(browser) == []


# -- the clone command ---------------------------------------------------------------------------

@pytest.fixture(params=["file", "http"])
def deposited(request):
    """The sample visit deposited and catalogued with a file:// and with an
    http:// store URL: (visit, store URL, URL of its catalog)."""
    if request.param == "file":
        visit, store_url = request.getfixturevalue("file_store")
        with serve(visit.catalog_dir) as url:
            yield visit, store_url, url
    else:
        visit, store_url = request.getfixturevalue("http_store")
        yield visit, store_url, f"{store_url}/{STUDY}/catalog/"


def copy_clone_command(browser: Chromium, url: str, visit: Visit) -> str:
    """Open the visit's page, click "Download with DataLad" and the copy
    button in its dialog; return what the clipboard then holds."""
    origin = urllib.parse.urlsplit(url)
    browser.grant_clipboard(f"{origin.scheme}://{origin.netloc}")
    browser.load(visit_page(url, visit))
    browser.wait_for_text(f"DICOM data of visit {visit.visit}", "Download with DataLad")
    assert browser.clipboard() == ""
    browser.click_text("button", "Download with DataLad")
    browser.wait_for("!!document.querySelector('.modal.show #copyBtn')", "the dialog with its copy button")
    deadline = time.monotonic() + 10
    while True:  # a click while the dialog still slides in may miss: click again
        time.sleep(0.3)
        browser.click(".modal.show #copyBtn")
        for _ in range(10):
            if copied := browser.clipboard():
                return copied
            time.sleep(0.1)
        if time.monotonic() > deadline:
            raise AssertionError("the copy button put nothing into the clipboard")


@pytest.mark.skipif(shutil.which("git-annex", path=f"{VENV_BIN}:{os.environ['PATH']}") is None,
                    reason="git-annex not installed")
def test_copied_clone_command_clones_and_gets(deposited, tmp_path):
    executable = chromium_or_skip()
    visit, store_url, url = deposited
    assert HOSTILE_NAME in str(visit.store) and urllib.parse.quote(HOSTILE_NAME) in store_url
    with Chromium(executable) as browser:
        copied = copy_clone_command(browser, url, visit)
        expected = "datalad clone '" + visit.clone_url(store_url) + "' " + visit.visit
        assert copied == expected
        assert shown(browser, "#clone_code").strip() == expected  # the dialog
        assert shown(browser, "pre#description_clone") == expected  # under the description
        assert shlex.split(copied) == ["datalad", "clone", visit.clone_url(store_url), visit.visit]
        assert page_errors(browser) == []
        assert non_local(browser.requests) == []

    # pasted into bash, by a researcher with a git identity and nothing else
    work = tmp_path / "work"
    work.mkdir()
    env = user_env(tmp_path / "home")
    result = subprocess.run(["bash", "-c", copied], cwd=work, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    [clone] = list(work.iterdir())
    assert clone.name == visit.visit
    records = json.loads(visit.metadata_dicoms.read_text())
    result = subprocess.run([VENV_BIN / "datalad", "get", visit.archive_top], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(records) == 12
    for record in records:
        assert md5_of(clone / record["path"]) == record["md5"], record["path"]


def test_clone_command_quotes_any_url(file_store, tmp_path):
    """The page quotes the record's URL as one shell word whatever it holds
    (the tools never write a URL with a quote, a catalog edited by hand may)."""
    executable = chromium_or_skip()
    visit, _ = file_store
    catalog = tmp_path / "catalog"
    shutil.copytree(visit.catalog_dir, catalog)
    [record_file] = (catalog / "metadata" / visit_id(visit)).rglob("*.json")
    url = "file:///data/it's a \"store\" $HOME `id` \\/v_{{annex_key}}&x=1"
    record_file.write_text(json.dumps({**json.loads(record_file.read_text()), "url": url}))
    with serve(catalog) as base, Chromium(executable) as browser:
        browser.load(visit_page(base, visit))
        browser.wait_for_text(f"DICOM data of visit {visit.visit}", "datalad clone")
        command = shown(browser, "pre#description_clone")
        assert shlex.split(command)[:3] == ["datalad", "clone", url], command
        # bash reads the same URL: its third word (a target directory may follow)
        result = subprocess.run(["bash", "-c", "datalad() { printf '%s\\n' \"$2\"; }; " + command],
                                capture_output=True, text=True, check=True)
        assert result.stdout == url + "\n", command
        assert page_errors(browser) == []


# -- the study page ------------------------------------------------------------------------------

def test_study_page_lists_visits_in_natural_order(study_store):
    executable = chromium_or_skip()
    visits, order = study_store
    catalog = visits["v1"].catalog_dir
    with serve(catalog) as url, Chromium(executable) as browser:
        browser.load(catalog_url(url))
        page = browser.wait_for_text(STUDY_CONFIG["study"]["description"])
        wait_tab(browser, "Visits")
        table = shown_table(browser)
        assert table["columns"] == ["visit", "DICOM files", "series", "images", "TAR size", "findings"]
        names = [row[0] for row in table["rows"]]
        assert names == ["v1", "v2", "v9", "v10"], f"catalogued in the order {order}"
        for row in table["rows"]:
            visit = visits[row[0]]
            series = STUDY_VISITS[visit.visit]
            tarball = json.loads(visit.metadata_tarball.read_text())
            assert row[1:] == [
                str(sum(files for *_, files in series)),  # DICOM files
                str(len(series)),  # every number its own series
                str(sum(files for *_, files in series)),  # one frame each
                human_size(visit.tarball.stat().st_size),
                "\u26a0 not-dicom" if visit.visit == "v1" else "",
            ], row
            assert tarball["size"] == visit.tarball.stat().st_size
        assert table["links"] == [[name, f"#/dataset/{visit_id(visits[name])}/{DATASET_VERSION}/series"]
                                  for name in names]

        # the study, as the config describes it
        study = STUDY_CONFIG["study"]
        header = browser.evaluate("document.querySelector('.card-text') ? "
                                  "[...document.querySelectorAll('.card-text a')]"
                                  ".map(a => [a.innerText.trim(), a.getAttribute('href')]) : null")
        assert [study["license"]["name"], study["license"]["url"]] in header
        assert ["10.5555/icf.pilot", study["doi"]] in header
        assert "License: PDDL 1.0" in page and "DOI: 10.5555/icf.pilot" in page
        assert browser.evaluate("document.title") == "Facility catalog"
        check_nothing_unknown(browser)

        # each link opens its visit on its series
        for name in ("v10", "v2"):
            browser.load(catalog_url(url))
            wait_tab(browser, "Visits")
            browser.click_text("table a", name)
            browser.wait_for_text(f"DICOM data of visit {name}")
            wait_tab(browser, "Series")
            assert shown_table(browser)["rows"][0][0] == str(STUDY_VISITS[name][0][0])
        check_nothing_unknown(browser)
        assert "License: PDDL 1.0" in browser.text() and "DOI: 10.5555/icf.pilot" in browser.text()

        # "Last updated": when catalogued, kept by a rerun of unchanged input
        before = catalog_bytes(visits["v2"])
        shown_before = last_updated(browser)
        assert len(shown_before) == 10 and shown_before[4] == shown_before[7] == "-", shown_before
        time.sleep(1.1)  # a new time would differ
        step("catalogify_studyvisit_from_meta", visits["v2"])
        assert catalog_bytes(visits["v2"]) == before
        browser.load(visit_page(url, visits["v2"]))
        browser.wait_for_text("DICOM data of visit v2")
        assert last_updated(browser) == shown_before
        assert page_errors(browser) == []
        assert non_local(browser.requests) == []


def check_nothing_unknown(browser: Chromium) -> None:
    """No "Binder" (button or otherwise) and no "unknown" anywhere in the page."""
    text = browser.evaluate("document.body.innerText + ' ' + document.body.textContent").lower()
    html = browser.evaluate("document.documentElement.outerHTML").lower()
    for word in ("binder", "unknown", "not available"):
        assert word not in text, word
    assert "binder" not in html


# -- searching the study -------------------------------------------------------------------------

CARDS = "[...document.querySelectorAll('.tab-pane.active .card h5 a')].map(a => a.innerText.trim())"


def test_search_finds_a_visit_by_protocol_sequence_or_description(study_store):
    executable = chromium_or_skip()
    visits, _ = study_store
    with serve(visits["v1"].catalog_dir) as url, Chromium(executable) as browser:
        browser.load(study_page(url, "subdatasets"))
        browser.wait_for_text(STUDY_CONFIG["study"]["description"])
        wait_tab(browser, "Subdatasets")
        browser.wait_for("!!document.querySelector('.tab-pane.active input#input-1')", "the search box")
        everyone = ["v1", "v2", "v9", "v10"]
        assert browser.wait_for(f"{CARDS}.length === 4 && {CARDS}") == everyone
        for name, series in STUDY_VISITS.items():
            _, protocol, sequence, description, _ = series[0]
            for term in (protocol, sequence, description, description.upper()):
                browser.fill("input#input-1", term)
                browser.wait_for(f"JSON.stringify({CARDS}) === {json.dumps(json.dumps([name]))}",
                                 f"only {name} for {term!r}: {browser.evaluate(CARDS)}", timeout=10)
                browser.fill("input#input-1", "")
                browser.wait_for(f"{CARDS}.length === 4", "every visit again", timeout=10)
        browser.fill("input#input-1", "no such protocol")
        browser.wait_for(f"{CARDS}.length === 0", "no visit", timeout=10)
        assert page_errors(browser) == []
        assert non_local(browser.requests) == []


# -- screenshots for the user guide ----------------------------------------------------------------

def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    return struct.unpack(">II", data[16:24])


def test_screenshots(tmp_path, monkeypatch):
    """PNGs of the study page and a visit page of the sample visit, as
    ``make demo`` catalogues it (with a made-up public store URL), into
    $ICF_SCREENSHOTS (``make screenshots``: docs/images) or tmp_path."""
    target = Path(os.environ.get("ICF_SCREENSHOTS") or tmp_path)
    if os.environ.get("ICF_SCREENSHOTS"):
        monkeypatch.setenv("CI", "true")  # asked for screenshots: no Chromium is an error
    executable = chromium_or_skip()
    visit = Visit(tmp_path / "store", "demo", "visit1")
    build_visit(visit, SAMPLE_VISIT, home=tmp_path / "home", deposit=False,
                store_url="https://data.example.org/store")
    target.mkdir(parents=True, exist_ok=True)
    with serve(visit.catalog_dir) as url, Chromium(executable) as browser:
        browser.load(catalog_url(url))
        browser.wait_for_text("Study demo:")
        wait_tab(browser, "Visits")
        shots = {"study": browser.screenshot()}
        browser.click_text("table a", "visit1")
        browser.wait_for_text("DICOM data of visit visit1", "datalad clone '")
        wait_tab(browser, "Series")
        shots["visit"] = browser.screenshot()
        assert page_errors(browser) == []
        assert non_local(browser.requests) == []
    for name, data in shots.items():
        width, height = png_size(data)
        assert width == 1280 and 400 <= height <= 3000, (name, width, height)
        assert 10_000 < len(data) < 2_000_000, (name, len(data))
        (target / f"{name}.png").write_bytes(data)
