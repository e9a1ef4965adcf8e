"""Benchmark: the study catalog at scale (issue 12 requirement 6: with 1,000
visits, adding the 1,000th visit takes < 2 s and the study page shows its
table within 3 s in headless Chromium).

For each N (the 1-visit catalog always included, as the baseline):

- **Build** (cached): a store whose study catalog holds visits 1 .. N-1,
  added one by one in this process by :func:`icf.catalog.catalogify` (the
  library call the script makes, without N interpreter start-ups), plus the
  metadata of visit N. The filler visits have the timed visit's 20 series
  with one DICOM file each (reading 5,460 DICOM entries per filler would
  only slow the build; a filler's catalog record and table row have the same
  shape and size). Kept in ``bench-work/catalog-<N>/``, keyed by N, the DICOM
  count and a hash of the code that writes the catalog (:data:`CATALOG_CODE`,
  datalad-catalog's version): a rerun of the bench reuses it; a change of
  that code rebuilds it. An interrupted build resumes. Printed:
  the build's time and its mean seconds per visit in each tenth of the
  visits (the per-visit cost should not grow with N).
- **Adding the N-th visit**: whole runs of
  ``bin/catalogify_studyvisit_from_meta`` as a user or ``make`` runs it
  (start-up included), on a copy of the cached store that is put back as it
  was before each run (so every run adds visit N as a new visit to N-1
  visits); then reruns of it with unchanged input (visit N already listed).
- **The study page** in headless Chromium (a fresh browser, profile and
  cache per run; the catalog of N visits served by a threaded HTTP server
  on 127.0.0.1, as ``python3 -m http.server`` serves it): from navigation
  start to first contentful paint, to the Visits table having its N rows
  (and the frame after that), and to the last of the N visit records the
  page fetches for its Subdatasets tab ("Subdatasets (N)"). Times are the
  page's own clock (``performance.now()``, 0 = navigation start), taken by
  a MutationObserver injected before the page's scripts run.

Prints figures, best of ``--runs`` with the median in brackets; asserts
nothing.

    python tests/bench_catalog.py [--visits N ...] [--dicoms M] [--runs R]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = REPO / "bench-work"
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(HERE))

from test_catalog import SCRIPT, STUDY, write_visit_metadata  # noqa: E402

from icf.store import default_store_url  # noqa: E402

ADD_LIMIT = 2.0
PAGE_LIMIT = 3.0
SERIES_PER_VISIT = 20
#: bump when the layout of the cached store changes
CACHE_FORMAT = 1
#: the code that writes the catalog: the cached one is rebuilt when it changes
#: (not on other changes of lib/icf; delete bench-work/catalog-<N> to force it)
CATALOG_CODE = ("catalog.py", "catalog_site.py", "catalog-config.json")
PAGE_TIMEOUT = 120.0
#: the page counts as settled once it has had no long task for this long (s)
QUIET = 1.0


def visit_name(number: int) -> str:
    return f"visit-{number:04d}"


def series_of(files_per_series: int) -> list[tuple]:
    """The benchmark visit's series (see test_catalog.SERIES for the fields)."""
    return [(n, f"series {n}", f"protocol_{n % 7}", "MR", "2D", "epfid2d1_64", files_per_series, 1)
            for n in range(1, SERIES_PER_VISIT + 1)]


def cache_key(visits: int, dicoms: int) -> dict:
    from importlib.metadata import version

    code = hashlib.sha256()
    for name in CATALOG_CODE:
        code.update((REPO / "lib" / "icf" / name).read_bytes())
    return {"format": CACHE_FORMAT, "visits": visits, "dicoms": dicoms,
            "datalad-catalog": version("datalad-catalog"), "code": code.hexdigest()[:16]}


# -- the cached store ------------------------------------------------------------

