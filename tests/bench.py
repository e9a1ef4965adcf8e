"""``make bench``: speed figures for each step, beside a baseline measured in
the same run on the same input, so the ratios hold on a noisy machine.

Builds (once, cached in ``bench-work/``) a visit of real-header DICOMs by
replicating the real sample: the shared 630-file data set when it is there
(``../shared/data/example-dicom-functional-1block``), else the 12 bundled
files, with a new SOPInstanceUID per copy and several series, and times on
it: step 1 beside GNU tar, step 2 beside tarfile+hashlib, the DICOM header
reader step 2 uses beside pydicom's ``dcmread`` (``--only header`` runs just
that), step 3 (plus its scaling on synthetic 1k/5k/20k-file visits,
``bench_dataset.py``), getting one DICOM and 600 DICOMs of a series from a
clone over HTTP by tarslice beside archivist, and clone time with and
without tarslice (``bench_tarslice.py``; ``--only tarslice``), and step 4 with 1 and with 1,000 visits in the catalog:
adding the last visit, and the study page in headless Chromium
(``bench_catalog.py``; the 1,000-visit catalog is built once and cached).
Prints figures; it is not a test and asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_dataset import bench_scaling
from bench_tarslice import bench_clone_time, bench_ranged_get
from measure import measure

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench-work"
SHARED = REPO.parent / "shared" / "data" / "example-dicom-functional-1block" / "dicoms"
BUNDLED = REPO / "tests" / "data" / "sample-visit"
sys.path.insert(0, str(REPO / "lib"))


def replicated_visit(files: int) -> Path:
    """A directory of ``files`` DICOMs in 6 series (folders, SeriesNumbers and
    SeriesInstanceUIDs), cached; the name's ``r2`` marks that layout."""
    import pydicom
    from pydicom.uid import generate_uid

    target = WORK / f"visit-{files}-r2"
    if target.exists() and sum(1 for _ in target.rglob("*.dcm")) == files:
        return target
    shutil.rmtree(target, ignore_errors=True)
    sources = sorted(SHARED.glob("MR.*")) if SHARED.is_dir() else sorted(BUNDLED.glob("run1-*/MR.*"))
    templates = [pydicom.dcmread(path) for path in sources]
    for index in range(files):
        ds = templates[index % len(templates)]
        series = index % 6 + 1
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["icf-bench", str(index)])
        ds.SeriesNumber = series * 100 + 1
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["icf-bench-series", str(series)])
        ds.SeriesDescription = ds.ProtocolName = f"bench_series_{series}"
        path = target / f"series-{series}" / f"{index:06d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path)
    (target / "README.txt").write_text("benchmark visit\n")
    return target


