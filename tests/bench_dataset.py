"""Speed of step 3 (``deposit_visit_dataset``) against the visit's file count.

For each size, writes (once, cached in ``bench-work/dataset-<N>-r2/``) a store
with a TAR of N small dummy members and the two JSON files describing them
(synthetic: this times the deposit, not DICOM reading), then runs the step
with ``--force`` and prints wall time, files/s and peak memory: the tool's
own peak RSS and the largest peak of any process it ran (git, git-annex,
remote helpers). Prints figures; asserts nothing.

    python tests/bench_dataset.py [--files 1000 5000 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import resource
import sys
import tarfile
from pathlib import Path

from measure import measure

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))

from icf.dicom import EXPORTED_TAGS  # noqa: E402
from icf.records import DicomListWriter, DicomRecord, SeriesSummary, TarballRecord  # noqa: E402
from icf.store import Visit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench-work"
STUDY, VISIT = "bench", "v1"


def synthetic_store(files: int) -> Path:
    """A store with a TAR of ``files`` dummy DICOM-named members and the
    step-2 JSON for them (cached)."""
    store = WORK / f"dataset-{files}-r3"  # r3: the metadata format with series, findings and offsets
    study = store / STUDY
    if (study / f"{VISIT}_metadata_tarball.json").exists():
        return store
    study.mkdir(parents=True, exist_ok=True)
    tar_path = study / f"{VISIT}_dicom.tar"
    records: list[DicomRecord] = []
    series_tags: dict[str, dict] = {}
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for index in range(files):
            series = index % 6 + 1
            path = f"{STUDY}_{VISIT}/series-{series}/MR.1.3.46.670589.11.{index:06d}"
            content = f"dummy DICOM {index}\n".encode() * 8
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(content), 1398441215 + index % 60
            tar.addfile(info, io.BytesIO(content))
            offset = tar.offset - (len(content) + -len(content) % tarfile.BLOCKSIZE)
            tags = {**dict.fromkeys(EXPORTED_TAGS, ""), "SeriesDescription": f"bench series {series}",
                    "SeriesNumber": series * 100 + 1, "Modality": "MR", "MRAcquisitionType": "2D",
                    "ProtocolName": f"bench_series_{series}"}
            key = f"{series:016x}"
            series_tags.setdefault(key, tags)
            records.append(DicomRecord(path, hashlib.md5(content).hexdigest(), len(content), offset, key, "image", 1,
                                       index // 6 + 1, tags))
    data = tar_path.read_bytes()
    with open(study / f"{VISIT}_metadata_dicoms.json", "wb") as out:
        listing = DicomListWriter(out)
        for record in records:
            listing.add(record)
        listing.close()
    counts = {key: sum(r.series == key for r in records) for key in series_tags}
    summaries = [SeriesSummary(key, tags, counts[key], counts[key]) for key, tags in sorted(series_tags.items())]
    tarball = TarballRecord.of(Visit(store, STUDY, VISIT), len(data), hashlib.md5(data).hexdigest(), summaries, [])
    (study / f"{VISIT}_metadata_tarball.json").write_bytes(tarball.json())
    return store


def bench_scaling(sizes: list[int]) -> None:
    """Deposit synthetic visits of each size; print time, files/s, peak RSS,
    and the fixed and per-file cost fitted through the first and last size."""
    seconds = {}
    for files in sizes:
        store = synthetic_store(files)
        run = measure([sys.executable, REPO / "bin" / "deposit_visit_dataset", "-q", "--force",
                       "-o", store, "--id", STUDY, VISIT])
        if run.returncode != 0:
            raise SystemExit(f"bench: deposit_visit_dataset failed for {files} files")
        seconds[files] = run.seconds
        children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"  {files:6d} files {run.seconds:7.2f} s {files / run.seconds:7.0f} files/s"
              f"  peak RSS {run.peak_rss_mb:4.0f} MB (largest process so far {children_mb:4.0f} MB)",
              flush=True)
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        per_file = (seconds[large] - seconds[small]) / (large - small)
        print(f"  fitted: fixed {seconds[small] - per_file * small:.1f} s + "
              f"{per_file * 1000:.2f} ms per file (goals: fixed < 10 s, >= 300 files/s at 5,000+)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[1000, 5000, 20000])
    args = parser.parse_args()
    print("step 3 deposit_visit_dataset, synthetic visits:")
    bench_scaling(args.files)


if __name__ == "__main__":
    main()