def built_store(visits: int, dicoms: int) -> tuple[Path, dict]:
    """``bench-work/catalog-<visits>/store``: visits 1 .. visits-1 catalogued,
    visit ``visits`` with its metadata only; and the build's figures."""
    from icf.catalog import catalogify

    key = cache_key(visits, dicoms)
    done = WORK / f"catalog-{visits}"
    if (done / "key.json").is_file() and json.loads((done / "key.json").read_text()) == key:
        return done / "store", json.loads((done / "build.json").read_text())
    building = WORK / f"catalog-{visits}.building"
    if not ((building / "key.json").is_file() and json.loads((building / "key.json").read_text()) == key):
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        (building / "key.json").write_text(json.dumps(key))
    store = building / "store"
    times_file = building / "times.txt"  # "<visit number> <seconds>" per catalogued visit
    times = {int(number): float(seconds) for number, seconds in
             (line.split() for line in times_file.read_text().splitlines())} if times_file.is_file() else {}
    filler = series_of(1)
    url = default_store_url(store)
    if visits > 1:
        print(f"  building the {visits}-visit catalog in {done} (once; "
              f"{len(times)} of {visits - 1} visits already there)", flush=True)
    with times_file.open("a") as log:
        for number in range(1, visits):
            if number in times:
                continue
            visit = write_visit_metadata(store, STUDY, visit_name(number), series=filler)
            started = time.perf_counter()
            catalogify(visit, url)
            seconds = time.perf_counter() - started
            log.write(f"{number} {seconds:.6f}\n")
            log.flush()
            times[number] = seconds
            if number % max(1, (visits - 1) // 10) == 0:
                print(f"    {number:>6} visits  {sum(times.values()):7.0f} s so far, "
                      f"the last one {seconds:.2f} s", flush=True)
    write_visit_metadata(store, STUDY, visit_name(visits), series=series_of(max(1, dicoms // SERIES_PER_VISIT)))
    ordered = [times[n] for n in sorted(times)]
    tenth = max(1, len(ordered) // 10)
    build = {"seconds": sum(ordered), "visits": len(ordered),
             "per_visit_by_tenth": [statistics.mean(ordered[i:i + tenth])
                                    for i in range(0, len(ordered), tenth)][:10]}
    (building / "build.json").write_text(json.dumps(build))
    shutil.rmtree(done, ignore_errors=True)
    building.rename(done)
    return done / "store", build


def copy_of(store: Path, scratch: Path) -> Path:
    """``scratch``, a copy of ``store`` (``cp -a``: 5x faster than shutil.copytree here)."""
    shutil.rmtree(scratch, ignore_errors=True)
    subprocess.run(["cp", "-a", str(store), str(scratch)], check=True)
    return scratch


def entries(top: Path) -> dict[str, os.stat_result]:
    found = {}
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, top)] = os.lstat(path)
    return found


def restore(scratch: Path, store: Path) -> Path:
    """Make ``scratch``, a copy of ``store`` that a run changed, a copy again:
    remove what the run added, copy back what it replaced (by size and mtime)."""
    want, have = entries(store), entries(scratch)
    for relative in sorted(set(have) - set(want)):
        path = scratch / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
    for relative, kept in sorted(want.items()):
        now = have.get(relative)
        if stat.S_ISDIR(kept.st_mode):
            (scratch / relative).mkdir(exist_ok=True)
        elif now is None or (now.st_size, now.st_mtime_ns) != (kept.st_size, kept.st_mtime_ns):
            (scratch / relative).unlink(missing_ok=True)
            shutil.copy2(store / relative, scratch / relative, follow_symlinks=False)
    return scratch


# -- timings -------------------------------------------------------------------------

def timed_run(store: Path, visit: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, str(SCRIPT), "-q", "-o", str(store), "--id", STUDY, visit],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


#: Injected before the page's scripts: records, on the page's clock, when
#: the active tab's table first has N rows (and the frame after), and when
#: the Subdatasets tab's title says "(N)" (every visit record fetched).
OBSERVER = """
(() => {
  const wanted = %d;
  const times = window.__bench = {rows: null, painted: null, subdatasets: null, most_rows: 0,
                                  busy_until: 0, busy: 0};
  new PerformanceObserver(list => list.getEntries().forEach(task => {
    times.busy_until = Math.max(times.busy_until, task.startTime + task.duration);
    times.busy += task.duration;
  })).observe({type: 'longtask', buffered: true});
  const check = () => {
    const now = performance.now();
    if (times.rows === null) {
      const rows = document.querySelectorAll('.tab-pane.active table tbody tr').length;
      times.most_rows = Math.max(times.most_rows, rows);
      if (rows >= wanted) {
        times.rows = now;
        requestAnimationFrame(() => setTimeout(() => { times.painted = performance.now(); }));
      }
    }
    if (times.subdatasets === null && [...document.querySelectorAll('.nav-tabs a')].some(
        a => a.textContent.replace(/\\s+/g, ' ').includes('Subdatasets (' + wanted + ')'))) {
      times.subdatasets = now;
    }
  };
  new MutationObserver(check).observe(document, {childList: true, subtree: true, characterData: true});
})();
"""


def page_times(executable: str, url: str, visits: int) -> dict[str, float]:
    """One fresh Chromium opening ``url``: seconds from navigation start."""
    from browser import Chromium

    with Chromium(executable, timeout=PAGE_TIMEOUT) as browser:
        # no DevTools instrumentation beyond what the measurement needs: the
        # page logs every visit record it fetches to the console
        browser.page("Runtime.disable")
        browser.page("Network.disable")
        browser.page("Page.addScriptToEvaluateOnNewDocument", source=OBSERVER % visits)
        browser.open(url)
        deadline = time.monotonic() + PAGE_TIMEOUT
        while True:
            state = browser.evaluate("window.__bench && JSON.stringify({...window.__bench, now: performance.now()})")
            times = json.loads(state) if state else None
            if times and times["painted"] is not None and times["subdatasets"] is not None \
                    and times["now"] - max(times["busy_until"], times["subdatasets"]) > QUIET * 1000:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: the study page of {visits} visits never showed them all: {times}")
            time.sleep(0.05)
        fcp = browser.evaluate(
            "(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null")
    return {"first contentful paint": (fcp or float("nan")) / 1000,
            "Visits table has N rows": times["rows"] / 1000,
            "... and the next frame": times["painted"] / 1000,
            "all N visit records loaded": times["subdatasets"] / 1000,
            "last long task (> 50 ms) ends": times["busy_until"] / 1000,
            "long tasks, in all": times["busy"] / 1000}


def find_chromium() -> str | None:
    from browser import CHROMIUM_NAMES

    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def bench_one(visits: int, dicoms: int, runs: int, chromium: str | None) -> tuple[dict, dict | None]:
    """Figures (name -> list of seconds) for a catalog of ``visits`` visits, and its build's."""
    from browser import serve

    store, build = built_store(visits, dicoms)
    scratch = WORK / f"catalog-{visits}" / "scratch"
    timed_visit = visit_name(visits)
    figures: dict[str, list[float]] = {"adding the N-th visit": [], "rerun of the N-th visit": []}
    copy_of(store, scratch)
    for run in range(runs):
        figures["adding the N-th visit"].append(timed_run(restore(scratch, store) if run else scratch,
                                                          timed_visit))
    for _ in range(runs):
        figures["rerun of the N-th visit"].append(timed_run(scratch, timed_visit))
    if chromium:
        with serve(scratch / STUDY / "catalog") as url:
            for _ in range(runs):
                for name, seconds in page_times(chromium, url, visits).items():
                    figures.setdefault(f"study page: {name}", []).append(seconds)
    shutil.rmtree(scratch)
    return figures, (build if visits > 1 else None)


def bench_catalog(visits: list[int] | int, dicoms: int, runs: int = 3) -> None:
    counts = sorted({1, *([visits] if isinstance(visits, int) else visits)})
    chromium = find_chromium()
    per_series = max(1, dicoms // SERIES_PER_VISIT)
    print(f"step 4 catalogify_studyvisit_from_meta at scale: the N-th visit has {per_series * SERIES_PER_VISIT} "
          f"DICOMs in {SERIES_PER_VISIT} series; best of {runs} (median) "
          f"(goal, N = 1000: adding < {ADD_LIMIT:.0f} s, table shown < {PAGE_LIMIT:.0f} s)", flush=True)
    results = {}
    for count in counts:
        results[count] = bench_one(count, dicoms, runs, chromium)
    for count, (_, build) in results.items():
        if build:
            print(f"  building the {count}-visit catalog: {build['visits']} visits in-process in "
                  f"{build['seconds']:.0f} s; mean s/visit per tenth of them: "
                  + " ".join(f"{s:.2f}" for s in build["per_visit_by_tenth"]))
    if not chromium:
        from browser import INSTALL_HINT

        print(f"  no Chromium: no study page figures ({INSTALL_HINT})")
    names = list(dict.fromkeys(name for figures, _ in results.values() for name in figures))
    print(f"  {'N (visits in the catalog)':<46}" + "".join(f"{count:>18}" for count in counts))
    for name in names:
        cells = []
        for count in counts:
            values = results[count][0].get(name)
            cells.append(f"{min(values):7.2f} s ({statistics.median(values):5.2f})" if values else "-")
        print(f"  {name:<46}" + "".join(f"{cell:>18}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, nargs="+", default=[1000],
                        help="N, visits in the catalog (the 1-visit catalog is always measured too)")
    parser.add_argument("--dicoms", type=int, default=5460, help="DICOM entries of the timed visit")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure, best kept (default: 3)")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    bench_catalog(args.visits, args.dicoms, args.runs)


if __name__ == "__main__":
    main()
