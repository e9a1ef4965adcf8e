"""``make bench``: getting DICOMs out of a clone over HTTP, by the tarslice
remote (byte ranges of the visit TAR) beside archivist (the whole TAR, then
extraction), on the same deposit, server and files in the same run; and
``datalad clone`` time with and without the tarslice remote installed.

The store is served on 127.0.0.1 by ``tests/rangeserver.py``, which honours
Range and counts the body bytes it sends. Each figure gets a fresh clone
(archivist keeps the TAR in the clone: a second get would be free).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rangeserver import range_server

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def researcher_env(home: Path, path: str) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "DATALAD_"))}
    return dict(env, HOME=str(home), PATH=path, GIT_AUTHOR_NAME="R", GIT_AUTHOR_EMAIL="r@example.org",
                GIT_COMMITTER_NAME="R", GIT_COMMITTER_EMAIL="r@example.org")


def run(command: list, cwd: Path, env: dict) -> float:
    """Wall seconds of ``command``, which must succeed."""
    start = time.perf_counter()
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise Failed(f"{' '.join(map(str, command))[:200]}: {result.stderr.strip()[-300:]}")
    return seconds


class Failed(Exception):
    """A benchmarked command failed (its start and its last error lines)."""


def clone(url: str, target: Path, env: dict) -> float:
    shutil.rmtree(target, ignore_errors=True)
    return run([VENV_BIN / "datalad", "clone", url, target], target.parent, env)


def fresh_clone(url: str, target: Path, env: dict) -> None:
    """A new clone, its git-annex key database made (git-annex scans a
    clone's files once, at the first command that needs them: the same cost
    for every remote, so not part of the figures)."""
    clone(url, target, env)
    run(["git", "annex", "fsck", "--fast", "-q", "--in=here"], target, env)


def bench_ranged_get(store: Path, study: str, visit: str, series_files: int = 600) -> None:
    """tarslice beside archivist, over HTTP, on ``study``/``visit`` of ``store``
    (steps 1 and 2 done): one DICOM, then ``series_files`` DICOMs of one
    series with ``-J4``."""
    sys.path.insert(0, str(REPO / "lib"))
    from icf.records import read_dicom_records
    from icf.store import Visit

    tar_name = f"{study}/{visit}_dicom.tar"
    records = read_dicom_records(Visit(store, study, visit))
    first_series = records[0].series
    series = [r for r in records if r.series == first_series][:series_files]
    # clones outside this checkout: datalad clone inside a git repository initialises git-annex there
    with tempfile.TemporaryDirectory() as work, range_server(store) as (url, served):
        work_dir = Path(work)
        env = researcher_env(work_dir / "home", f"{VENV_BIN}:{SYSTEM_PATH}")
        run([sys.executable, REPO / "bin" / "deposit_visit_dataset", "-q", "--force", "-o", store,
             "--id", study, visit, "--store-url", url], REPO, env)
        clone_url = Visit(store, study, visit).clone_url(url)
        tar_size = (store / tar_name).stat().st_size
        print(f"getting DICOMs from a clone over HTTP (127.0.0.1, Range honoured); TAR {tar_size / 1e6:.0f} MB")
        for label, paths, jobs in (("one DICOM", [records[0].path], 1),
                                   (f"{len(series)} DICOMs of one series", [r.path for r in series], 4)):
            wanted = sum(r.size for r in records if r.path in set(paths))
            print(f"  {label} ({wanted / 1e6:.2f} MB of content), git annex get --from ...:")
            ds = work_dir / "clone"
            attempts = [("tarslice", jobs), ("archivist", jobs)]
            for remote, remote_jobs in attempts:
                fresh_clone(clone_url, ds, env)
                served.reset()
                try:
                    seconds = run(["git", "annex", "get", f"-J{remote_jobs}", "--from", remote, "--", *paths],
                                  ds, env)
                except Failed as failure:
                    print(f"    {remote:9s} -J{remote_jobs} FAILED: {failure}")
                    if remote_jobs > 1:  # archivist's parallel gets race for the TAR: once more, serially
                        attempts.append((remote, 1))
                    continue
                sent = served.bytes[tar_name]
                print(f"    {remote:9s} -J{remote_jobs} {seconds:7.2f} s  {sent / 1e6:9.2f} MB served "
                      f"({sent - wanted:+,d} bytes beyond the content) in {served.requests[tar_name]} requests")
            if jobs == 1:
                fresh_clone(clone_url, ds, env)
                seconds = run([VENV_BIN / "datalad", "get", "--", *paths], ds, env)
                print(f"    datalad get (as typed; tarslice preferred): {seconds:.2f} s")
        shutil.rmtree(work_dir / "clone", ignore_errors=True)


def bench_clone_time(work: Path, runs: int) -> None:
    """``datalad clone`` of the demo visit (the bundled sample, deposited in
    ``work``), ``2 * runs + 1`` times each, with the tarslice remote on PATH and
    without it (as before it existed: git-annex then cannot start it and
    enables only datalad-next's two)."""
    sys.path.insert(0, str(REPO / "lib"))
    from icf.store import Visit

    store = work / "demo-store"
    shutil.rmtree(store, ignore_errors=True)
    with tempfile.TemporaryDirectory() as temp:
        work_dir = Path(temp)
        env = researcher_env(work_dir / "home", f"{VENV_BIN}:{SYSTEM_PATH}")
        for script, extra in (("make_studyvisit_archive", [REPO / "tests" / "data" / "sample-visit"]),
                              ("deposit_visit_metadata", []), ("deposit_visit_dataset", [])):
            run([sys.executable, REPO / "bin" / script, "-q", "-o", store, "--id", "demo", "visit1", *extra],
                REPO, env)
        visit_url = Visit(store, "demo", "visit1").clone_url(store.resolve().as_uri())
        without = work_dir / "bin-without-tarslice"
        without.mkdir()
        for program in VENV_BIN.iterdir():
            if program.name != "git-annex-remote-tarslice":
                (without / program.name).symlink_to(program)
        envs = {label: researcher_env(work_dir / "home", f"{path}:{SYSTEM_PATH}")
                for label, path in (("without tarslice", without), ("with tarslice", VENV_BIN))}
        times: dict[str, list[float]] = {label: [] for label in envs}
        for _ in range(2 * runs + 1):  # alternating, so that load on the machine hits both alike
            for label, env in envs.items():
                times[label].append(clone(visit_url, work_dir / "clone", env))
        print(f"datalad clone of the demo visit ({2 * runs + 1} runs each, alternating):")
        for label, seconds in times.items():
            print(f"  {label:17s} median {statistics.median(seconds):6.2f} s  best {min(seconds):6.2f} s")
