"""The study catalog: a DataLad Catalog (datalad-catalog 1.1.1) per study.

``<store>/<study>/catalog/`` is a static web site (made and patched by
:mod:`icf.catalog_site`). Its home page is the study: its description, and a
"Visits" table (every visit a row, in natural order: files, series, images,
TAR size, findings, a link to its page). Each visit's page opens on its
"Series" table (one row per image series, its findings and the objects in
no series above it), with a few figures and the one clone command. The
catalog config's ``study`` object may give the study's description, licence
and DOI (shown only when given). Everything shown comes from the visit's
two metadata JSON files (only the whitelisted tags, sizes and counts; no
paths, no checksums) plus the study/visit IDs, the store URL and the config.

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
  The study record is updated: its subdataset list and visits table are the
  ones already in the catalog plus (or with a fresh entry for) this visit.
- **Last updated** is when the visit was catalogued (``source_time``): a
  rerun whose record would be unchanged keeps the time in the visit's
  marker, so reruns of unchanged input change no byte.
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
- **Speed.** A run reads and writes two records and a pointer, whatever the
  number of visits: the cost does not grow with the catalog (the study
  record grows by ~400 bytes per visit: its subdataset entry and table row).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from icf import doing
from icf.catalog_site import SOURCE_NAME, check_results, checked_config, create_site
from icf.dicom import EXPORTED_TAGS
from icf.output import json_bytes, locked, write_files
from icf.records import Finding, SeriesSummary, TagValue, read_dicom_records, read_tarball_record
from icf.store import Visit, derived_uuid, natural_key

#: The one version of every record: records are updated in place, not versioned.
DATASET_VERSION = "latest"
SOURCE_VERSION = "1"
#: The catalog configuration shipped with icf-utils (name, colours, logo).
DEFAULT_CONFIG = Path(__file__).with_name("catalog-config.json")
#: A visit's keywords (the distinct text values of its exported tags, for
#: the search) are the first this many, sorted: a hostile visit cannot
#: blow up its record.
MAX_KEYWORDS = 200
#: The columns of the study's visits table.
VISIT_COLUMNS = ("visit", "DICOM files", "series", "images", "TAR size", "findings")

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


def series_columns() -> list[str]:
    """The columns of a visit's series table: series number, every other
    exported tag under its :func:`tag_label`, files and images (frames)."""
    return [tag_label("SeriesNumber"), *(tag_label(tag) for tag in EXPORTED_TAGS if tag != "SeriesNumber"),
            "files", "images"]


def series_row(series: SeriesSummary) -> list[str | int]:
    """A series as a row of :func:`series_columns`."""
    return [shown(series.tags["SeriesNumber"]),
            *(shown(series.tags[tag]) for tag in EXPORTED_TAGS if tag != "SeriesNumber"),
            series.files, series.frames]


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
        keywords=sorted(keywords - {""})[:MAX_KEYWORDS])


def human_size(size: int) -> str:
    """Bytes in binary units with one decimal: ``512 B``, ``1.5 KiB``, ``2.0 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _source(source_time: int | None = None) -> dict:
    source = {"source_name": SOURCE_NAME, "source_version": SOURCE_VERSION}
    return {"sources": [source if source_time is None else {**source, "source_time": source_time}]}


def study_id(study: str) -> str:
    return derived_uuid(study)


def visit_id(visit: Visit) -> str:
    return derived_uuid(visit.study, visit.visit)


@dataclass(frozen=True)
class StudySettings:
    """What the catalog config's ``study`` object says about the study:
    a description, a licence (``{"name", "url"}``) and a DOI, each optional."""

    description: str = ""
    license: dict[str, str] | None = None
    doi: str = ""

    def fields(self) -> dict:
        """The record fields they give (none for what is not known)."""
        return {**({"license": self.license} if self.license else {}), **({"doi": self.doi} if self.doi else {})}


def study_settings(catalog: Path) -> StudySettings:
    """The ``study`` object of the catalog's ``config.json`` (see
    :func:`icf.catalog_site.checked_config`)."""
    study = checked_config(catalog / "config.json").get("study", {})
    return StudySettings(study.get("description", ""), study.get("license") or None, study.get("doi", ""))


def visit_record(visit: Visit, facts: VisitFacts, store_url: str, settings: StudySettings = StudySettings(),
                 catalogued: int | None = None) -> dict:
    """The visit's catalog record (a datalad-catalog dataset item); it was
    ``catalogued`` at that time (seconds since the epoch), if known."""
    notes = [f"\u26a0 {finding.code}: {finding.message}" for finding in facts.findings]
    if facts.others:  # DICOMDIR and other objects: on a line of their own, not a series
        notes.append("Not in a series: " + ", ".join(
            f"{count} {'DICOMDIR' if kind == 'dicomdir' else 'other DICOM object(s)'}"
            for kind, count in facts.others.items()))
    figures = [  # datalad-catalog shows at most five
        {"name": "TAR size", "value": human_size(facts.tar_size)},
        {"name": "DICOM files", "value": facts.dicoms},
        {"name": "Series", "value": len(facts.series)},
        {"name": "Images", "value": facts.frames},
    ]
    if facts.findings:
        figures.append({"name": "Findings", "value": len(facts.findings)})
    return {
        "type": "dataset",
        "dataset_id": visit_id(visit),
        "dataset_version": DATASET_VERSION,
        "name": visit.visit,
        "description": (
            f"DICOM data of visit {visit.visit} of study {visit.study}: {facts.dicoms} DICOM files, "
            f"{facts.frames} images in {len(facts.series)} image series, archived in one TAR file. "
            f"Clone the dataset with DataLad (datalad-next installed) with the command below, then "
            f"get any of its files on demand with datalad get."
        ),
        "url": visit.clone_url(store_url),
        "keywords": facts.keywords,
        "top_display": figures,
        "additional_display": [{
            "name": "Series", "icon": "fas fa-table",
            "content": {"notes": notes, "columns": series_columns(),
                        "rows": [series_row(series) for series in facts.series]},
        }],
        **settings.fields(),
        "metadata_sources": _source(catalogued),
    }


