"""Issue 9: the Makefile never deletes finished store files, and what a user
typed never becomes shell code (nor make code).

1. Store files are precious to make: a concurrent run's failure or a signal
   to make (to its process group, as Ctrl-C sends it, or to make alone)
   leaves either no archive or a complete one, and a ``--force`` metadata
   rerun leaves the old or the new JSON, never none.
2. STUDY, VISIT, INPUT, STORE and STORE_URL holding shell or make syntax,
   names in a study directory and the SLURM script's visit list: a sentinel
   file that any execution of the payload would create never appears; each
   run either fails cleanly before writing anything or works with the
   literal value.

Everything runs on the real sample DICOMs (archives are byte-reproducible,
so every archive of visit ``s/v`` must equal one reference archive)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE_VISIT

MAKEFILE = REPO / "Makefile"
SLURM_SCRIPT = REPO / "singularity" / "slurm-visit-array.sh"
STORE_FILES = ("v_dicom.tar", "v_dicom.tar.md5sum", "v_metadata_tarball.json",
               "v_metadata_dicoms.json", "v_XDLRA--refs", "v_XDLRA--repo-export",
               "catalog/visits/v.json")
# what the Makefile refuses in STORE (make cannot have it in a target name)
TARGET_UNSAFE = " \t\n\r\v\f%:;|*?[]\\"


def make(*args, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-f", str(MAKEFILE), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


def start_make(*args, cwd: Path, log: Path) -> subprocess.Popen:
    """make in a new session (its own process group, as a shell job is)."""
    with open(log, "w") as out:
        return subprocess.Popen(["make", "-f", str(MAKEFILE), *map(str, args)], cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_group(process: subprocess.Popen, timeout: float = 60) -> int:
    """Wait for make, then for every process of its group (a tool it left)."""
    status = process.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return status
        time.sleep(0.01)
    raise AssertionError("processes of make's group still running")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_complete_archive(study_dir: Path, reference: str) -> None:
    archive = study_dir / "v_dicom.tar"
    recorded = (study_dir / "v_dicom.tar.md5sum").read_text().split()
    assert recorded == [md5(archive), "v_dicom.tar"]
    assert recorded[0] == reference


def archive_args(store: Path, input_dir: Path = SAMPLE_VISIT) -> list[str]:
    return [f"STORE={store}", "STUDY=s", "VISIT=v", f"INPUT={input_dir}", "archive"]


DURATIONS: dict[str, float] = {}  # seconds a make run of each step took here, alone


def timed_make(step: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    start = time.monotonic()
    result = make(*args, cwd=cwd)
    DURATIONS[step] = time.monotonic() - start
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    """The md5 of visit s/v's archive of the sample, made alone."""
    work = tmp_path_factory.mktemp("reference")
    timed_make("archive", *archive_args(work / "store"), cwd=work)
    study_dir = work / "store" / "s"
    digest = md5(study_dir / "v_dicom.tar")
    assert_complete_archive(study_dir, digest)
    return digest


@pytest.fixture(scope="module")
def metadata_store(tmp_path_factory, reference) -> Path:
    """A store with visit s/v's archive and metadata (copy it to change it)."""
    work = tmp_path_factory.mktemp("metadata")
    store = work / "store"
    assert make(*archive_args(store), cwd=work).returncode == 0
    timed_make("metadata", f"STORE={store}", "STUDY=s", "VISIT=v", "metadata", cwd=work)
    return store


def copy_store(store: Path, target: Path) -> Path:
    shutil.copytree(store, target)  # copy2: mtimes kept, so make sees the same state
    return target


# --- 1. make never deletes a store file -----------------------------------------

def test_every_store_file_is_precious_and_delete_on_error_stays():
    """The rule the tests below check by behaviour, as GNU make 4.3 reads it:
    .PRECIOUS patterns must match the full target names of the rules."""
    result = make("-p", "-q", "STORE=/st", "STUDY=s", "VISIT=v", "archive", cwd=REPO)
    precious = next(line for line in result.stdout.splitlines() if line.startswith(".PRECIOUS:"))
    patterns = precious.split()[1:]
    for name in STORE_FILES:
        assert f"/st/s/{name.replace('v_', '%_').replace('/v.', '/%.')}" in patterns, name
    assert any(line.startswith(".DELETE_ON_ERROR:") for line in result.stdout.splitlines())


