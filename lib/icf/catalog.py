"""The study catalog: a DataLad Catalog (datalad-catalog 1.1.1) per study.

``<store>/<study>/catalog/`` is a static web site. Its home page is the study
(every visit a subdataset); each visit has a page with its clone URL, a few
figures (DICOM files, image series, images), a "DICOM" tab listing its
image series (one row each, then a row counting DICOMDIR and other
objects) and, when there are any, a "Findings" tab. Everything shown comes from the
visit's two metadata JSON files (only the whitelisted tags, sizes and
counts; no paths, no checksums) plus the study/visit IDs and the store URL.

Decisions, and why:

- **Stable IDs.** Dataset ids are derived from the study/visit IDs
  (:func:`icf.store.derived_uuid`) and every record has the same fixed
  version :data:`DATASET_VERSION`, so a rerun addresses the same record and
  the page URLs stay valid.
- **Updates replace.** The catalog's ``property_sources`` give every field we
  write a ``single`` rule for our source (:data:`SOURCE_NAME`): a new value
  replaces the old one instead of being merged into it. A visit's record is
  moreover rebuilt from nothing on each run, because datalad-catalog skips
  empty values on update (a keyword list that became empty would survive).
  The study record is updated: its subdataset list is the one already in the
  catalog plus (or with a fresh entry for) this visit.
- **Serialised and atomic.** datalad-catalog neither locks nor writes
  atomically. A run holds an exclusive ``flock`` on ``<study>/.catalog.lock``
  for its whole update, lets datalad-catalog write into a scratch catalog
  (``<study>/.catalog.stage``, holding copies of just the records it
  updates), and then moves each changed file into the real catalog by rename:
  visit record, study record, home pointer, the visit's marker, in that
  order and with signals held, so a reader never sees a half-written file or
  a study linking to a missing visit. The lock file is opened read-only, so
  one created by another user does not block. A new
  catalog is built as ``<study>/.catalog.new`` (its configuration staged in
  ``<study>/.catalog.setup``) and renamed into place.
- **Offline.** datalad-catalog's ``index.html`` loads Vue from a CDN although
  a copy ships in ``assets/``; we point it at the local copy and refuse to
  finish if any script or style sheet still comes from elsewhere.
- **Speed.** A run reads and writes two records and a pointer, whatever the
  number of visits: the cost does not grow with the catalog (the study
  record's subdataset list grows by ~200 bytes per visit).
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from icf import IcfError, doing
from icf.output import json_bytes, locked, read_json, write_files
from icf.records import Finding, SeriesSummary, TagValue, read_dicom_records, read_tarball_record
from icf.store import Visit, derived_uuid

#: The one version of every record: records are updated in place, not versioned.
DATASET_VERSION = "latest"
#: The metadata source named in every record and in the ``single`` rules.
SOURCE_NAME = "icf-utils"
SOURCE_VERSION = "1"
#: The catalog configuration shipped with icf-utils (name, colours, logo).
DEFAULT_CONFIG = Path(__file__).with_name("catalog-config.json")
#: The fields we write, each replaced (not merged) on update.
REPLACED_FIELDS = (
    "name", "description", "url", "keywords", "subdatasets",
    "additional_display", "top_display",
)
#: Scripts/styles that datalad-catalog's index.html loads from a CDN -> the
#: copy it ships under assets/.
LOCAL_ASSETS = {
    "https://unpkg.com/vue@2.6.14/dist/vue.js": "assets/vue.2.6.14.min.js",
}

@dataclass(frozen=True)
class VisitFacts:
    """What the catalog shows about a visit, read from its metadata JSON."""

    tar_size: int
    dicoms: int
    #: files and frames of kind image, and how many of each other kind
    images: int
    frames: int
    others: dict[str, int]
    series: list[SeriesSummary]
    findings: list[Finding]
    #: every distinct non-empty text value of an exported tag, sorted
    keywords: list[str]


def tag_label(keyword: str) -> str:
    """A tag's column label: its keyword in words, acronyms kept
    (``MRAcquisitionType`` -> ``MR acquisition type``)."""
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z][a-z]*|[a-z]+|\d+", keyword)
    return " ".join(word if word.isupper() and len(word) > 1 else word.lower() for word in words)


def shown(value: TagValue) -> str:
    """A tag value as text: a multi-valued tag joined with ', '."""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def series_row(series: SeriesSummary) -> dict[str, str | int]:
    """A series as a table row: series number first, then every exported
    tag under its :func:`tag_label`, then its files and images (frames)."""
    return {tag_label("SeriesNumber"): shown(series.tags["SeriesNumber"]),
            **{tag_label(tag): shown(value) for tag, value in series.tags.items() if tag != "SeriesNumber"},
            "files": series.files, "images": series.frames}


def read_facts(visit: Visit) -> VisitFacts:
    """Read ``<visit>_metadata_tarball.json`` and ``<visit>_metadata_dicoms.json``."""
    tarball = read_tarball_record(visit)
    dicoms = read_dicom_records(visit)
    kinds = Counter(record.kind for record in dicoms)
    keywords = {shown(value) for record in dicoms for value in record.tags.values()
                if not isinstance(value, int)}
    return VisitFacts(
        tar_size=tarball.size, dicoms=len(dicoms), images=kinds.pop("image", 0),
        frames=sum(record.frames for record in dicoms if record.kind == "image"),
        others=dict(sorted(kinds.items())), series=tarball.series, findings=tarball.findings,
        keywords=sorted(keywords - {""}))


def human_size(size: int) -> str:
    """Bytes in binary units with one decimal: ``512 B``, ``1.5 KiB``, ``2.0 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _source() -> dict:
    return {"sources": [{"source_name": SOURCE_NAME, "source_version": SOURCE_VERSION}]}


