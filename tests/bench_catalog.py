"""Benchmark: adding a visit to a study catalog, with 1 and with N visits in it.

Times whole runs of ``bin/catalogify_studyvisit_from_meta`` (start-up
included, as a user or ``make`` sees it): the first visit (creates the
catalog), the second, and one more once N visits are in the catalog, plus a
rerun of that one. The catalog is filled to N in-process (same library call,
without N interpreter start-ups). Prints figures; asserts nothing.

    python tests/bench_catalog.py [--visits N] [--dicoms M]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))
sys.path.insert(0, str(HERE))

from test_catalog import SCRIPT, STUDY, write_visit_metadata  # noqa: E402

from icf.catalog import catalogify  # noqa: E402
from icf.store import Visit, default_store_url  # noqa: E402

LIMIT = 2.0
SERIES_PER_VISIT = 20


def timed_run(store: Path, visit: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, str(SCRIPT), "-q", "-o", str(store), "--id", STUDY, visit],
                   check=True)
    return time.monotonic() - started


def bench_catalog(visits: int, dicoms: int) -> None:
    per_series = max(1, dicoms // SERIES_PER_VISIT)
    series = [(n, f"series {n}", f"protocol_{n % 7}", "MR", "2D", "epfid2d1_64", per_series)
              for n in range(1, SERIES_PER_VISIT + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        names = [f"visit-{i:04d}" for i in range(visits + 1)]
        for name in names:
            write_visit_metadata(store, STUDY, name, series=series)
        figures = {"visit 1 (creates the catalog)": timed_run(store, names[0])}
        figures["visit 2"] = timed_run(store, names[1])
        for name in names[2:-1]:
            catalogify(Visit(store, STUDY, name), default_store_url(store))
        figures[f"visit {visits + 1} (after {visits})"] = timed_run(store, names[-1])
        figures[f"rerun of visit {visits + 1}"] = timed_run(store, names[-1])
    print(f"step 4 catalogify_studyvisit_from_meta, {per_series * SERIES_PER_VISIT} DICOMs/visit, "
          f"{SERIES_PER_VISIT} series (goal: < {LIMIT:.0f} s, flat in the number of visits):")
    for what, seconds in figures.items():
        print(f"  {what:<34} {seconds:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=100)
    parser.add_argument("--dicoms", type=int, default=5460, help="DICOM entries per visit")
    args = parser.parse_args()
    bench_catalog(args.visits, args.dicoms)


if __name__ == "__main__":
    main()