def timed(command: list) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one run of ``command``."""
    run = measure(command)
    if run.returncode != 0:
        raise SystemExit(f"bench: failed: {' '.join(map(str, command))}")
    return run.seconds, run.peak_rss_mb


def best_of(runs: int, prepare, command) -> tuple[float, float]:
    results = []
    for _ in range(runs):
        prepare()
        results.append(timed(command))
    return min(results)


def tool(script: str) -> list:
    return [sys.executable, str(REPO / "bin" / script)]


def report(step: str, files: int, size: int, ours: tuple[float, float], base_name: str,
           base: tuple[float, float]) -> None:
    (seconds, rss), (base_seconds, base_rss) = ours, base
    print(f"{step}: {files} files, {size / 1e6:.0f} MB")
    print(f"  ours      {seconds:7.2f} s  {files / seconds:8.0f} files/s  {size / 1e6 / seconds:7.1f} MB/s"
          f"  peak RSS {rss:5.0f} MB")
    print(f"  {base_name:9s} {base_seconds:7.2f} s  {files / base_seconds:8.0f} files/s"
          f"  {size / 1e6 / base_seconds:7.1f} MB/s  peak RSS {base_rss:5.0f} MB")
    print(f"  ratio     {seconds / base_seconds:7.1f}x")


def bench_archive(visit_dir: Path, files: int, runs: int) -> Path:
    store = WORK / "store"
    size = sum(p.stat().st_size for p in visit_dir.rglob("*") if p.is_file())
    gnu_tar = WORK / "gnu.tar"
    base = best_of(runs, lambda: gnu_tar.unlink(missing_ok=True), [
        "tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mode=0644",
        "--mtime=@0", "-cf", gnu_tar, "-C", visit_dir, "."])
    ours = best_of(runs, lambda: shutil.rmtree(store, ignore_errors=True),
                   [*tool("make_studyvisit_archive"), "-q", "-o", store, "--id", "bench", "v1", visit_dir])
    report("step 1 make_studyvisit_archive", files, size, ours, "GNU tar", base)
    return store


def bench_metadata(store: Path, files: int, runs: int) -> None:
    tar = store / "bench" / "v1_dicom.tar"
    floor_script = (
        "import hashlib, sys, tarfile\n"
        "md5 = hashlib.md5()\n"
        "with open(sys.argv[1], 'rb') as raw:\n"
        "    with tarfile.open(fileobj=raw, mode='r|') as tar:\n"
        "        for m in tar:\n"
        "            if m.isfile():\n"
        "                hashlib.md5(tar.extractfile(m).read()).hexdigest()\n"
    )
    base = best_of(runs, lambda: None, [sys.executable, "-c", floor_script, tar])
    ours = best_of(runs, lambda: None,
                   [*tool("deposit_visit_metadata"), "-q", "--force", "-o", store, "--id", "bench", "v1"])
    report("step 2 deposit_visit_metadata", files, tar.stat().st_size, ours, "floor", base)


def header_tags() -> tuple[dict[str, int], list[int]]:
    """(exported tag name -> tag, every tag step 2's header read asks for but
    the character set, which pydicom adds by itself): the one place that
    knows the shape of :data:`icf.dicom.EXPORTED_TAGS`."""
    from icf.dicom import EXPORTED_TAGS, TIMESTAMP_TAGS

    exported = dict(EXPORTED_TAGS)
    return exported, sorted(set(exported.values()) | set(TIMESTAMP_TAGS))


def header_readers() -> dict:
    """Name -> function(path) returning a file's exported tags as Python
    values: ours as step 2 calls it, and pydicom doing the same work."""
    from pydicom import dcmread
    from pydicom.filereader import read_partial

    from icf.dicom import read_file_header

    exported, tags = header_tags()
    last = max(tags)

    def values(ds) -> dict:
        return {name: ds[tag].value if tag in ds else "" for name, tag in exported.items()}

    def partial(path):
        with open(path, "rb") as stream:
            return values(read_partial(stream, lambda tag, vr, length: tag > last, specific_tags=tags))

    return {
        "ours (read_file_header)": lambda path: read_file_header(path).technical_tags(),
        "dcmread(specific_tags)": lambda path: values(dcmread(path, stop_before_pixels=True,
                                                              specific_tags=tags)),
        "dcmread(stop_before_pixels)": lambda path: values(dcmread(path, stop_before_pixels=True)),
        "read_partial(stop_when, specific_tags)": partial,
    }


def _plain(value):
    """A pydicom value in the form ``technical_tags`` gives it."""
    if isinstance(value, list):  # MultiValue
        return [str(v) for v in value]
    if isinstance(value, int):  # IS
        return int(value)
    return "" if value is None else str(value)


def bench_header(visit_dir: Path, files: int, runs: int) -> None:
    """The header reader of step 2 beside pydicom, in this process, on
    ``files`` of the visit's DICOMs (in the page cache): per reader, the sum
    over chunks of 50 files of each chunk's best of ``runs``."""
    paths = sorted(visit_dir.rglob("*.dcm"))
    paths = paths[::max(1, len(paths) // files)][:files]
    for path in paths:  # into the page cache
        path.read_bytes()
    readers = header_readers()
    ours = readers["ours (read_file_header)"]
    agree = {name: sum(ours(p) == {k: _plain(v) for k, v in read(p).items()} for p in paths)
             for name, read in readers.items()}  # also warms up every reader
    # the readers take turns on chunks of 50 files, and each chunk's best
    # time counts: a burst of load elsewhere hits one reader's chunk, not
    # one reader's whole run
    chunks = [paths[i:i + 50] for i in range(0, len(paths), 50)]
    best = {name: [float("inf")] * len(chunks) for name in readers}
    for run in range(runs):
        for number, chunk in enumerate(chunks):
            names = list(readers)
            for name in names[(run + number) % len(names):] + names[:(run + number) % len(names)]:
                read = readers[name]
                started = time.perf_counter()
                for path in chunk:
                    read(path)
                best[name][number] = min(best[name][number], time.perf_counter() - started)
    best = {name: sum(times) for name, times in best.items()}
    base = best["ours (read_file_header)"]
    print(f"step 2 DICOM header reader: {len(paths)} files in the page cache, "
          f"{len(header_tags()[1])} tags + SpecificCharacterSet, best of {runs} per 50 files")
    for name, seconds in best.items():
        print(f"  {name:<38} {seconds / len(paths) * 1e6:7.0f} us/file {len(paths) / seconds:8.0f} files/s"
              f"  {seconds / base:5.1f}x ours' time  same values {agree[name]}/{len(paths)}")


def bench_dataset(store: Path, dicoms: int) -> None:
    """Step 3 on the replicated real visit (its metadata from step 2)."""
    seconds, rss = timed([*tool("deposit_visit_dataset"), "-q", "--force", "-o", store,
                          "--id", "bench", "v1"])
    print(f"step 3 deposit_visit_dataset: {dicoms} DICOMs + the archive")
    print(f"  ours      {seconds:7.2f} s  {dicoms / seconds:8.0f} files/s  peak RSS {rss:5.0f} MB"
          "  (goal: >= 300 files/s, < 200 MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5460, help="DICOMs in the visit (default: 5460)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure, best kept (default: 3)")
    parser.add_argument("--dataset-files", type=int, nargs="+", default=[1000, 5000, 20000],
                        help="synthetic visit sizes for step 3's scaling (default: 1000 5000 20000)")
    parser.add_argument("--catalog-visits", type=int, nargs="+", default=[1000], metavar="N",
                        help="visits in the catalog, the timed one the N-th; the 1-visit catalog is "
                        "always measured too (default: 1000)")
    parser.add_argument("--header-files", type=int, default=1000,
                        help="DICOMs of the visit the header readers read (default: 1000)")
    parser.add_argument("--only", choices=["header", "steps12", "tarslice"],
                        help="only these figures: header, the DICOM header reader beside pydicom; "
                        "steps12, steps 1 and 2 beside their baselines; tarslice, steps 1 and 2, "
                        "then DICOMs from a clone by tarslice beside archivist, and clone time")
    parser.add_argument("--replicate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    if args.replicate_only:
        replicated_visit(args.files)
        return
    if args.only == "header":
        bench_header(replicated_visit(args.files), args.header_files, args.runs)
        return
    # replicate and read headers in a child: a forked child's peak RSS would include ours
    subprocess.run([sys.executable, __file__, "--replicate-only", "--files", str(args.files)], check=True)
    visit_dir = replicated_visit(args.files)
    store = bench_archive(visit_dir, args.files + 1, args.runs)
    bench_metadata(store, args.files + 1, args.runs)
    if args.only == "steps12":
        return
    if args.only == "tarslice":
        bench_ranged_get(store, "bench", "v1")
        bench_clone_time(WORK, args.runs)
        return
    sys.stdout.flush()
    subprocess.run([sys.executable, __file__, "--only", "header", "--files", str(args.files),
                    "--header-files", str(args.header_files), "--runs", str(args.runs)], check=True)
    bench_dataset(store, args.files)
    bench_ranged_get(store, "bench", "v1")
    bench_clone_time(WORK, args.runs)
    print("step 3 deposit_visit_dataset, synthetic visits (linear in the file count?):")
    bench_scaling(args.dataset_files)
    from bench_catalog import bench_catalog  # imports all of icf: not needed for --only header
    bench_catalog(args.catalog_visits, args.files, args.runs)


if __name__ == "__main__":
    main()