def visit_table_row(visit: Visit, facts: VisitFacts) -> list:
    """The visit's row in the study's visits table (:data:`VISIT_COLUMNS`)."""
    link = {"text": visit.visit, "href": f"#/dataset/{visit_id(visit)}/{DATASET_VERSION}/series"}
    findings = f"\u26a0 {', '.join(f.code for f in facts.findings)}" if facts.findings else ""
    return [link, facts.dicoms, len(facts.series), facts.frames, human_size(facts.tar_size), findings]


def study_record(study: str, subdatasets: list[dict], rows: list[list],
                 settings: StudySettings = StudySettings()) -> dict:
    """The study's catalog record: the home page, every visit a subdataset
    and a row of its visits table."""
    return {
        "type": "dataset",
        "dataset_id": study_id(study),
        "dataset_version": DATASET_VERSION,
        "name": study,
        "description": settings.description or (
            f"Study {study}: the DICOM data of its visits, one DataLad dataset per "
            f"visit. Select a visit for its series and the command to clone it."
        ),
        "subdatasets": subdatasets,
        "additional_display": [{"name": "Visits", "icon": "fas fa-table",
                                "content": {"columns": list(VISIT_COLUMNS), "rows": rows}}],
        **settings.fields(),
        "metadata_sources": _source(),
    }


def with_visit(old_study: dict, visit: Visit) -> list[dict]:
    """The subdataset entries of the study record ``old_study`` with (a
    fresh entry for) ``visit``, in natural order of the visit IDs; entries
    that are not ours (a record edited by hand) are dropped."""
    entry = {"dataset_id": visit_id(visit), "dataset_version": DATASET_VERSION, "dataset_path": visit.visit}
    old = old_study.get("subdatasets")
    kept = [{key: s[key] for key in entry} for s in (old if isinstance(old, list) else [])
            if isinstance(s, dict) and all(isinstance(s.get(key), str) for key in entry)
            and s["dataset_path"] != visit.visit]
    return sorted([*kept, entry], key=lambda s: natural_key(s["dataset_path"]))


def with_row(old_study: dict, row: list) -> list[list]:
    """The visits table of the study record ``old_study`` with (a fresh)
    ``row`` for its visit, in natural order of the visit IDs; rows that are
    not ours (a record edited by hand) are dropped."""
    tabs = old_study.get("additional_display")
    tables = [tab.get("content") for tab in (tabs if isinstance(tabs, list) else [])
              if isinstance(tab, dict) and tab.get("name") == "Visits"]
    old_rows = tables[0].get("rows") if tables and isinstance(tables[0], dict) else None
    kept = [r for r in (old_rows if isinstance(old_rows, list) else [])
            if isinstance(r, list) and len(r) == len(VISIT_COLUMNS) and isinstance(r[0], dict)
            and isinstance(r[0].get("text"), str) and r[0]["text"] != row[0]["text"]]
    return sorted([*kept, row], key=lambda r: natural_key(r[0]["text"]))


def updated_records(catalog: Path, visit: Visit, visit_rec: dict, row: list,
                    settings: StudySettings) -> tuple[int, dict[Path, bytes]]:
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
        old = old if isinstance(old, dict) else {}
        subdatasets = with_visit(old, visit)
        study = study_record(visit.study, subdatasets, with_row(old, row), settings)
        for record in (visit_rec, study):
            check_results(catalog_add(catalog=stage, metadata=record, **api),
                          f"{catalog}: adding {record['name']}")
        check_results(catalog_set(
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


def catalogued_at(visit: Visit, record: dict) -> int:
    """When the visit was catalogued: the time its marker gives, if the
    record there is ``record`` (a rerun of unchanged input changes nothing),
    else now."""
    try:
        previous = json.loads(visit_marker(visit).read_bytes())
        previous_time = previous["metadata_sources"]["sources"][0]["source_time"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return int(time.time())
    unchanged = {**previous, "metadata_sources": None} == {**record, "metadata_sources": None}
    return previous_time if unchanged and type(previous_time) is int else int(time.time())


def catalogify(visit: Visit, store_url: str, config_file: Path = DEFAULT_CONFIG) -> str:
    """Create the study's catalog if needed and add or update the visit in it.

    Returns a one-line summary.
    """
    facts = read_facts(visit)
    with locked(visit.study_dir / ".catalog.lock", wait=True, busy="locked"), \
            doing("updating the catalog", visit.catalog_dir):
        create_site(visit.catalog_dir, config_file)
        settings = study_settings(visit.catalog_dir)
        unstamped = visit_record(visit, facts, store_url, settings)
        record = visit_record(visit, facts, store_url, settings, catalogued_at(visit, unstamped))
        visits, records = updated_records(visit.catalog_dir, visit, record, visit_table_row(visit, facts),
                                          settings)
        visit_marker(visit).parent.mkdir(exist_ok=True)
        write_files({**records, visit_marker(visit): json_bytes(record)}, overwrite=True)
    return (
        f"{visit.catalog_dir}: visit {visit.visit} ({facts.dicoms} DICOMs, "
        f"{len(facts.series)} series, {human_size(facts.tar_size)}); "
        f"study {visit.study} lists {visits} visit(s)"
    )