@pytest.mark.parametrize("offset", [0, 0.1, 0.3, 0.5])
def test_concurrent_archive_runs_leave_one_complete_archive(tmp_path, reference, offset):
    """Two ``make ... archive`` for one visit: the loser's tool error must
    not make make delete the winner's finished archive."""
    store = tmp_path / "store"
    first = start_make(*archive_args(store), cwd=tmp_path, log=tmp_path / "first.log")
    time.sleep(offset)
    second = start_make(*archive_args(store), cwd=tmp_path, log=tmp_path / "second.log")
    statuses = [wait_group(first), wait_group(second)]
    logs = [(tmp_path / name).read_text() for name in ("first.log", "second.log")]

    study_dir = store / "s"
    assert sorted(p.name for p in study_dir.iterdir() if not p.name.startswith(".")) == \
        ["v_dicom.tar", "v_dicom.tar.md5sum"], logs
    assert_complete_archive(study_dir, reference)
    built = [log for status, log in zip(statuses, logs, strict=True)
             if status == 0 and "/bin/make_studyvisit_archive " in log]
    assert len(built) == 1, logs
    for status, log in zip(statuses, logs, strict=True):
        if status != 0:  # the loser: its tool refused, make said so, deleted nothing
            assert "error" in log and "make: ***" in log, log


def send(process: subprocess.Popen, signum: int, to_group: bool) -> None:
    try:
        if to_group:
            os.killpg(process.pid, signum)
        else:
            os.kill(process.pid, signum)
    except ProcessLookupError:
        pass


def run_and_signal(args: list, cwd: Path, signum: int, to_group: bool, when, changed) -> tuple[bool, bool]:
    """Run make, send ``signum`` at ``when`` seconds, or (``"changed"``) as
    soon as ``changed()`` is true; (signal sent, changed() was seen true)."""
    process = start_make(*args, cwd=cwd, log=cwd / f"make-{time.monotonic_ns()}.log")
    start, sent, seen = time.monotonic(), False, False
    while process.poll() is None:
        seen = seen or changed()
        if not sent and (seen if when == "changed" else time.monotonic() - start >= when):
            send(process, signum, to_group)
            sent = True
        time.sleep(0.001)
    wait_group(process)
    return sent, seen or changed()


SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


def moments(step: str) -> list:
    """When to send the signal: through the step's run (as long as it took
    alone), and as soon as the step's output changed."""
    return [DURATIONS[step] * fraction for fraction in (0.1, 0.3, 0.5, 0.7, 0.9)] + ["changed"]


@pytest.mark.parametrize("to_group", [True, False], ids=["group", "make-alone"])
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.slow
def test_signal_during_archive_leaves_none_or_a_complete_one(tmp_path, reference, signum, to_group):
    delivered = 0
    for n, when in enumerate(moments("archive")):
        work = tmp_path / str(n)
        work.mkdir()
        study_dir = work / "store" / "s"
        archive = study_dir / "v_dicom.tar"
        sent, appeared = run_and_signal(archive_args(work / "store"), work, signum, to_group, when,
                                        archive.exists)
        delivered += sent
        if appeared:  # finished once: must still be there
            assert archive.exists(), (when, [p.read_text() for p in work.glob("*.log")])
        if archive.exists():
            assert_complete_archive(study_dir, reference)
        else:  # nothing in the way of a rerun
            assert make(*archive_args(work / "store"), cwd=work).returncode == 0
            assert_complete_archive(study_dir, reference)
    assert delivered >= 1, delivered  # a signal did arrive while make ran (timing varies under load)