def study_id(study: str) -> str:
    return derived_uuid(study)


def visit_id(visit: Visit) -> str:
    return derived_uuid(visit.study, visit.visit)


def visit_record(visit: Visit, facts: VisitFacts, store_url: str) -> dict:
    """The visit's catalog record (a datalad-catalog dataset item)."""
    table = {}
    for series in facts.series:
        key = f"Series {shown(series.tags['SeriesNumber']) or '(no number)'}"
        while key in table:  # another series with the same number
            key += "'"
        table[key] = series_row(series)
    if facts.others:  # DICOMDIR and other objects: on a line of their own, not a series
        table["Other DICOM objects"] = {("DICOMDIR" if kind == "dicomdir" else "other objects"): count
                                        for kind, count in facts.others.items()}
    figures = [  # datalad-catalog shows at most five
        {"name": "TAR size", "value": human_size(facts.tar_size)},
        {"name": "DICOM files", "value": facts.dicoms},
        {"name": "Series", "value": len(facts.series)},
        {"name": "Images", "value": facts.frames},
    ]
    tabs = [{"name": "DICOM", "icon": "fas fa-table", "content": table}]
    if facts.findings:
        figures.append({"name": "Findings", "value": len(facts.findings)})
        tabs.append({"name": "Findings", "icon": "fas fa-exclamation-triangle",
                     "content": {finding.code: finding.message for finding in facts.findings}})
    return {
        "type": "dataset",
        "dataset_id": visit_id(visit),
        "dataset_version": DATASET_VERSION,
        "name": visit.visit,
        "description": (
            f"DICOM data of visit {visit.visit} of study {visit.study}: "
            f"{facts.dicoms} DICOM files, {facts.frames} images in {len(facts.series)} image series, "
            f"archived in one TAR file. Clone the dataset with DataLad (datalad-next installed) "
            f"to browse the files and get any of them on demand. In a shell, quote the "
            f"URL: datalad clone '{visit.clone_url(store_url)}'"
        ),
        "url": visit.clone_url(store_url),
        "keywords": facts.keywords,
        "top_display": figures,
        "additional_display": tabs,
        "metadata_sources": _source(),
    }


def study_record(study: str, subdatasets: list[dict]) -> dict:
    """The study's catalog record: the home page, every visit a subdataset."""
    return {
        "type": "dataset",
        "dataset_id": study_id(study),
        "dataset_version": DATASET_VERSION,
        "name": study,
        "description": (
            f"Study {study}: the DICOM data of its visits, one DataLad dataset per "
            f"visit. Select a visit for its series and the command to clone it."
        ),
        "subdatasets": subdatasets,
        "metadata_sources": _source(),
    }


