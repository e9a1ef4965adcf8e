"""The study catalog's web site: datalad-catalog 1.1.1's static site, created
once per study, made to work offline and patched where 1.1.1 falls short.

The site is created by ``catalog_create`` beside its final place and renamed
into it. Then, in the site's own copies (never the installed package), every
patch of :data:`PATCHES` is applied: each is named, replaces an exact string
that must occur exactly as often as pinned (else the pinned upstream file
changed, and the site is refused), and is applied once (a site already
patched is left as it is; a site made before a patch gets it on the next
run). ``tests/test_catalog_site.py`` checks every patch against the
installed package, so upgrading datalad-catalog fails there first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

from icf import IcfError
from icf.output import json_bytes, read_json, write_files

#: The metadata source named in every record and in the ``single`` rules.
SOURCE_NAME = "icf-utils"
#: The fields we write, each replaced (not merged) on update.
REPLACED_FIELDS = (
    "name", "description", "url", "keywords", "subdatasets",
    "additional_display", "top_display", "license", "doi",
)
#: Our settings of the site (``config.json``'s ``dataset_options``): a
#: visit opens on its series, the study on its visits (see patch
#: ``default-tab``); no Binder button (patch ``header``).
DATASET_OPTIONS = {"default_tab": ["series", "visits"], "include_binder": False}
#: Scripts/styles that datalad-catalog's index.html loads from a CDN -> the
#: copy it ships under assets/.
LOCAL_ASSETS = {
    "https://unpkg.com/vue@2.6.14/dist/vue.js": "assets/vue.2.6.14.min.js",
}

_JS = "assets/app_component_dataset.js"
_HTML = "templates/dataset-template.html"
_SCHEMA = "schema/jsonschema_dataset.json"

def _natural_sort(upstream_comparison: str, first: str, second: str) -> tuple[str, str, str, int]:
    """The edit of one of the two subdataset sorts (by last path component)."""
    old = f"""                sorted = subdatasets.sort((a, b) =>
                  a.dirs_from_path[a.dirs_from_path.length - 1] {upstream_comparison}
                  b.dirs_from_path[b.dirs_from_path.length - 1]
                    ? 1
                    : -1
                );"""
    new = f"""                sorted = subdatasets.sort((a, b) =>
                  {first}.dirs_from_path.at(-1).localeCompare({second}.dirs_from_path.at(-1), undefined, {{numeric: true}})
                );"""
    return (_JS, old, new, 1)


#: name -> [(file in the site, old, new, how often old occurs upstream)]
PATCHES: dict[str, list[tuple[str, str, str, int]]] = {
    # a tab link (#/dataset/<id>/<version>/<tab>) threw "tabs is not defined",
    # compared a lower-cased name with tab names as given, and b-tabs kept the
    # previous page's tab when navigating inside the app
    "tab-links": [
        (_JS, "selectTab = tabs.indexOf(tab_param.toLowerCase())",
         "selectTab = available_tabs.indexOf(tab_param.toLowerCase())", 1),
        (_JS, "available_tabs_lower = available_tabs\n",
         "available_tabs_lower = available_tabs.map(t => t.toLowerCase())\n", 2),
        (_HTML, '<b-tabs card content-class="mt-3"',
         '<b-tabs :key="selectedDataset.dataset_id + \'/\' + selectedDataset.dataset_version" '
         'card content-class="mt-3"', 1),
    ],
    # the default tab may be a list, the first one a page has wins, and comes
    # from the site's dataset_options when a dataset sets none
    "default-tab": [
        (_JS, """            default_tab = default_tab ? default_tab : "content"
            var idx = available_tabs.indexOf(default_tab.toLowerCase())
            var default_tab_idx = idx >= 0 ? idx : 0
""", """            var default_tab_idx = this.defaultTabIdx(available_tabs, default_tab)
""", 1),
        (_JS, """          getDefaultTabIdx() {
            var default_tab = this.selectedDataset.config?.dataset_options?.default_tab
            default_tab = default_tab ? default_tab : "content"
            var idx = this.selectedDataset.available_tabs.indexOf(default_tab.toLowerCase())
            return idx >= 0 ? idx : 0
          },