@pytest.mark.parametrize("to_group", [True, False], ids=["group", "make-alone"])
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.slow
def test_signal_during_forced_metadata_rerun_keeps_old_or_new(tmp_path, metadata_store, signum, to_group):
    names = ("v_metadata_tarball.json", "v_metadata_dicoms.json")
    contents = {name: (metadata_store / "s" / name).read_bytes() for name in names}
    delivered = 0
    for n, when in enumerate(moments("metadata")):
        store = copy_store(metadata_store, tmp_path / str(n) / "store")
        study_dir = store / "s"
        past = (study_dir / "v_dicom.tar").stat().st_mtime - 3600
        for name in names:  # older than the archive (dated as its DICOMs): make reruns the step
            os.utime(study_dir / name, (past, past))
        before = {name: (study_dir / name).stat() for name in names}

        def rewritten(study_dir: Path = study_dir, before: dict = before) -> bool:
            try:
                return any((study_dir / name).stat().st_mtime_ns != before[name].st_mtime_ns
                           for name in names)
            except FileNotFoundError:
                return True  # a gap: the assertion below says so

        sent, _ = run_and_signal([f"STORE={store}", "STUDY=s", "VISIT=v", "metadata"], store.parent,
                                 signum, to_group, when, rewritten)
        delivered += sent
        for name in names:  # old or new (the same bytes: the step is deterministic), never missing
            assert (study_dir / name).read_bytes() == contents[name], (name, when)
            json.loads(contents[name])
    assert delivered >= 1, delivered


# --- 2. values never become code -------------------------------------------------

def payloads(sentinel: Path) -> dict[str, str]:
    """Values that create ``sentinel`` if a shell or make's $(shell) runs
    them (${IFS} instead of spaces: a shell splits there, make does not)."""
    s = str(sentinel)
    return {
        "backtick": f"a`touch${{IFS}}{s}`b",
        "dollar-paren": f"a$(touch${{IFS}}{s})b",
        "double-dollar": f"a$$(touch$${{IFS}}{s})b",
        "make-shell": f"a$(shell touch {s})b",
        "double-quote": f'a"$(touch${{IFS}}{s})"b',
        "single-quote": f"a'$(touch${{IFS}}{s})'b",
        "semicolon": f"a;touch${{IFS}}{s};b",
        "newline": f"a\ntouch${{IFS}}{s}\nb",
        "percent": f"a%b$(touch${{IFS}}{s})",
        "star": f"a*b`touch${{IFS}}{s}`",
    }


PAYLOAD_NAMES = list(payloads(Path("/x")))


@pytest.fixture
def sentinels(tmp_path) -> Path:
    """Where payloads would create files; checked empty after every test."""
    path = tmp_path / "sentinels"
    path.mkdir()
    yield path
    assert list(path.iterdir()) == [], "a payload ran"