def with_visit(subdatasets: list[dict], visit: Visit) -> list[dict]:
    """The study's subdataset entries with (a fresh entry for) ``visit``, by visit ID."""
    entry = {
        "dataset_id": visit_id(visit),
        "dataset_version": DATASET_VERSION,
        "dataset_path": visit.visit,
    }
    kept = [
        {key: s[key] for key in entry}
        for s in subdatasets if s["dataset_path"] != visit.visit
    ]
    return sorted(kept + [entry], key=lambda s: s["dataset_path"])


def catalog_config(config_file: Path) -> tuple[dict, Path | None]:
    """The look from ``config_file`` (JSON) with our ``property_sources``, and the logo.

    The property rules are part of how this tool updates records, not of the
    look, so they are always ours. The logo path (relative to the config file)
    is returned resolved; the config then names just the logo's file name,
    because datalad-catalog 1.1.1 crashes on an absolute logo path.
    """
    config = read_json(config_file)
    if not isinstance(config, dict):
        raise IcfError(f"{config_file}: not a JSON object")
    logo = None
    if config.get("logo_path"):
        logo = (config_file.parent / config["logo_path"]).resolve()
        if not logo.is_file():
            raise IcfError(f"{config_file}: logo {logo} does not exist")
        config["logo_path"] = logo.name
    rule = {"rule": "single", "source": SOURCE_NAME}
    config["property_sources"] = {
        "dataset": {field: dict(rule) for field in REPLACED_FIELDS},
        "file": {},
    }
    return config, logo


class _RemoteRefs(HTMLParser):
    """Collects every script/style sheet/icon reference that is not local."""

    def __init__(self) -> None:
        super().__init__()
        self.remote: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ref = dict(attrs).get({"script": "src", "link": "href"}.get(tag, ""))
        if ref and re.match(r"([a-z][a-z0-9+.-]*:|//)", ref, re.IGNORECASE):
            self.remote.append(ref)


def remote_refs(html: str) -> list[str]:
    """The non-local ``<script src>`` and ``<link href>`` of a page."""
    parser = _RemoteRefs()
    parser.feed(html)
    return parser.remote


def offline_index(catalog: Path, title: str | None = None) -> None:
    """Make ``index.html`` load only local assets (and set its title); atomic, idempotent."""
    index = catalog / "index.html"
    html = original = index.read_text(encoding="utf-8")
    for remote, local in LOCAL_ASSETS.items():
        if (catalog / local).is_file():
            html = html.replace(f'"{remote}"', f'"{local}"')
    if title is not None:
        html = re.sub(r"<title>.*?</title>", lambda _: f"<title>{_escape(title)}</title>",
                      html, count=1)
    left = remote_refs(html)
    if left:
        raise IcfError(f"{index}: still loads {', '.join(left)} from the network")
    if html != original:
        write_files({index: html.encode("utf-8")}, overwrite=True)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _check(results: list[dict], what: str) -> list[dict]:
    """Raise IcfError unless every datalad result is ok."""
    bad = [r for r in results if r.get("status") not in ("ok", "notneeded")]
    if bad or not results:
        detail = "; ".join(str(r.get("message") or r.get("status")) for r in bad) or "no result"
        raise IcfError(f"{what}: {detail}")
    return results


def create_site(catalog: Path, config_file: Path) -> None:
    """Create the catalog's web site (no records yet) with ``config_file``'s look.

    Built beside the final place and renamed into it, so a catalog directory
    is either complete or absent. An existing catalog keeps its look (the
    config is applied at creation only); its ``index.html`` is made offline
    in any case (e.g. a catalog made by an earlier tool).
    """
    if catalog.exists():
        offline_index(catalog)
        return
    from datalad.api import catalog_create

    config, logo = catalog_config(config_file)
    new, setup = catalog.with_name(".catalog.new"), catalog.with_name(".catalog.setup")
    for scratch in (new, setup):  # left by a killed run
        shutil.rmtree(scratch, ignore_errors=True)
    setup.mkdir()
    try:
        write_files({setup / "config.json": json_bytes(config)})
        if logo:
            shutil.copyfile(logo, setup / logo.name)
        _check(catalog_create(
            catalog=new, config_file=setup / "config.json", force=False,
            result_renderer="disabled", return_type="list", on_failure="ignore",
        ), f"{catalog}: creating the catalog")
        offline_index(new, config.get("catalog_name") or "Study catalog")
        os.rename(new, catalog)
    finally:
        for scratch in (new, setup):
            shutil.rmtree(scratch, ignore_errors=True)


