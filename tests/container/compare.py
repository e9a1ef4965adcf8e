#!/usr/bin/env python3
"""Checks of ``make test-container`` and ``make test-hpc`` that are easier in Python.

    compare.py pins REQUIREMENTS FREEZE       the image has exactly the pinned packages
    compare.py stores EXPECTED ACTUAL STUDY VISIT...
                                              two stores made from the same inputs agree
    compare.py catalog STUDY_DIR VISIT...     the study catalog lists exactly these visits
    compare.py jobs JOBCOMP JOBID             the scheduler's record of an array job

``pins``: FREEZE is ``pip freeze --all`` in the image; apart from the venv's
own pip and setuptools it must list exactly REQUIREMENTS' pins (names
compared as pip normalises them).

``stores``: for each visit, the TAR, its .md5sum, both metadata files and
the ``XDLRA--refs`` must be byte-identical. ``XDLRA--repo-export`` is a ZIP
that the datalad-annex helper writes with the current time on every entry
and a git pack whose bytes depend on git's delta search: the same entries,
the same bytes for every file outside ``objects/pack``, and the same git
objects are required. The study's catalog: the same files, byte-identical,
except that datalad-catalog records when it wrote a record (``source_time``):
JSON files may differ there and nowhere else. Prints what it compared.

``catalog``: the study catalog in STUDY_DIR has a visit record
(``catalog/visits/<visit>.json``) for exactly the VISITs, and the study's
record lists exactly them as its datasets.

``jobs``: the jobcomp/filetxt records of JOBID's array tasks as one line per
task, ``<task> <state> <exit code>`` (the state and ``ExitCode=code:signal``
as the scheduler recorded them; the last record of a task wins).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

STORE_FILES = ("_dicom.tar", "_dicom.tar.md5sum", "_metadata_tarball.json", "_metadata_dicoms.json",
               "_XDLRA--refs")
VARYING_KEY = "source_time"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements: Path, freeze: Path) -> list[str]:
    """How the image's packages differ from the pins (empty: they do not)."""
    def read(path: Path) -> set[str]:
        lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
        entries = set()
        for line in lines:
            if line and not line.startswith("-"):
                name, _, version = line.partition("==")
                entries.add(f"{normalise(name)}=={version.strip()}")
        return entries
    pinned, installed = read(requirements), read(freeze)
    installed = {entry for entry in installed if entry.split("==")[0] not in ("pip", "setuptools")}
    return ([f"pinned, not installed: {entry}" for entry in sorted(pinned - installed)]
            + [f"installed, not pinned: {entry}" for entry in sorted(installed - pinned)])


def without_times(value: object) -> object:
    """A JSON value with every ``source_time`` taken out."""
    if isinstance(value, dict):
        return {key: without_times(item) for key, item in value.items() if key != VARYING_KEY}
    if isinstance(value, list):
        return [without_times(item) for item in value]
    return value


def git_objects(zip_path: Path) -> list[str]:
    """Every object of the zipped bare repository: id, type and size."""
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(tmp)
        result = subprocess.run(["git", "--git-dir", tmp, "cat-file", "--batch-all-objects",
                                 "--batch-check=%(objectname) %(objecttype) %(objectsize)"],
                                capture_output=True, text=True, check=True,
                                env={"PATH": "/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM": "1", "HOME": tmp})
        return result.stdout.splitlines()


def repo_exports(expected: Path, actual: Path) -> list[str]:
    """How two XDLRA--repo-export ZIPs differ in what they hold."""
    problems = []
    with zipfile.ZipFile(expected) as one, zipfile.ZipFile(actual) as two:
        def entries(archive: zipfile.ZipFile) -> dict[str, tuple[int, bytes]]:
            return {re.sub(r"pack-[0-9a-f]{40}", "pack-*", info.filename):
                    (info.external_attr >> 16,
                     b"" if info.filename.startswith("objects/pack/") or info.filename == "objects/info/packs"
                     else archive.read(info))
                    for info in archive.infolist()}
        first, second = entries(one), entries(two)
    if sorted(first) != sorted(second):
        problems.append(f"{actual.name}: other entries: {sorted(set(first) ^ set(second))}")
    problems += [f"{actual.name}: {name} differs" for name in sorted(set(first) & set(second))
                 if first[name] != second[name]]
    if git_objects(expected) != git_objects(actual):
        problems.append(f"{actual.name}: other git objects")
    return problems