""", """          getDefaultTabIdx() {
            return this.defaultTabIdx(this.selectedDataset.available_tabs,
                                      this.selectedDataset.config?.dataset_options?.default_tab)
          },
          defaultTabIdx(available_tabs, default_tab) {
            var wanted = [].concat(default_tab || this.$root.dataset_options?.default_tab || "content")
            var idx = wanted.map(d => available_tabs.indexOf(String(d).toLowerCase())).find(i => i >= 0)
            return idx === undefined ? 0 : idx
          },
""", 1),
    ],
    # empty Content / Subdatasets tabs are not offered
    "hide-empty-tabs": [
        (_HTML, '<b-tab @click="getFiles" key="content" ref="tabelement">',
         '<b-tab @click="getFiles" key="content" ref="tabelement" '
         ':title-item-class="selectedDataset.children && selectedDataset.children.length ? \'\' : \'d-none\'">',
         1),
        (_HTML, '<b-tab key="subdatasets" ref="tabelement">',
         '<b-tab key="subdatasets" ref="tabelement" :title-item-class="selectedDataset.subdatasets && '
         'selectedDataset.subdatasets.length ? \'\' : \'d-none\'">', 1),
    ],
    # the study's search box threw a TypeError on visits without authors, and
    # it looks at keywords too (protocols, sequences, series descriptions)
    "search": [
        (_JS, "c.authors.some(", "(c.authors || []).some(", 3),
        (_HTML, 'placeholder="Filter by dataset or author name"',
         'placeholder="Filter by visit, protocol, sequence or series description"', 1),
        (_JS, """                  f.name && f.name.toLowerCase().indexOf(this.search_text.toLowerCase()) >= 0
                )
              );""", """                  f.name && f.name.toLowerCase().indexOf(this.search_text.toLowerCase()) >= 0
                ) ||
                (c.keywords || []).some(
                  (k) => String(k).toLowerCase().indexOf(this.search_text.toLowerCase()) >= 0
                )
              );""", 1),
    ],
    # visits sorted as people count: v2 before v10 (ascending, descending)
    "natural-order": [_natural_sort(">", "a", "b"), _natural_sort("<", "b", "a")],
    # one clone command, the URL in single quotes (a ' in it as '\''), into a
    # directory named after the visit, in the button's dialog and under the
    # description, in a block that scrolls instead of wrapping the URL
    "clone-command": [
        (_JS, """              // Description
""", """              // the clone command, the URL one single-quoted shell word
              disp_dataset.clone_command = "datalad clone '" + String(disp_dataset.url).split("'").join("'\\\\''") + "'" +
                (/^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(dataset.name || "") ? " " + dataset.name : "")
              // Description
""", 1),
        (_HTML, """                  <code id="clone_code">
                    datalad clone {{displayData.url}}
                  </code>""", """                  <code id="clone_code" style="display: block; white-space: pre; overflow-x: auto">{{displayData.clone_command}}</code>""", 1),
        (_HTML, """              <span v-else>{{selectedDataset.description}}</span>
""", """              <span v-else>{{selectedDataset.description}}</span>
              <pre v-if="displayData.url" id="description_clone" class="mt-2 mb-0"
                   style="white-space: pre; overflow-x: auto; text-align: left">{{displayData.clone_command}}</pre>
""", 1),
    ],
    # no Binder button (an external service) unless asked for; DOI, licence
    # and "last updated" only when known, not "unknown"
    "header": [
        (_HTML, '<span><b-button variant="outline-dark" size="sm" @click="openWithBinder(displayData.url)">',
         '<span v-if="$root.dataset_options && $root.dataset_options.include_binder">'
         '<b-button variant="outline-dark" size="sm" @click="openWithBinder(displayData.url)">', 1),
        (_HTML, """          <strong>Last updated:</strong> <span v-if="displayData.last_updated">{{displayData.last_updated}}&nbsp;</span>
          <span v-else><em>unknown</em></span>&nbsp;
          <strong>DOI:</strong> <span v-if="selectedDataset.doi"><a :href="selectedDataset.doi" target="_blank"> {{selectedDataset.doi.replace("https://doi.org/", "")}}</a></span>
          <span v-else><em>unknown</em></span>&nbsp;
          <strong>License:</strong> <span v-if="selectedDataset.license && selectedDataset.license.name"><a :href="selectedDataset.license.url" target="_blank"> {{selectedDataset.license.name}}</a></span>
          <span v-else><em>unknown</em></span>