def updated_records(catalog: Path, visit: Visit, visit_rec: dict) -> tuple[int, dict[Path, bytes]]:
    """Let datalad-catalog add/replace the visit's record, list it in the
    study record and set home, in a scratch copy.

    Returns the number of visits the study now lists, and the catalog files
    to write, path -> content, in the order they must be put in place.
    """
    from datalad.api import catalog_add, catalog_get, catalog_set

    api = dict(result_renderer="disabled", return_type="list", on_failure="ignore")
    stage = catalog.with_name(".catalog.stage")
    shutil.rmtree(stage, ignore_errors=True)  # left by a killed run
    (stage / "metadata").mkdir(parents=True)
    try:
        for name in ("assets", "artwork", "index.html", "config.json", "schema", "templates"):
            (stage / name).symlink_to(catalog.resolve() / name)
        sid = study_id(visit.study)
        # the study's record is updated, the visit's rebuilt (see module docstring)
        if (catalog / "metadata" / sid).is_dir():
            shutil.copytree(catalog / "metadata" / sid, stage / "metadata" / sid)
        existing = catalog_get(
            catalog=stage, property="metadata", dataset_id=sid,
            dataset_version=DATASET_VERSION, **api,
        )
        old = existing[0].get("output") if existing and existing[0].get("status") == "ok" else None
        subdatasets = with_visit((old or {}).get("subdatasets", []), visit)
        for record in (visit_rec, study_record(visit.study, subdatasets)):
            _check(catalog_add(catalog=stage, metadata=record, **api),
                   f"{catalog}: adding {record['name']}")
        _check(catalog_set(
            catalog=stage, property="home", dataset_id=sid,
            dataset_version=DATASET_VERSION, reckless="overwrite", **api,
        ), f"{catalog}: setting the home page")
        staged = stage / "metadata"
        order = [staged / visit_rec["dataset_id"], staged / sid, staged / "super.json"]
        files = [f for top in order for f in sorted([top] if top.is_file() else top.rglob("*"))
                 if f.is_file()]
        for path in files:
            (catalog / "metadata" / path.relative_to(staged)).parent.mkdir(parents=True, exist_ok=True)
        return len(subdatasets), {catalog / "metadata" / f.relative_to(staged): f.read_bytes()
                                  for f in files}
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def visit_marker(visit: Visit) -> Path:
    """``catalog/visits/<visit>.json``: the record last added for the visit,
    written after the catalog took it, so that its time tells make when the
    visit was last catalogued."""
    return visit.catalog_dir / "visits" / f"{visit.visit}.json"


def catalogify(visit: Visit, store_url: str, config_file: Path = DEFAULT_CONFIG) -> str:
    """Create the study's catalog if needed and add or update the visit in it.

    Returns a one-line summary.
    """
    facts = read_facts(visit)
    record = visit_record(visit, facts, store_url)
    with locked(visit.study_dir / ".catalog.lock", wait=True, busy="locked"), \
            doing("updating the catalog", visit.catalog_dir):
        create_site(visit.catalog_dir, config_file)
        visits, records = updated_records(visit.catalog_dir, visit, record)
        visit_marker(visit).parent.mkdir(exist_ok=True)
        write_files({**records, visit_marker(visit): json_bytes(record)}, overwrite=True)
    return (
        f"{visit.catalog_dir}: visit {visit.visit} ({facts.dicoms} DICOMs, "
        f"{len(facts.series)} series, {human_size(facts.tar_size)}); "
        f"study {visit.study} lists {visits} visit(s)"
    )
