"""Issue 9 from the tools' side: store paths and URLs, git-invalid paths,
one exit path (OS errors, signals, locks), and verify_visit checking
everything the store claims. Real steps on the real sample DICOMs; OS
errors from a real full tmpfs, a real read-only bind mount and real
permissions (root's override dropped in the child)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
from conftest import BIN, REPO, SAMPLE_VISIT, make_dicom, run_tool
from test_dataset import VENV_BIN, clean_env, clone, md5_of, run, user_env, visit_store

from icf.output import signals_held
from icf.store import Visit, default_store_url, git_refusal

STUDY, VISIT = "study1", "visit1"
#: The deposit's store URL: the same for the built visit and its copies.
STORE_URL = "https://data.example.org/store"


def assert_one_error_line(result: subprocess.CompletedProcess, status: int, *words: str) -> str:
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def hidden_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".")
                  and p.name != ".catalog.lock")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Visit:
    """The sample visit through steps 1-3."""
    store = tmp_path_factory.mktemp("safety") / "store"
    visit = visit_store(store)
    result = run_tool("deposit_visit_dataset", "-q", "-o", store, "--id", STUDY, VISIT,
                      "--store-url", STORE_URL)
    assert result.returncode == 0, result.stderr
    return visit


@pytest.fixture
def visit(built, tmp_path) -> Visit:
    """A private copy of the built visit, free to damage."""
    shutil.copytree(built.study_dir, tmp_path / STUDY)
    return Visit(tmp_path, STUDY, VISIT)


# -- store URLs and store paths ------------------------------------------------

@pytest.mark.parametrize("char", ["'", '"', "`", "$", ";", "<", ">", " ", "\t", "\x01", "&", "#",
                                  "?", "{", "\\", "é", "%zz"])
@pytest.mark.slow
def test_store_url_that_would_break_the_clone_command_is_refused(visit, char):
    before = sorted(p.name for p in visit.study_dir.iterdir())
    url = f"https://data.example.org/st{char}ore"
    for script in ("deposit_visit_dataset", "catalogify_studyvisit_from_meta", "verify_visit"):
        force = ["--force"] if script == "deposit_visit_dataset" else []
        result = run_tool(script, "-o", visit.store, "--id", STUDY, VISIT, "--store-url", url, *force)
        assert result.returncode == 2, (script, result.stderr)
        assert "invalid store URL" in result.stderr and "Traceback" not in result.stderr
        assert repr(char if char != "%zz" else "%")[1:-1] in result.stderr or "%XX" in result.stderr
    assert sorted(p.name for p in visit.study_dir.iterdir()) == before


ODD_STORE = "st ore#1%41?&'$é"


@pytest.mark.slow
def test_odd_store_path_works_end_to_end_and_writes_nowhere_else(tmp_path):
    """A store directory with space, #, %, ?, &, ', $ and non-ASCII: every step,
    clone, get and verify work, and nothing appears outside <store>/<study>/
    (``icf#2024`` used to make step 3 overwrite a file ``icf`` beside it)."""
    parent = tmp_path / "parent"
    parent.mkdir()
    sentinels = {}
    for cut in ("#", "%", "?", "&", "'", "$"):
        name = ODD_STORE.split(cut)[0]
        sentinels[parent / name] = f"sentinel {name}".encode()
    sentinels[parent / "st oreA"] = b"sentinel pct-decoded"
    for path, content in sentinels.items():
        path.write_bytes(content)
    store = parent / ODD_STORE
    before = sorted(p.name for p in parent.iterdir()) + [ODD_STORE]
    visit = visit_store(store)
    for script in ("deposit_visit_dataset", "catalogify_studyvisit_from_meta", "verify_visit"):
        result = run_tool(script, "-q", "-o", store, "--id", STUDY, VISIT)
        assert result.returncode == 0, (script, result.stderr)
    assert sorted(p.name for p in parent.iterdir()) == sorted(before)
    assert {path: path.read_bytes() for path in sentinels} == sentinels
    assert [p.name for p in store.iterdir()] == [STUDY]
    assert hidden_leftovers(visit.study_dir) == []
    url = visit.clone_url(default_store_url(store))
    record = json.loads((visit.catalog_dir / "visits" / f"{VISIT}.json").read_text())
    assert record["url"] == url and "'" not in url and " " not in url
    env = user_env(tmp_path / "user")
    ds = tmp_path / "clone"
    clone(url, ds, env)
    first = json.loads(visit.metadata_dicoms.read_text())[0]
    run([VENV_BIN / "datalad", "get", first["path"]], cwd=ds, env=env)
    assert md5_of(ds / first["path"]) == first["md5"]
    assert sorted(p.name for p in parent.iterdir()) == sorted(before)


# -- paths a dataset cannot hold ----------------------------------------------

GIT_INVALID = [".git/config", ".GIT/HEAD", "git~1/x.dcm", ".git./x.dcm", ".gitmodules",
               "sub/.gitattributes", "sub/.Git/x", "sub/.gitignore", "GIT~1", ".git :x/y"]


def test_git_refusal_covers_everything_git_refuses(tmp_path):
    """The rule is checked against git itself: every path git's index
    refuses (with NTFS and HFS+ protection on, as on a clone's machine) is
    refused by :func:`git_refusal`, and ordinary scanner names pass both."""
    repo = tmp_path / "repo"
    run(["git", "init", "-q", repo])
    env = dict(os.environ, GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    blob = run(["git", "hash-object", "-w", "--stdin"], cwd=repo, env=env).stdout.strip()
    ordinary = ["a/MR.1.3.46.670589", "a/b c/d.dcm", "a/DICOMDIR", "a/.hidden", "a/git", "a/.gitx",
                "a/x.git", "a/.git-rewrite", "a/gitmodules"]
    candidates = ordinary + [f"a/{name}" for name in GIT_INVALID] + [
        "a/.git\u200c/x", "a/.GiT\u200d", "a/.gitmodules.", "a/gitmod~1", "a/.mailmap", "a/./b",
        "a/../b", "a//b", "a/.git...  /x"]
    for path in candidates:
        git = subprocess.run(
            ["git", "-c", "core.protectNTFS=true", "-c", "core.protectHFS=true", "update-index",
             "--add", "--cacheinfo", f"120000,{blob},{path}"], cwd=repo, env=env, capture_output=True)
        if git.returncode != 0:
            assert git_refusal(path), f"git refuses {path!r}, git_refusal does not"
    for path in ordinary:
        assert git_refusal(path) is None, path


@pytest.mark.parametrize("name", GIT_INVALID)
def test_git_invalid_paths_archived_but_refused_by_step_3(tmp_path, name):
    source = tmp_path / "input"
    make_dicom(source / "ok" / "a.dcm")
    make_dicom(source / name)
    store = tmp_path / "store"
    archived = run_tool("make_studyvisit_archive", "-o", store, "--id", STUDY, VISIT, source)
    assert archived.returncode == 0, archived.stderr
    assert "cannot be deposited" in archived.stderr and name in archived.stderr
    assert run_tool("deposit_visit_metadata", "-q", "-o", store, "--id", STUDY, VISIT).returncode == 0
    before = sorted(p.name for p in (store / STUDY).iterdir())
    result = run_tool("deposit_visit_dataset", "-o", store, "--id", STUDY, VISIT)
    assert_one_error_line(result, 1, f"{STUDY}_{VISIT}/{name}", "cannot deposit")
    assert sorted(p.name for p in (store / STUDY).iterdir()) == before


# -- verify_visit checks everything -------------------------------------------

def verify(visit: Visit, url: str = STORE_URL) -> subprocess.CompletedProcess:
    return run_tool("verify_visit", "-o", visit.store, "--id", STUDY, VISIT, "--store-url", url)


def mismatch_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if "verify_visit: mismatch: " in line]


def edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    value = change(value) or value
    path.write_text(json.dumps(value))


@pytest.mark.parametrize("tag, value", [("SeriesDescription", "edited"), ("ProtocolName", "edited"),
                                        ("Modality", "CT"), ("SeriesNumber", 999)])
@pytest.mark.slow
def test_verify_rederives_every_exported_tag(visit, tag, value):
    first = json.loads(visit.metadata_dicoms.read_text())[0]
    edit_json(visit.metadata_dicoms, lambda records: records[0].update({tag: value}))
    lines = mismatch_lines(verify(visit))
    assert any(first["path"] in line and tag in line and "in the archive" in line for line in lines), lines


@pytest.mark.parametrize("field", ["dspath", "storepath"])
@pytest.mark.slow
def test_verify_checks_the_paths_in_the_tarball_record(visit, field):
    edit_json(visit.metadata_tarball, lambda record: record.update({field: "elsewhere.tar"}))
    assert any(field in line for line in mismatch_lines(verify(visit)))


@pytest.mark.parametrize("damage", ["object", "not-json", "no-md5", "string-size", "nested"])
@pytest.mark.slow
def test_verify_calls_malformed_json_a_mismatch(visit, damage):
    text = {"object": '{"path": "x"}', "not-json": "[{", "no-md5": '[{"path": "a", "size": 1}]',
            "string-size": '{"size": "12", "md5": "' + "0" * 32 + '", "dspath": "", "storepath": ""}',
            "nested": "[" * 100000 + "]" * 100000}[damage]
    target = visit.metadata_tarball if damage == "string-size" else visit.metadata_dicoms
    target.write_text(text)
    assert any("malformed" in line or "not valid JSON" in line for line in mismatch_lines(verify(visit)))


@pytest.mark.slow
def test_verify_finds_a_deposit_made_for_another_store_url(visit):
    """The TAR's URL inside repo-export is checked against the store URL
    (rewritten to another host: a mismatch naming the URL)."""
    url = "https://elsewhere.example.org/store"
    result = run_tool("deposit_visit_dataset", "-q", "--force", "-o", visit.store, "--id", STUDY, VISIT,
                      "--store-url", url)
    assert result.returncode == 0, result.stderr
    assert verify(visit, url).returncode == 0
    lines = mismatch_lines(verify(visit))
    assert any("icf/visit1_dicom.tar: URL" in line and "elsewhere.example.org" in line for line in lines)


@pytest.mark.slow
def test_verify_finds_git_annex_metadata_that_disagrees(visit):
    """A deposit made from an edited JSON, the JSON then restored: the
    deposit's git-annex metadata no longer matches."""
    original = visit.metadata_dicoms.read_bytes()
    edit_json(visit.metadata_dicoms, lambda records: records[0].update({"ProtocolName": "forged"}))
    assert run_tool("deposit_visit_dataset", "-q", "--force", "-o", visit.store, "--id", STUDY,
                    VISIT, "--store-url", STORE_URL).returncode == 0
    visit.metadata_dicoms.write_bytes(original)
    lines = mismatch_lines(verify(visit))
    assert len(lines) == 1 and "git-annex metadata" in lines[0] and "forged" in lines[0], lines


@pytest.mark.parametrize("where", [0.3, 0.5, 0.8])
@pytest.mark.slow
def test_verify_calls_bit_rot_in_the_deposit_a_mismatch(visit, where):
    data = bytearray(visit.deposit_repo_export.read_bytes())
    for offset in range(int(len(data) * where), int(len(data) * where) + 64):
        data[offset] ^= 0x55
    visit.deposit_repo_export.write_bytes(bytes(data))
    assert mismatch_lines(verify(visit))


@pytest.mark.slow
def test_verify_calls_bit_rot_in_a_directory_entry_a_mismatch(visit):
    """Extracting a ZIP never reads a directory entry's header: found when
    the flipped bytes above happened to fall on one (CI, a larger deposit)."""
    with zipfile.ZipFile(visit.deposit_repo_export) as archive:
        entry = next(info for info in archive.infolist() if info.is_dir())
    data = bytearray(visit.deposit_repo_export.read_bytes())
    data[entry.header_offset + 30] ^= 0x55  # the first character of its name
    visit.deposit_repo_export.write_bytes(bytes(data))
    lines = mismatch_lines(verify(visit))
    assert len(lines) == 1 and f"entry {entry.filename!r} is damaged" in lines[0], lines


@pytest.mark.slow
def test_verify_calls_garbage_refs_a_mismatch(visit):
    visit.deposit_refs.write_bytes(b"\xff\xfe garbage\n")
    assert mismatch_lines(verify(visit))


# -- one exit path: OS errors, locks, signals ---------------------------------

def in_mount_namespace(setup: str, script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``bin/<script> args`` in a private mount namespace after ``setup``
    (shell, e.g. mounting a small tmpfs), then list the study directory there."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to mount a small or read-only file system")
    shell = f"{setup} && {{ \"$@\"; status=$?; ls -A store/{STUDY} >&2; exit $status; }}"
    result = subprocess.run(["unshare", "-m", "sh", "-c", shell, "sh", sys.executable, BIN / script,
                             *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)
    if "unshare failed" in result.stderr or "mount: " in result.stderr:
        pytest.skip(f"no private mounts here: {result.stderr.strip()}")
    return result


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    (tmp_path / "store").mkdir()
    result = in_mount_namespace("mount -t tmpfs -o size=128k tmpfs store", "make_studyvisit_archive",
                                "-o", "store", "--id", STUDY, VISIT, SAMPLE_VISIT, cwd=tmp_path)
    line = assert_one_error_line(result, 1, "No space left on device")
    assert ".visit1_dicom.tar.partial" in line or "store" in line
    listing = result.stderr.splitlines()[-2:]
    assert not any(name.startswith(".") or name.startswith(VISIT) for name in listing), result.stderr


@pytest.mark.slow
def test_read_only_store_is_one_line(built, tmp_path):
    shutil.copytree(built.study_dir, tmp_path / "store" / STUDY,
                    ignore=shutil.ignore_patterns("*.json", "*XDLRA*", "catalog"))
    result = in_mount_namespace("mount --bind store store && mount -o remount,ro,bind store",
                                "deposit_visit_metadata", "-o", "store", "--id", STUDY, VISIT,
                                cwd=tmp_path)
    assert_one_error_line(result, 1, "Read-only file system", "store/study1")


@pytest.mark.slow
def test_permission_denied_store_and_unreadable_tar(built, tmp_path):
    visit = Visit(tmp_path / "store", STUDY, VISIT)
    shutil.copytree(built.study_dir, visit.study_dir,
                    ignore=shutil.ignore_patterns("*.json", "*XDLRA*", "catalog"))
    visit.study_dir.chmod(0o555)
    try:
        result = run_tool("deposit_visit_metadata", "-o", visit.store, "--id", STUDY, VISIT,
                          unprivileged=True)
        assert_one_error_line(result, 1, "Permission denied", str(visit.study_dir))
    finally:
        visit.study_dir.chmod(0o755)
    visit.tarball.chmod(0)
    result = run_tool("deposit_visit_metadata", "-o", visit.store, "--id", STUDY, VISIT,
                      unprivileged=True)
    assert_one_error_line(result, 1, "Permission denied", str(visit.tarball))
    assert hidden_leftovers(visit.study_dir) == []


@pytest.mark.slow
def test_lock_and_partial_files_of_another_user_do_not_block(built, tmp_path):
    """``.catalog.lock`` made by another user (read-only to us) still locks;
    a ``.partial`` another user's killed run left is replaced."""
    visit = Visit(tmp_path / "store", STUDY, VISIT)
    shutil.copytree(built.study_dir, visit.study_dir, ignore=shutil.ignore_patterns("*.json", "catalog"))
    stale = visit.study_dir / f".{visit.metadata_tarball.name}.partial"
    lock = visit.study_dir / ".catalog.lock"
    for path in (stale, lock):
        path.write_bytes(b"left by someone else")
        os.chown(path, 12345, 12345)
        path.chmod(0o644)
    for script in ("deposit_visit_metadata", "catalogify_studyvisit_from_meta"):
        result = run_tool(script, "-q", "-o", visit.store, "--id", STUDY, VISIT, unprivileged=True)
        assert result.returncode == 0, (script, result.stderr)
    assert not stale.exists() and lock.stat().st_uid == 12345
    assert json.loads(visit.metadata_tarball.read_text())["size"] == built.tarball.stat().st_size


def test_sigterm_mid_deposit_exits_143_and_leaves_nothing(tmp_path):
    visit = visit_store(tmp_path / "store")
    before = sorted(p.name for p in visit.study_dir.iterdir())
    process = subprocess.Popen([sys.executable, BIN / "deposit_visit_dataset", "-o", visit.store,
                                "--id", STUDY, VISIT], stderr=subprocess.PIPE, text=True,
                               env=clean_env(tmp_path / "home"))
    build = visit.study_dir / f".{VISIT}_XDLRA.build"
    deadline = time.monotonic() + 60
    while not (build / "repo" / ".git" / "annex").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == \
        "deposit_visit_dataset: interrupted by SIGTERM, nothing written", stderr
    assert sorted(p.name for p in visit.study_dir.iterdir()) == before


def test_a_signal_after_the_output_is_complete_says_so(tmp_path):
    """cli.run with a step that completes its output and is then signalled
    (a real SIGHUP to itself): the output stays and the message says so."""
    script = tmp_path / "step"
    script.write_text(textwrap.dedent(f"""\
        import os, signal, sys
        sys.path.insert(0, {str(REPO / 'lib')!r})
        from pathlib import Path
        from icf import cli
        from icf.output import write_files
        parser = cli.argument_parser("step", "a test step")
        def main(args):
            write_files({{Path(args.store_dir, "out"): b"complete"}})
            os.kill(os.getpid(), signal.SIGHUP)
            return "done"
        cli.run(parser, main, lambda args: [Path(args.store_dir, "out")])
        """))
    result = subprocess.run([sys.executable, script, "-o", tmp_path, "--id", "s", "v"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 129
    assert result.stderr.strip() == "step: interrupted by SIGHUP, after out was complete"
    assert (tmp_path / "out").read_bytes() == b"complete"


def test_signals_held_delivers_after_the_block():
    received = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: received.append(signum))
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.01)
            assert received == []
        assert received == [signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_line_break_in_a_name_stays_one_line(tmp_path):
    result = run_tool("make_studyvisit_archive", "-o", tmp_path, "--id", STUDY, VISIT,
                      tmp_path / "no\nsuch")
    line = assert_one_error_line(result, 1, "no\\nsuch")
    assert len(result.stderr.strip().splitlines()) == 1, line


# -- caps ------------------------------------------------------------------------

def test_huge_tag_value_is_capped_in_json_and_catalog(tmp_path):
    source = tmp_path / "input"
    make_dicom(source / "a.dcm", SeriesDescription="x" * (8 << 20))
    visit = visit_store(tmp_path / "store", source)
    result = run_tool("catalogify_studyvisit_from_meta", "-q", "-o", visit.store, "--id", STUDY, VISIT)
    assert result.returncode == 0, result.stderr
    description = json.loads(visit.metadata_dicoms.read_text())[0]["SeriesDescription"]
    assert len(description) <= 1024 and "cut" in description
    assert visit.metadata_dicoms.stat().st_size < 4096
    assert (visit.catalog_dir / "visits" / f"{VISIT}.json").stat().st_size < 8192


# -- found by an attacker-style review ------------------------------------------

@pytest.mark.parametrize("edit", ["drop HEAD", "junk line", "HEAD elsewhere"])
@pytest.mark.slow
def test_verify_checks_the_refs_file_exactly(visit, edit):
    text = visit.deposit_refs.read_text()
    text = {"drop HEAD": "".join(line + "\n" for line in text.splitlines() if not line.endswith(" HEAD")),
            "junk line": text + "garbage line here\n",
            "HEAD elsewhere": text.replace("@refs/heads/main HEAD", "@refs/heads/git-annex HEAD")}[edit]
    visit.deposit_refs.write_text(text)
    assert any(visit.deposit_refs.name in line for line in mismatch_lines(verify(visit)))


@pytest.mark.parametrize("target", ["dicoms", "tarball"])
@pytest.mark.slow
def test_a_field_added_to_the_metadata_is_a_mismatch(visit, target):
    path = visit.metadata_dicoms if target == "dicoms" else visit.metadata_tarball
    edit_json(path, lambda value: (value[0] if isinstance(value, list) else value).update(
        {"PatientName": "Doe^John"}))
    assert any("malformed" in line and "PatientName" in line for line in mismatch_lines(verify(visit)))


def test_a_pax_size_of_thousands_of_digits_is_corruption(tmp_path):
    import tarfile

    from icf import IcfError
    from icf.tarball import latest_member_mtime

    def header(name: str, size: int, kind: bytes = b"0") -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.type, info.mtime = size, kind, 1000
        return info.tobuf(format=tarfile.USTAR_FORMAT)

    body = b"size=" + b"1" * 5000 + b"\n"
    length = len(body) + 1
    while len(str(length).encode() + b" " + body) != length:
        length = len(str(length).encode() + b" " + body)
    pax = str(length).encode() + b" " + body
    tar = tmp_path / "x.tar"
    tar.write_bytes(header("PaxHeader/x", len(pax), b"x") + pax + bytes(-len(pax) % 512)
                    + header("s_v/a", 1) + b"x" + bytes(511) + bytes(1024))
    with pytest.raises(IcfError, match="archive corrupted"):
        latest_member_mtime(tar)