""", """          <span v-if="displayData.last_updated"><strong>Last updated:</strong> {{displayData.last_updated}}&nbsp;</span>
          <span v-if="selectedDataset.doi"><strong>DOI:</strong> <a :href="selectedDataset.doi" target="_blank"> {{selectedDataset.doi.replace("https://doi.org/", "")}}</a>&nbsp;</span>
          <span v-if="selectedDataset.license && selectedDataset.license.name"><strong>License:</strong> <a :href="selectedDataset.license.url" target="_blank"> {{selectedDataset.license.name}}</a></span>
""", 1),
    ],
    # a tab whose content is {"notes": [...], "columns": [...], "rows": [[...]]}
    # is a real table (a cell {"text", "href"} a link), its notes above it
    "table": [
        (_HTML, """                <span v-else>
                  <table class="table table-striped">
""", """                <div v-else-if="Array.isArray(new_tab.content.rows)" class="table-responsive">
                  <p v-for="note in (new_tab.content.notes || [])" class="mb-2">{{note}}</p>
                  <table class="table table-striped table-sm">
                    <thead><tr><th v-for="column in new_tab.content.columns">{{column}}</th></tr></thead>
                    <tbody><tr v-for="row in new_tab.content.rows"><td v-for="cell in row">
                      <a v-if="cell && cell.href" :href="cell.href">{{cell.text}}</a><span v-else>{{cell}}</span>
                    </td></tr></tbody>
                  </table>
                </div>
                <span v-else>
                  <table class="table table-striped">
