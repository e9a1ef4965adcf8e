"""Step 1, make_studyvisit_archive: issue 2's requirements, one test group each."""

from __future__ import annotations

import calendar
import fcntl
import hashlib
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import termios
import time
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE_VISIT, assert_read_like_pydicom, make_dicom, members, pydicom_read, run_tool
from measure import measure

from icf.dicom import parse_date, parse_datetime, parse_time, read_file_header

SAMPLE_STUDY_TIME = calendar.timegm((2014, 4, 25, 15, 53, 35))


def archive(store, input_dir, study="study", visit="visit", **kwargs):
    return run_tool("make_studyvisit_archive", "-o", store, "--id", study, visit, input_dir, **kwargs)


def outputs(store, study="study", visit="visit"):
    study_dir = store / study
    return sorted(p.name for p in study_dir.iterdir()) if study_dir.exists() else []


def assert_failed_cleanly(result, store, *names):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("make_studyvisit_archive: error: "), result.stderr
    for name in names:
        assert str(name) in lines[0]
    assert not any(n.endswith((".tar", ".md5sum")) for n in outputs(store))


# -- 1, 2: shape and the two commands -----------------------------------------

def test_repository_shape_and_pinned_requirements():
    for name in ("Makefile", "bin", "lib", "tests", "docs", "requirements.txt", "README.md", ".ci/run"):
        assert (REPO / name).exists(), name
    pins = [line for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.\-]+", line) for line in pins), pins
    assert any(line.startswith("git-annex==") for line in pins)
    readme = (REPO / "README.md").read_text()
    first_commands = re.findall(r"^\s*(make \w+)", readme, re.M)[:2]
    assert first_commands == ["make demo", "make test"]
    assert "make test" in (REPO / ".ci/run").read_text()