def stores(expected: Path, actual: Path, study: str, visits: list[str]) -> list[str]:
    problems: list[str] = []
    for visit in visits:
        for suffix in STORE_FILES:
            name = f"{study}/{visit}{suffix}"
            if not (actual / name).is_file() or (expected / name).read_bytes() != (actual / name).read_bytes():
                problems.append(f"{name} differs")
        name = f"{study}/{visit}_XDLRA--repo-export"
        problems += repo_exports(expected / name, actual / name)
    print(f"compare.py: {len(visits)} visit(s): TAR, .md5sum, metadata and XDLRA--refs compared byte for byte, "
          f"XDLRA--repo-export by entries and git objects")
    catalog_one, catalog_two = expected / study / "catalog", actual / study / "catalog"
    files_one = sorted(str(p.relative_to(catalog_one)) for p in catalog_one.rglob("*") if p.is_file())
    files_two = sorted(str(p.relative_to(catalog_two)) for p in catalog_two.rglob("*") if p.is_file())
    if files_one != files_two:
        problems.append(f"catalog: other files: {sorted(set(files_one) ^ set(files_two))}")
    same = timed = 0
    for name in sorted(set(files_one) & set(files_two)):
        one, two = (catalog_one / name).read_bytes(), (catalog_two / name).read_bytes()
        if one == two:
            same += 1
        elif name.endswith(".json") and without_times(json.loads(one)) == without_times(json.loads(two)):
            timed += 1
        else:
            problems.append(f"catalog/{name} differs")
    print(f"compare.py: catalog: {same} file(s) byte-identical, {timed} differing only in '{VARYING_KEY}'")
    return problems


def catalog(study_dir: Path, visits: list[str]) -> list[str]:
    """How the study's catalog differs from listing exactly ``visits``."""
    problems = []
    records = sorted(path.stem for path in (study_dir / "catalog" / "visits").glob("*.json"))
    if records != sorted(visits):
        problems.append(f"catalog/visits/ has records for {records}, not {sorted(visits)}")
    listed: set[str] = set()
    for record in (study_dir / "catalog" / "metadata").glob("**/*.json"):
        data = json.loads(record.read_text())
        if isinstance(data, dict):
            listed |= {sub["dataset_path"] for sub in data.get("subdatasets", [])}
    if listed != set(visits):
        problems.append(f"the study record lists {sorted(listed)}, not {sorted(visits)}")
    if not problems:
        print(f"compare.py: the catalog of {study_dir.name} lists {', '.join(sorted(visits))}")
    return problems


def jobs(jobcomp: Path, job_id: str) -> list[str]:
    """``<task> <state> <exit code>`` for each array task of ``job_id`` in a jobcomp/filetxt log."""
    tasks: dict[int, str] = {}
    for line in jobcomp.read_text().splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if fields.get("ArrayJobId") == job_id and fields.get("ArrayTaskId", "").isdigit():
            exit_code = fields.get("ExitCode", "?").split(":")[0]
            tasks[int(fields["ArrayTaskId"])] = f"{fields['ArrayTaskId']} {fields.get('JobState', '?')} {exit_code}"
    return [tasks[task] for task in sorted(tasks)]


def main(argv: list[str]) -> int:
    if argv[:1] == ["pins"] and len(argv) == 3:
        problems = pins(Path(argv[1]), Path(argv[2]))
        if not problems:
            print("compare.py: the image has exactly the pinned requirements (and the venv's pip, setuptools)")
    elif argv[:1] == ["stores"] and len(argv) >= 5:
        problems = stores(Path(argv[1]), Path(argv[2]), argv[3], argv[4:])
    elif argv[:1] == ["catalog"] and len(argv) >= 3:
        problems = catalog(Path(argv[1]), argv[2:])
    elif argv[:1] == ["jobs"] and len(argv) == 3:
        print("\n".join(jobs(Path(argv[1]), argv[2])))
        return 0
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    for problem in problems:
        print(f"compare.py: MISMATCH: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    assert shutil.which("git"), "compare.py needs git"
    sys.exit(main(sys.argv[1:]))
