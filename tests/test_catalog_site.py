"""The patches of datalad-catalog 1.1.1's site (icf.catalog_site.PATCHES):
each one still matches the pinned upstream file exactly as often as it
says, so an upgrade of datalad-catalog fails here first; applying them is
idempotent; a site whose files changed is refused, naming the patch."""

from __future__ import annotations

import shutil
from pathlib import Path

import datalad_catalog
import pytest

from icf import IcfError
from icf.catalog_site import DATASET_OPTIONS, PATCHES, patch_site
from icf.output import read_json

UPSTREAM = Path(datalad_catalog.__file__).parent / "catalog"


@pytest.mark.parametrize("name", PATCHES)
def test_patch_matches_the_pinned_upstream_file(name):
    for relative, old, new, count in PATCHES[name]:
        text = (UPSTREAM / relative).read_text(encoding="utf-8")
        assert text.count(old) == count, (name, relative, old[:60])
        assert new not in text, (name, relative)


@pytest.fixture
def site(tmp_path):
    """The files of a site as catalog_create copies them."""
    site = tmp_path / "catalog"
    for name in ("assets", "templates", "schema"):
        shutil.copytree(UPSTREAM / name, site / name)
    (site / "config.json").write_text('{"catalog_name": "x", "dataset_options": {"include_metadata_export": true}}')
    return site


def contents(site: Path) -> dict[str, bytes]:
    return {str(p.relative_to(site)): p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()}


def test_patches_apply_once(site):
    patch_site(site)
    patched = contents(site)
    for edits in PATCHES.values():
        for relative, _, new, _ in edits:
            assert new in (site / relative).read_text(encoding="utf-8")
    assert read_json(site / "config.json")["dataset_options"] == {"include_metadata_export": True,
                                                                  **DATASET_OPTIONS}
    patch_site(site)
    assert contents(site) == patched


def test_a_changed_upstream_file_is_refused_naming_the_patch(site):
    template = site / "templates" / "dataset-template.html"
    template.write_text(template.read_text().replace("datalad clone {{displayData.url}}", "datalad clone"))
    with pytest.raises(IcfError, match="patch 'clone-command' expects 1 occurrence"):
        patch_site(site)