""", 1),
    ],
    # jsonschema checks the study's subdataset list for duplicates by
    # comparing every pair of entries (dicts are unhashable): quadratic, most
    # of each run's time at 1,000 visits. with_visit() keeps the list unique.
    "subdatasets-unchecked-unique": [
        (_SCHEMA, """        "required": ["dataset_id", "dataset_version", "dataset_path"]
      },
      "uniqueItems": true""", """        "required": ["dataset_id", "dataset_version", "dataset_path"]
      },
      "uniqueItems": false""", 1),
    ],
    # a page chose its tab only after fetching the record of every subdataset
    # (for the Subdatasets tab): the study page showed its Visits table after
    # all visits' records, 11-13 s at 1,000 visits. The tab is now chosen as
    # soon as the page's own record is there, and again at the end only if
    # the user has not picked one meanwhile.
    "early-tab": [
        (_JS, "          this.dataset_ready = true;\n\n          if (\n",
         "          this.dataset_ready = true;\n"
         "          this.setCorrectTab(to.params.tab_name, this.tabNames(this.$root.selectedDataset), null)\n"
         "          this.early_tab = this.tabIndex\n\n          if (\n", 1),
        (_JS, "          app.selectedDataset = JSON.parse(text);\n          this.dataset_ready = true;\n          if (\n",
         "          app.selectedDataset = JSON.parse(text);\n          this.dataset_ready = true;\n"
         "          this.setCorrectTab(this.$route.params.tab_name, this.tabNames(app.selectedDataset), null)\n"
         "          this.early_tab = this.tabIndex\n          if (\n", 1),
        (_JS, "          // Set the correct tab to be rendered\n          this.setCorrectTab(\n",
         "          // Set the correct tab to be rendered, unless the user chose one meanwhile\n"
         "          if (this.tabIndex === this.early_tab) this.setCorrectTab(\n", 2),
        (_JS, "          getDefaultTabIdx() {\n",
         "          tabNames(dataset) {\n"
         "            var tabs = ['content', 'subdatasets'].concat(['publications', 'funding', 'provenance'].filter(\n"
         "              t => dataset[t] && dataset[t].length))\n"
         "            return tabs.concat((dataset.additional_display || []).map(d => d.name)).map(t => t.toLowerCase())\n"
         "          },\n"
         "          getDefaultTabIdx() {\n", 1),
    ],
}


def patch_site(site: Path) -> None:
    """Apply :data:`PATCHES` and :data:`DATASET_OPTIONS` to a created site
    (atomically per file; a patch already applied is skipped)."""
    changed: dict[Path, str] = {}
    for name, edits in PATCHES.items():
        for relative, old, new, count in edits:
            path = site / relative
            text = changed.get(path) or path.read_text(encoding="utf-8")
            if new in text:
                continue
            if text.count(old) != count:
                raise IcfError(f"{path}: patch {name!r} expects {count} occurrence(s) of {old.strip()[:60]!r} "
                               f"and finds {text.count(old)} (not datalad-catalog 1.1.1's file?)")
            changed[path] = text.replace(old, new)
    config = checked_config(site / "config.json")
    ours = {**config, **our_settings(config)}
    if ours != config:
        changed[site / "config.json"] = json.dumps(ours, indent=1) + "\n"
    if changed:
        write_files({path: text.encode("utf-8") for path, text in changed.items()}, overwrite=True)


def catalog_config(config_file: Path) -> tuple[dict, Path | None]:
    """The look from ``config_file`` (JSON) with our ``property_sources``, and the logo.

    The property rules are part of how this tool updates records, not of the
    look, so they are always ours. The logo path (relative to the config file)
    is returned resolved; the config then names just the logo's file name,
    because datalad-catalog 1.1.1 crashes on an absolute logo path.
    """
    config = checked_config(config_file)
    logo = None
    if config.get("logo_path"):
        logo = (config_file.parent / config["logo_path"]).resolve()
        if not logo.is_file():
            raise IcfError(f"{config_file}: logo {logo} does not exist")
        config["logo_path"] = logo.name
    return {**config, **our_settings(config)}, logo


def our_settings(config: dict) -> dict:
    """The parts of a site's config that are ours, not the look: how records
    are updated (``property_sources``: every field we write replaced) and
    :data:`DATASET_OPTIONS`."""
    rule = {"rule": "single", "source": SOURCE_NAME}
    return {
        "property_sources": {"dataset": {field: dict(rule) for field in REPLACED_FIELDS}, "file": {}},
        "dataset_options": {**config.get("dataset_options", {}), **DATASET_OPTIONS},
    }


#: The config's fields whose type we rely on, and the ``study`` object's.
_CONFIG_TEXT = ("catalog_name", "logo_path", "link_color", "link_hover_color")
_LINK = re.compile(r"https?://\S+")


def checked_config(path: Path) -> dict:
    """A catalog config (JSON) checked where this tool reads it: an object,
    its text fields text, ``dataset_options`` an object, and ``study`` an
    object with an optional ``description`` (text), ``doi`` (an http(s)
    link) and ``license`` (``{"name": text, "url": http(s) link}``)."""
    config = read_json(path)
    if not isinstance(config, dict):
        raise IcfError(f"{path}: not a JSON object")
    bad = next((f for f in _CONFIG_TEXT if f in config and not isinstance(config[f], str)), None)
    if bad or not isinstance(config.get("dataset_options", {}), dict):
        raise IcfError(f"{path}: {bad or 'dataset_options'!r} has the wrong type")
    study = config.get("study", {})
    license = study.get("license", {}) if isinstance(study, dict) else None
    if not (isinstance(study, dict) and set(study) <= {"description", "license", "doi"}
            and isinstance(study.get("description", ""), str)
            and (study.get("doi") is None or (isinstance(study["doi"], str) and _LINK.fullmatch(study["doi"])))
            and isinstance(license, dict) and set(license) <= {"name", "url"}
            and isinstance(license.get("name", ""), str)
            and (license.get("url") is None or (isinstance(license["url"], str) and _LINK.fullmatch(license["url"])))):
        raise IcfError(f"{path}: 'study' must be an object with an optional 'description' (text), 'doi' "
                       "(an https:// link) and 'license' ({\"name\": text, \"url\": an https:// link})")
    return config


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


def check_results(results: list[dict], what: str) -> list[dict]:
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
        patch_site(catalog)
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
        check_results(catalog_create(
            catalog=new, config_file=setup / "config.json", force=False,
            result_renderer="disabled", return_type="list", on_failure="ignore",
        ), f"{catalog}: creating the catalog")
        offline_index(new, config.get("catalog_name") or "Study catalog")
        patch_site(new)
        os.rename(new, catalog)
    finally:
        for scratch in (new, setup):
            shutil.rmtree(scratch, ignore_errors=True)


