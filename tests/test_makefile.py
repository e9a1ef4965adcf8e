"""The Makefile (issue 6): real file targets, incremental reruns, the
study-wide chain with -j, and fixity through make, on the real sample DICOMs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE_VISIT

STUDY = "study1"
VISITS = ("v1", "v2", "v3")
STEP_SCRIPTS = ("make_studyvisit_archive", "deposit_visit_metadata", "deposit_visit_dataset",
                "catalogify_studyvisit_from_meta")


def make(store: Path, *args, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``make -f <repo>/Makefile STORE=<store> STUDY=study1 <args>`` from ``cwd``
    (default: the store's parent, never the repository)."""
    result = subprocess.run(["make", "-f", REPO / "Makefile", f"STORE={store}", f"STUDY={STUDY}", *args],
                            cwd=cwd or store.parent, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def scripts_run(result: subprocess.CompletedProcess) -> list[str]:
    """Which step scripts make ran, from its echoed recipes."""
    return [script for line in result.stdout.splitlines() for script in STEP_SCRIPTS
            if f"/bin/{script} " in line]


def visit_files(study_dir: Path, visit: str) -> list[str]:
    return [f"{visit}_dicom.tar", f"{visit}_dicom.tar.md5sum", f"{visit}_metadata_tarball.json",
            f"{visit}_metadata_dicoms.json", f"{visit}_XDLRA--refs", f"{visit}_XDLRA--repo-export",
            f"catalog/visits/{visit}.json"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Three visits archived one by one, then ``make -j 3 STUDY=study1 catalog``
    (no VISIT) bringing all of them up to date in parallel."""
    store = tmp_path_factory.mktemp("make") / "store"
    for visit in VISITS:
        result = make(store, f"VISIT={visit}", f"INPUT={SAMPLE_VISIT}", "archive")
        assert scripts_run(result) == ["make_studyvisit_archive"]
    result = make(store, "-j", "3", "catalog")
    ran = scripts_run(result)
    assert sorted(ran) == sorted(STEP_SCRIPTS[1:] * len(VISITS)), result.stdout
    return store / STUDY


@pytest.mark.slow
def test_study_wide_parallel_chain_leaves_every_file(study):
    for visit in VISITS:
        for name in visit_files(study, visit):
            assert (study / name).is_file(), name
    catalog_ids = {json.loads((study / f"catalog/visits/{v}.json").read_text())["dataset_id"]
                   for v in VISITS}
    assert len(catalog_ids) == len(VISITS)
    leftovers = [p.name for p in study.iterdir() if p.name.startswith(".") and "lock" not in p.name]
    assert leftovers == []


@pytest.mark.slow
def test_second_call_is_a_quick_no_op_and_q_says_up_to_date(study):
    args = ["VISIT=v1", f"INPUT={SAMPLE_VISIT}", "catalog"]
    before = {name: (study / name).stat().st_mtime_ns for name in visit_files(study, "v1")}
    result = make(study.parent, *args)
    # quick: make ran no recipe at all (no step, no venv refresh), it only said so
    assert scripts_run(result) == [], result.stdout
    assert [line for line in result.stdout.splitlines() if not line.startswith("make: ")] == [], result.stdout
    assert make(study.parent, "-q", *args, check=False).returncode == 0
    assert make(study.parent, "-q", "catalog", check=False).returncode == 0  # the whole study too
    assert before == {name: (study / name).stat().st_mtime_ns for name in visit_files(study, "v1")}


@pytest.mark.slow
def test_newer_metadata_reruns_dataset_and_catalog_never_the_archive(study):
    archive = study / "v2_dicom.tar"
    archive_state = (archive.stat().st_mtime_ns, archive.read_bytes())
    now = time.time()
    for name in ("v2_XDLRA--refs", "v2_XDLRA--repo-export", "catalog/visits/v2.json"):
        os.utime(study / name, (now - 60, now - 60))
    os.utime(study / "v2_metadata_dicoms.json", (now - 30, now - 30))
    assert make(study.parent, "-q", "VISIT=v2", "catalog", check=False).returncode == 1
    result = make(study.parent, "VISIT=v2", "catalog")
    assert scripts_run(result) == ["deposit_visit_dataset", "catalogify_studyvisit_from_meta"]
    assert (archive.stat().st_mtime_ns, archive.read_bytes()) == archive_state
    assert make(study.parent, "-q", "VISIT=v2", "catalog", check=False).returncode == 0


@pytest.mark.slow
def test_study_wide_verify_names_the_damaged_visit(study, tmp_path):
    assert "agree" in make(study.parent, "verify").stderr
    copy = tmp_path / "store"
    shutil.copytree(study, copy / STUDY)
    records = json.loads((copy / STUDY / "v3_metadata_dicoms.json").read_text())
    records[0]["size"] += 1
    (copy / STUDY / "v3_metadata_dicoms.json").write_text(json.dumps(records))
    # the deposits name the original store's file:// URL
    result = make(copy, "-k", f"STORE_URL={study.parent.as_uri()}", "verify", check=False)
    assert result.returncode != 0
    mismatch_lines = [line for line in result.stderr.splitlines() if "mismatch:" in line]
    assert mismatch_lines and all(f"{STUDY}/v3: {records[0]['path']}" in line for line in mismatch_lines)
    assert result.stderr.count("agree") == 2  # v1 and v2 still checked and clean


def test_missing_study_is_a_usage_error(tmp_path):
    result = subprocess.run(["make", "-f", REPO / "Makefile", "catalog"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "set STUDY=" in result.stderr


def test_archive_without_input_says_so(tmp_path):
    result = make(tmp_path / "store", "VISIT=v9", "archive", check=False)
    assert result.returncode == 2 and "set INPUT=" in result.stderr
    assert not (tmp_path / "store" / STUDY / "v9_dicom.tar").exists()


def test_help_lists_targets_and_variables():
    result = subprocess.run(["make", "-f", REPO / "Makefile", "help"], capture_output=True, text=True)
    for target in ("archive", "metadata", "dataset", "catalog", "verify", "demo", "test", "bench", "docs"):
        assert f"  {target} " in result.stdout, target
    header = (REPO / "Makefile").read_text().split("\n\n", 1)[0]
    for variable in ("STORE", "STUDY", "VISIT", "INPUT", "STORE_URL"):
        assert f"#   {variable} " in header, variable


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    """``make docs`` (Sphinx with -W): every page, every script's --help;
    built into DOCS_OUT here, never into the checkout."""
    html = tmp_path / "html"
    result = subprocess.run(["make", "-f", REPO / "Makefile", f"DOCS_OUT={html}", "docs"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"docs: {html}/index.html" in result.stdout
    for page in ("index", "user", "admin", "reference", "developer", "formats"):
        assert (html / f"{page}.html").is_file(), page
    reference = (html / "reference.html").read_text()
    formats = (html / "formats.html").read_text()
    for script in STEP_SCRIPTS + ("verify_visit", "report_study"):
        assert f"usage: {script}" in reference, script
        assert f"{script} [-h]" in formats, script


@pytest.mark.slow
def test_store_url_reaches_deposit_and_catalog(tmp_path):
    """STORE_URL: where users reach the store; it goes into the dataset's
    URLs for the TAR and into the catalog's clone URL."""
    from icf.annex import annex_key, branch_dir
    from icf.store import Visit

    store, url = tmp_path / "store", "https://data.example.org/store"
    make(store, "VISIT=v1", f"INPUT={SAMPLE_VISIT}", f"STORE_URL={url}", "catalog")
    visit = Visit(store, STUDY, "v1")
    record = (visit.catalog_dir / "visits" / "v1.json").read_text()
    assert json.dumps(visit.clone_url(url))[1:-1] in record
    tarball = json.loads(visit.metadata_tarball.read_text())
    key = annex_key(tarball["md5"], tarball["size"], visit.tarball.name)
    bare = tmp_path / "bare"
    shutil.unpack_archive(visit.deposit_repo_export, bare, "zip")
    url_log = subprocess.run(["git", "show", f"git-annex:{branch_dir(key)}{key}.log.web"], cwd=bare,
                             capture_output=True, text=True, check=True).stdout
    assert url_log.endswith(f" 1 :{url}/{STUDY}/v1_dicom.tar\n"), url_log