@pytest.mark.parametrize("payload", PAYLOAD_NAMES)
@pytest.mark.parametrize("variable", ["STUDY", "VISIT"])
def test_hostile_id_is_refused_before_anything_runs(tmp_path, sentinels, variable, payload):
    value = payloads(sentinels / f"{variable}-{payload}")[payload]
    ids = {"STUDY": "s", "VISIT": "v", variable: value}
    store = tmp_path / "store"
    result = make(f"STORE={store}", f"STUDY={ids['STUDY']}", f"VISIT={ids['VISIT']}",
                  f"INPUT={SAMPLE_VISIT}", "archive", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{variable} is not a {variable.lower()} ID" in result.stderr
    assert result.stdout == "" and not store.exists()


@pytest.mark.parametrize("payload", PAYLOAD_NAMES)
def test_hostile_input_directory_is_archived_by_its_literal_name(tmp_path, sentinels, reference, payload):
    # the sentinel's path makes nested directories of the name: fine for a directory
    input_dir = tmp_path / "incoming" / payloads(sentinels / f"INPUT-{payload}")[payload]
    shutil.copytree(SAMPLE_VISIT, input_dir)
    store = tmp_path / "store"
    result = make(*archive_args(store, input_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_complete_archive(store / "s", reference)


@pytest.mark.parametrize("payload", PAYLOAD_NAMES)
def test_hostile_store_is_used_literally_or_refused_naming_the_character(tmp_path, sentinels, reference,
                                                                          payload):
    store = tmp_path / "stores" / payloads(sentinels / f"STORE-{payload}")[payload]
    result = make(*archive_args(store), cwd=tmp_path)
    unsafe = [c for c in str(store) if c in TARGET_UNSAFE]
    if unsafe:
        assert result.returncode == 2, result.stdout + result.stderr
        assert "STORE may not contain" in result.stderr
        named = {" ": "a space", "\n": "a newline"}.get(unsafe[0], f"'{unsafe[0]}'")
        assert f"STORE may not contain {named} " in result.stderr, (named, result.stderr)
        assert not (tmp_path / "stores").exists()
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert_complete_archive(store / "s", reference)


@pytest.mark.parametrize("payload", PAYLOAD_NAMES)
def test_hostile_store_url_is_refused_by_the_tool(tmp_path, sentinels, metadata_store, payload):
    store = copy_store(metadata_store, tmp_path / "store")
    url = "https://data.example.org/" + payloads(sentinels / f"STORE_URL-{payload}")[payload]
    result = make(f"STORE={store}", "STUDY=s", "VISIT=v", f"STORE_URL={url}", "dataset", cwd=tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "store url" in result.stderr.lower()
    assert not list((store / "s").glob("v_XDLRA--*"))


def test_values_from_the_environment_are_literal_too(tmp_path, sentinels, reference):
    values = payloads(sentinels / "env")
    refused = make("archive", cwd=tmp_path, env={"STORE": str(tmp_path / "store"),
                                                 "STUDY": values["make-shell"],
                                                 "VISIT": "v", "INPUT": str(SAMPLE_VISIT)})
    assert refused.returncode == 2 and "STUDY is not a study ID" in refused.stderr
    input_dir = tmp_path / "in" / values["make-shell"]
    shutil.copytree(SAMPLE_VISIT, input_dir)
    result = make("archive", cwd=tmp_path, env={"STORE": str(tmp_path / "store"), "STUDY": "s", "VISIT": "v",
                                                "INPUT": str(input_dir)})
    assert result.returncode == 0, result.stderr
    assert_complete_archive(tmp_path / "store" / "s", reference)


@pytest.mark.parametrize("character", sorted(TARGET_UNSAFE) + ["~"])
def test_store_with_a_character_make_cannot_carry_is_refused(tmp_path, character):
    store = f"~{tmp_path}/st" if character == "~" else f"{tmp_path}/st{character}re"
    result = make(*archive_args(store), cwd=tmp_path)
    assert result.returncode == 2 and "STORE may not contain" in result.stderr, result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_store_with_other_odd_characters_works(tmp_path, reference):
    """What make can carry in a target name: a whole pipeline step, the
    study-wide discovery of visits and -q all see the literal path."""
    store = tmp_path / "a#b=c$$d$(HOME)e(f)g'h\"i`j<k>l&m~n{o}p!q,r@s+t^u"
    assert make(*archive_args(store), cwd=tmp_path).returncode == 0
    result = make(f"STORE={store}", "STUDY=s", "metadata", cwd=tmp_path)  # no VISIT: found in the store
    assert result.returncode == 0, result.stderr
    assert (store / "s" / "v_metadata_dicoms.json").is_file()
    assert make("-q", f"STORE={store}", "STUDY=s", "metadata", cwd=tmp_path).returncode == 0
    assert_complete_archive(store / "s", reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == [store.name]


def test_input_needs_exactly_one_visit(tmp_path):
    for visits in ("a b", "", "a\tb"):
        result = make(f"STORE={tmp_path}/store", "STUDY=s", f"VISIT={visits}", f"INPUT={SAMPLE_VISIT}",
                      "archive", cwd=tmp_path)
        assert result.returncode == 2 and "set VISIT=<one visit ID>" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_store_variables_do_not_bother_other_targets(tmp_path):
    result = make("STORE=a b%c", "STUDY=$(shell touch x)", "VISIT=;", "help", cwd=tmp_path)
    assert result.returncode == 0 and "  archive " in result.stdout
    assert list(tmp_path.iterdir()) == []


HOSTILE_ARCHIVE_NAMES = ("x$(touch S1)_dicom.tar", "y`touch S2`_dicom.tar", "z;touch S3;_dicom.tar",
                         "w$(shell touch S4)_dicom.tar", "u$(file >S5,x)_dicom.tar",
                         "t$$(touch S6)_dicom.tar", "-v_dicom.tar", "a b_dicom.tar")


@pytest.mark.parametrize("goal", ["verify", "catalog"])
def test_hostile_names_in_the_study_are_warned_about_and_skipped(tmp_path, metadata_store, goal):
    """The sentinels are relative: a name holds no '/'; make, its shells and
    the tools all run in tmp_path (or the store)."""
    store = copy_store(metadata_store, tmp_path / "store")
    study_dir = store / "s"
    for name in HOSTILE_ARCHIVE_NAMES:
        (study_dir / name).write_bytes(b"")
    if goal == "catalog":  # visit v up to date (stand-ins: the deposit is not what this tests)
        (study_dir / "catalog" / "visits").mkdir(parents=True)
        for name in ("v_XDLRA--refs", "v_XDLRA--repo-export", "catalog/visits/v.json"):
            (study_dir / name).write_text("{}")
    result = make("-k", f"STORE={store}", "STUDY=s", goal, cwd=tmp_path)
    warnings = [line for line in result.stderr.splitlines() if "skipped, not <visit ID>_dicom.tar" in line]
    assert len(warnings) == 1, result.stderr
    for name in HOSTILE_ARCHIVE_NAMES:  # each named, quoted
        assert f"'{name}'" in warnings[0], name
    ran = [line for line in result.stdout.splitlines() if "/bin/" in line]
    if goal == "verify":  # v only
        assert len(ran) == 1 and ran[0].endswith(" --id s v"), result.stdout
    else:
        assert ran == [] and result.returncode == 0, result.stdout + result.stderr
    for where in (tmp_path, store, study_dir):
        assert not [p.name for p in where.iterdir() if p.name.startswith("S")], where


# --- the SLURM script ------------------------------------------------------------

@pytest.fixture
def slurm(tmp_path) -> dict:
    """The stand-in runtime of test_container (no Singularity here)."""
    from test_container import slurm_stand_in

    return {**slurm_stand_in(tmp_path), "ICF_TARGET": "archive"}


def run_task(env: dict, task: int, **changes) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM_SCRIPT), "visits.txt"], cwd=env["SLURM_SUBMIT_DIR"],
                          env={**os.environ, **env, "SLURM_ARRAY_TASK_ID": str(task), **changes},
                          capture_output=True, text=True, timeout=120)


def test_slurm_visit_list_with_hostile_names(tmp_path, sentinels, slurm):
    submit, store = Path(slurm["SLURM_SUBMIT_DIR"]), Path(slurm["ICF_STORE"])
    s = sentinels
    inputs = [f"Study `touch {s}/1` 2024", f"in $(touch {s}/2) $(shell touch {s}/3) $$(touch {s}/4)",
              f"in\"';touch {s}/5;'\""]
    for name in inputs:  # nested directories where the sentinel path has '/'
        shutil.copytree(SAMPLE_VISIT, submit / name)
    (submit / "visits.txt").write_text("\n".join([
        f"s v1 {inputs[0]}",
        f"s v2 {inputs[1]}",
        f"s v3 {inputs[2]}",
        f"s$(touch${{IFS}}{s}/6) v4 {inputs[0]}",
        f"s v`touch${{IFS}}{s}/7` {inputs[0]}",
        f"s v;touch${{IFS}}{s}/8 {inputs[0]}",
        f"s -v {inputs[0]}",
        f"../s v {inputs[0]}",
    ]) + "\n")
    for task, visit in ((1, "v1"), (2, "v2"), (3, "v3")):  # literal names: archived
        result = run_task(slurm, task)
        assert result.returncode == 0, result.stderr
        recorded = (store / "s" / f"{visit}_dicom.tar.md5sum").read_text().split()
        assert recorded == [md5(store / "s" / f"{visit}_dicom.tar"), f"{visit}_dicom.tar"]
    for task, what in ((4, "study"), (5, "visit"), (6, "visit"), (7, "visit"), (8, "study")):
        result = run_task(slurm, task)
        assert result.returncode == 2, result.stderr
        assert f"invalid {what} ID" in result.stderr
        assert not Path(f"{slurm['MOCK_LOG']}.{task}").exists()  # nothing ran
    # a store make cannot name: make refuses it (in the container), naming the character
    bad_store = tmp_path / "st%re"
    bad_store.mkdir()
    result = run_task(slurm, 1, ICF_STORE=str(bad_store))
    assert result.returncode == 2 and "STORE may not contain '%'" in result.stderr, result.stderr
    assert list(bad_store.iterdir()) == []