@pytest.mark.slow
def test_make_demo_from_another_directory(tmp_path):
    result = subprocess.run(["make", "-f", REPO / "Makefile", "demo"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    tar = tmp_path / "demo-store" / "demo" / "visit1_dicom.tar"
    assert tar.is_file() and "visit1_dicom.tar" in result.stdout
    names = [m.name for m in members(tar)]
    assert len(names) == 14 and {n.split("/")[1] for n in names} >= {"run1-a", "run1-b", "README.txt"}
    # the whole chain ran: metadata, deposit, a catalog and how to view and clone it
    study = tmp_path / "demo-store" / "demo"
    for name in ("visit1_metadata_dicoms.json", "visit1_XDLRA--refs", "catalog/index.html",
                 "catalog/visits/visit1.json"):
        assert (study / name).is_file(), name
    assert f"python3 -m http.server -d '{study}/catalog'" in result.stdout
    assert f"url=file://{study}/visit1_{{{{annex_key}}}}" in result.stdout


# -- 3: command line -----------------------------------------------------------

def test_usage_line_matches_the_contract():
    result = run_tool("make_studyvisit_archive", "--help")
    usage = " ".join(result.stdout.split("\n\n")[0].split())
    assert usage.startswith(
        "usage: make_studyvisit_archive [-h] [-o PATH] --id STUDY-ID VISIT-ID [-q] <input-dir>"
    ), usage


def test_store_defaults_to_the_current_directory_and_md5sum_format(tmp_path):
    result = run_tool("make_studyvisit_archive", "--id", "s", "v", SAMPLE_VISIT, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tar = tmp_path / "s" / "v_dicom.tar"
    digest = hashlib.md5(tar.read_bytes()).hexdigest()
    assert (tmp_path / "s" / "v_dicom.tar.md5sum").read_text() == f"{digest}  v_dicom.tar\n"
    check = subprocess.run(["md5sum", "-c", "v_dicom.tar.md5sum"], cwd=tmp_path / "s", capture_output=True)
    assert check.returncode == 0


# -- 4: timestamps ---------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("20240102", (2024, 1, 2)), ("2024.01.02", (2024, 1, 2)), ("20240230", None),
    ("2024012", None), ("", None), ("20241301", None),
])
def test_parse_date(value, expected):
    assert parse_date(value) == expected


@pytest.mark.parametrize("value,expected", [
    ("07", (7, 0, 0)), ("0708", (7, 8, 0)), ("070809", (7, 8, 9)), ("070809.123456", (7, 8, 9)),
    ("07:08:09", (7, 8, 9)), ("07:08:09.5", (7, 8, 9)), ("235960", (23, 59, 60)),
    ("2400", None), ("0760", None), ("7", None), ("", None), ("070809.", None),
])
def test_parse_time(value, expected):
    assert parse_time(value) == expected


def test_parse_datetime_with_own_offset():
    assert parse_datetime("20240102030405.25+0130") == (calendar.timegm((2024, 1, 2, 3, 4, 5)), 5400)
    assert parse_datetime("2024") is None


def mtime_of(tar, name):
    return next(m.mtime for m in members(tar) if m.name.endswith(name))


@pytest.mark.parametrize("tags,expected", [
    ({}, (2024, 1, 2, 3, 4, 5)),
    ({"StudyTime": "030405.999"}, (2024, 1, 2, 3, 4, 5)),
    ({"StudyDate": "2024.01.02", "StudyTime": "03:04:05"}, (2024, 1, 2, 3, 4, 5)),
    ({"StudyTime": "03"}, (2024, 1, 2, 3, 0, 0)),
    ({"TimezoneOffsetFromUTC": "+0200"}, (2024, 1, 2, 1, 4, 5)),
    ({"TimezoneOffsetFromUTC": "-0530"}, (2024, 1, 2, 8, 34, 5)),
    ({"StudyDate": None, "SeriesDate": "20230101", "SeriesTime": "101010"}, (2023, 1, 1, 10, 10, 10)),
    ({"StudyTime": "", "AcquisitionDate": "20220101", "AcquisitionTime": "1111"}, (2022, 1, 1, 11, 11, 0)),
    ({"StudyDate": "garbage", "AcquisitionDateTime": "20210101121314+0100"}, (2021, 1, 1, 11, 13, 14)),
    ({"StudyDate": None, "ContentDate": "20200101", "ContentTime": "0102"}, (2020, 1, 1, 1, 2, 0)),
])
def test_member_mtime_from_dicom_header(tmp_path, store, tags, expected):
    make_dicom(tmp_path / "in" / "a.dcm", **tags)
    result = archive(store, tmp_path / "in")
    assert result.returncode == 0, result.stderr
    tar = store / "study" / "visit_dicom.tar"
    assert mtime_of(tar, "a.dcm") == calendar.timegm((*expected, 0, 0, 0))
    assert tar.stat().st_mtime == calendar.timegm((*expected, 0, 0, 0))


def test_undated_files_get_the_latest_timestamp_and_one_warning(tmp_path, store):
    make_dicom(tmp_path / "in" / "old.dcm", StudyDate="20200101")
    make_dicom(tmp_path / "in" / "new.dcm", StudyDate="20240101")
    make_dicom(tmp_path / "in" / "undated.dcm", StudyDate=None, StudyTime=None)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    result = archive(store, tmp_path / "in")
    assert result.returncode == 0, result.stderr
    latest = calendar.timegm((2024, 1, 1, 3, 4, 5))
    tar = store / "study" / "visit_dicom.tar"
    assert {m.name.split("/")[-1]: m.mtime for m in members(tar)} == {
        "new.dcm": latest, "notes.txt": latest, "old.dcm": calendar.timegm((2020, 1, 1, 3, 4, 5)),
        "undated.dcm": latest}
    warnings = [line for line in result.stderr.splitlines() if "no usable DICOM timestamp" in line]
    assert len(warnings) == 1 and warnings[0].startswith("make_studyvisit_archive: 2 of 4 files")


def test_no_dicom_timestamp_at_all_gives_zero(tmp_path, store):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("x")
    result = archive(store, tmp_path / "in")
    assert result.returncode == 0
    assert "none of the 1 files has a usable DICOM timestamp; all get 1970-01-01" in result.stderr
    assert "latest" not in result.stderr
    tar = store / "study" / "visit_dicom.tar"
    assert [m.mtime for m in members(tar)] == [0] and tar.stat().st_mtime == 0


@pytest.mark.parametrize("date", ["19691231", "22420317"])
def test_date_a_tar_header_cannot_hold_is_a_clear_error(tmp_path, store, date):
    bad = make_dicom(tmp_path / "in" / "bad.dcm", StudyDate=date)
    result = archive(store, tmp_path / "in")
    assert_failed_cleanly(result, store, bad)
    assert "Traceback" not in result.stderr


# -- 5: what counts as DICOM; headers only ----------------------------------------

def test_dicom_is_decided_by_parsing_not_by_name(tmp_path, store):
    make_dicom(tmp_path / "in" / "bare-implicit", preamble=False, implicit=True, StudyDate="20190101")
    make_dicom(tmp_path / "in" / "bare-explicit", preamble=False, StudyDate="20180101")
    (tmp_path / "in" / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    (tmp_path / "in" / "text.dcm").write_text("\x08\x00 is how it starts, but it is text")
    result = archive(store, tmp_path / "in")
    assert result.returncode == 0, result.stderr
    assert "(2 DICOMs, 2 other files)" in result.stderr
    mtimes = {m.name.split("/")[-1]: m.mtime for m in members(store / "study" / "visit_dicom.tar")}
    assert mtimes["bare-explicit"] == calendar.timegm((2018, 1, 1, 3, 4, 5))
    assert mtimes["fake.dcm"] == mtimes["text.dcm"] == calendar.timegm((2019, 1, 1, 3, 4, 5))


def test_every_pydicom_test_file_is_read_like_pydicom_reads_it():
    """Our header walk against pydicom's reader on pydicom's own test files:
    the same DICOM verdict for every file (bare data sets, which pydicom reads
    only with force=True, included), the same exported values and identity."""
    import pydicom

    from icf.dicom import NotDicom

    root = Path(pydicom.__file__).parent / "data"
    compared, bare = 0, []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        ds = pydicom_read(path)
        if ds is None:
            with pytest.raises(NotDicom):
                read_file_header(path)
            continue
        assert_read_like_pydicom(path, ds)
        compared += 1
        if path.read_bytes()[128:132] != b"DICM":
            bare.append(path.name)
    assert compared > 150
    assert {"ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm"} <= set(bare), bare


def test_whole_pydicom_test_suite_archives_without_crash(tmp_path, store):
    import pydicom

    result = archive(store, Path(pydicom.__file__).parent / "data")
    assert result.returncode == 0, result.stderr
    assert len(members(store / "study" / "visit_dicom.tar")) > 200


def test_pixel_data_is_not_read_memory_stays_flat(tmp_path, store):
    big = make_dicom(tmp_path / "in" / "big.dcm")
    with open(big, "ab") as f:  # append a 300 MB PixelData element (OW), sparse
        f.write(b"\xe0\x7f\x10\x00OW\0\0" + (300 * 2**20).to_bytes(4, "little"))
        f.truncate(f.tell() + 300 * 2**20)
    run = measure([sys.executable, REPO / "bin/make_studyvisit_archive", "-o", store,
                                "--id", "study", "visit", tmp_path / "in"])
    assert run.returncode == 0 and 5 < run.peak_rss_mb < 100, run
    assert members(store / "study" / "visit_dicom.tar")[0].size == big.stat().st_size


# -- 6: members and reproducibility -------------------------------------------------

def test_members_are_sorted_root_owned_regular_files(store):
    assert archive(store, SAMPLE_VISIT).returncode == 0
    tar = store / "study" / "visit_dicom.tar"
    listed = members(tar)
    expected = sorted(p.relative_to(SAMPLE_VISIT).as_posix() for p in SAMPLE_VISIT.rglob("*") if p.is_file())
    assert [m.name for m in listed] == [f"study_visit/{p}" for p in expected]
    for m in listed:
        assert (m.isreg(), m.mode, m.uid, m.gid, m.uname, m.gname) == (True, 0o644, 0, 0, "root", "root")
        assert m.pax_headers == {} and m.mtime == SAMPLE_STUDY_TIME
    with tarfile.open(tar) as t:
        for m in listed:
            original = SAMPLE_VISIT / m.name.split("/", 1)[1]
            assert t.extractfile(m).read() == original.read_bytes()
    gnu = subprocess.run(["tar", "-tvf", tar], capture_output=True, text=True)
    assert gnu.returncode == 0 and gnu.stderr == ""


def test_sort_order_is_per_directory_like_gnu_tar(tmp_path, store):
    for name in ("a/x", "a.b", "a-c", "B", "a/y/z", "ä"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_text(name)
    assert archive(store, tmp_path / "in").returncode == 0
    ours = [m.name.split("/", 1)[1] for m in members(store / "study" / "visit_dicom.tar")]
    gnu = subprocess.run(["tar", "--sort=name", "-cf", "-", "."], cwd=tmp_path / "in", capture_output=True)
    with tarfile.open(fileobj=__import__("io").BytesIO(gnu.stdout)) as t:
        theirs = [m.name[2:] for m in t.getmembers() if m.isfile()]
    assert ours == theirs == ["B", "a/x", "a/y/z", "a-c", "a.b", "ä"]


#: The sample visit's archive, as made by every machine; a change here breaks
#: reproducibility for existing stores.
SAMPLE_ARCHIVE_MD5 = "20bb24c5b1243dbfdb88b92d2e6c355b"


def test_same_bytes_whatever_tz_umask_locale_order_mtimes_modes(tmp_path, sample_copy):
    reference = tmp_path / "ref"
    assert archive(reference, SAMPLE_VISIT, "s1", "v1").returncode == 0
    ref_bytes = (reference / "s1" / "v1_dicom.tar").read_bytes()
    assert hashlib.md5(ref_bytes).hexdigest() == SAMPLE_ARCHIVE_MD5

    # the same files, created in reverse order, with other mtimes and modes
    shuffled = tmp_path / "shuffled"
    for path in reversed(sorted(sample_copy.rglob("*"))):
        if path.is_file():
            target = shuffled / path.relative_to(sample_copy)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            os.chmod(target, 0o600)
            os.utime(target, (123456789, 987654321))
    os.chmod(shuffled / "run1-a", 0o750)
    env = {"TZ": "Pacific/Kiritimati", "LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": "latin-1"}
    other = tmp_path / "other"
    proc = subprocess.run(
        ["sh", "-c", f'umask 077; exec "{sys.executable}" "{REPO}/bin/make_studyvisit_archive" '
                     f'-o "{other}" --id s1 v1 "{shuffled}"'],
        env=dict(os.environ, **env), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (other / "s1" / "v1_dicom.tar").read_bytes() == ref_bytes


# -- 7: inputs it cannot archive faithfully ----------------------------------------

def test_missing_input_and_file_input(tmp_path, store):
    assert_failed_cleanly(archive(store, tmp_path / "nope"), store, tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    assert_failed_cleanly(archive(store, tmp_path / "file"), store, tmp_path / "file")


def test_input_without_regular_files(tmp_path, store):
    (tmp_path / "in" / "empty-sub").mkdir(parents=True)
    assert_failed_cleanly(archive(store, tmp_path / "in"), store, tmp_path / "in")


def special_input(tmp_path, kind):
    src = tmp_path / "in"
    make_dicom(src / "ok.dcm")
    bad = src / "bad"
    if kind == "fifo":
        os.mkfifo(bad)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(bad))
        sock.close()
    elif kind == "device":
        bad.symlink_to("/dev/null")
    elif kind == "dangling":
        bad.symlink_to(tmp_path / "missing")
    elif kind == "loop":
        bad.symlink_to(src / "bad2")
        (src / "bad2").symlink_to(bad)
    elif kind == "dirlink":
        bad.symlink_to(tmp_path)
    return src, bad


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "dangling", "loop", "dirlink"])
def test_special_files_are_refused_without_hanging(tmp_path, store, kind):
    src, bad = special_input(tmp_path, kind)
    result = archive(store, src, timeout=30)  # a FIFO must not block
    assert_failed_cleanly(result, store, bad)


def test_non_utf8_name_is_refused(tmp_path, store):
    src = tmp_path / "in"
    make_dicom(src / "ok.dcm")
    with open(os.path.join(os.fsencode(src), b"bad-\xff.dcm"), "wb") as f:
        f.write(b"x")
    result = archive(store, src)
    assert_failed_cleanly(result, store, "bad-")


def test_output_inside_input_is_refused(sample_copy):
    result = archive(sample_copy / "store", sample_copy)
    assert result.returncode == 1 and "inside the input directory" in result.stderr
    assert not (sample_copy / "store").exists()


@pytest.mark.parametrize("what", ["file", "directory"])
def test_unreadable_input_is_an_error_not_a_skip(tmp_path, store, what):
    src = tmp_path / "in"
    make_dicom(src / "ok.dcm")
    locked = make_dicom(src / "locked" / "x.dcm")
    bad = locked if what == "file" else locked.parent
    os.chmod(bad, 0)
    try:
        result = archive(store, src, unprivileged=True)
    finally:
        os.chmod(bad, 0o755)
    assert_failed_cleanly(result, store, bad)


def test_symlinked_and_hardlinked_files_become_regular_members(tmp_path, store):
    src = tmp_path / "in"
    original = make_dicom(tmp_path / "elsewhere.dcm")
    src.mkdir()
    (src / "link.dcm").symlink_to(original)
    os.link(original, src / "hard1.dcm")
    os.link(original, src / "hard2.dcm")
    assert archive(store, src).returncode == 0
    with tarfile.open(store / "study" / "visit_dicom.tar") as t:
        listed = t.getmembers()
        assert [m.name.split("/")[-1] for m in listed] == ["hard1.dcm", "hard2.dcm", "link.dcm"]
        for m in listed:
            assert m.isreg() and t.extractfile(m).read() == original.read_bytes()


# -- 8: IDs --------------------------------------------------------------------------

@pytest.mark.parametrize("study,visit", [
    ("", "v"), ("..", "v"), ("s", "a/b"), ("/abs", "v"), (".hidden", "v"), ("s", "-v"), ("s p", "v"),
    ("s", "ü"),
])
def test_unsafe_ids_are_usage_errors_and_write_nothing(tmp_path, study, visit):
    store = tmp_path / "store"
    result = run_tool("make_studyvisit_archive", "-o", store, "--id", study, visit, SAMPLE_VISIT)
    assert result.returncode == 2, result.stderr
    assert not store.exists()


# -- 9: never overwrite, never partial ---------------------------------------------------

def test_existing_archive_is_refused_and_untouched(store):
    assert archive(store, SAMPLE_VISIT).returncode == 0
    tar = store / "study" / "visit_dicom.tar"
    before = (tar.read_bytes(), tar.stat().st_mtime_ns)
    result = archive(store, SAMPLE_VISIT)
    assert result.returncode == 1 and "exists already" in result.stderr
    assert (tar.read_bytes(), tar.stat().st_mtime_ns) == before


def big_input(path: Path, files: int = 400) -> Path:
    for i in range(files):
        make_dicom(path / f"{i:04d}.dcm", pixel_bytes=256 * 1024, SeriesNumber=i % 7)
    return path


@pytest.mark.slow
def test_kill_9_leaves_nothing_or_a_verified_archive_and_rerun_is_identical(tmp_path):
    src = big_input(tmp_path / "in")
    reference = tmp_path / "ref"
    assert archive(reference, src).returncode == 0
    ref_bytes = (reference / "study" / "visit_dicom.tar").read_bytes()
    outcomes = set()
    for delay in (0.05, 0.15, 0.3, 0.5, 0.8, 1.2):
        store = tmp_path / f"store-{delay}"
        proc = subprocess.Popen([sys.executable, REPO / "bin/make_studyvisit_archive", "-o", store,
                                 "--id", "study", "visit", src], stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        tar = store / "study" / "visit_dicom.tar"
        if tar.exists():
            outcomes.add("complete")
            digest = hashlib.md5(tar.read_bytes()).hexdigest()
            assert (store / "study" / "visit_dicom.tar.md5sum").read_text().split()[0] == digest
            assert tar.read_bytes() == ref_bytes
        else:
            outcomes.add("nothing")
            result = archive(store, src)
            assert result.returncode == 0, result.stderr
            assert tar.read_bytes() == ref_bytes
        assert sorted(p.name for p in (store / "study").iterdir()) == \
            ["visit_dicom.tar", "visit_dicom.tar.md5sum"]
    assert "nothing" in outcomes  # the kill did land mid-run at least once


def test_rerun_after_a_kill_between_md5sum_and_archive(tmp_path, store):
    """The one moment a kill leaves a .md5sum without archive: the rerun mends it."""
    study = store / "study"
    study.mkdir()
    (study / "v1_dicom.tar.md5sum").write_text("0" * 32 + "  v1_dicom.tar\n")
    (study / ".v1_dicom.tar.partial").write_bytes(b"half an archive")
    assert archive(store, SAMPLE_VISIT, "study", "v1").returncode == 0
    assert sorted(p.name for p in study.iterdir()) == ["v1_dicom.tar", "v1_dicom.tar.md5sum"]
    assert hashlib.md5((study / "v1_dicom.tar").read_bytes()).hexdigest() == \
        (study / "v1_dicom.tar.md5sum").read_text().split()[0]


# -- 10: feedback ----------------------------------------------------------------------------

def test_summary_quiet_and_exit_codes(store):
    result = archive(store, SAMPLE_VISIT)
    assert result.returncode == 0
    assert re.search(r"archived 14 files \(12 DICOMs, 2 other files\), 286720 bytes, md5 \w+ in [\d.]+ s",
                     result.stderr)
    quiet = run_tool("make_studyvisit_archive", "-q", "-o", store, "--id", "study", "v2", SAMPLE_VISIT)
    assert quiet.returncode == 0
    assert [line.split(":")[1] for line in quiet.stderr.splitlines()] == \
        [" 2 of 14 files have no usable DICOM timestamp; they get the latest one, 2014-04-25 15"]


def test_progress_bar_only_on_a_terminal(store):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.run([sys.executable, REPO / "bin/make_studyvisit_archive", "-o", store,
                           "--id", "study", "visit", SAMPLE_VISIT], stderr=follower, timeout=60)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    assert proc.returncode == 0
    assert b"file/s" in shown or b"14/14" in shown, shown


# -- 11: Makefile ----------------------------------------------------------------------------------

def test_makefile_archive_target_from_any_directory(tmp_path):
    store = tmp_path / "store"
    make = ["make", "-f", REPO / "Makefile", f"STORE={store}", "STUDY=s", "VISIT=v", f"INPUT={SAMPLE_VISIT}"]
    first = subprocess.run([*make, "archive"], cwd=tmp_path, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert (store / "s" / "v_dicom.tar").is_file()
    assert subprocess.run([*make, "-q", "archive"], cwd=tmp_path).returncode == 0
    second = subprocess.run([*make, "archive"], cwd=tmp_path, capture_output=True, text=True)
    assert "make_studyvisit_archive" not in second.stdout
    helped = subprocess.run(["make", "-f", REPO / "Makefile", "help"], capture_output=True, text=True)
    assert all(t in helped.stdout for t in ("archive", "metadata", "demo", "test", "bench"))
