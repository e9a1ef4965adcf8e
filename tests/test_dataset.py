"""Step 3, deposit_visit_dataset: real git-annex, real ``datalad clone`` of
the deposit, real HTTP server with basic authentication on 127.0.0.1.

Archives and JSON come from the real steps 1 and 2 (:func:`visit_store`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SAMPLE_VISIT, make_dicom, run_tool
from rangeserver import range_server

from icf.annex import annex_key, key_extension
from icf.store import Visit

VENV_BIN = Path(sys.executable).parent
STUDY, VISIT = "study1", "visit1"
pytestmark = pytest.mark.skipif(shutil.which("git-annex", path=f"{VENV_BIN}:{os.environ['PATH']}") is None,
                                reason="git-annex not installed")


def clean_env(home: Path, **extra) -> dict:
    """An environment with an empty HOME, no git identity, no user config,
    and the venv's git-annex and datalad-next helpers on PATH."""
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_", "DATALAD_", "EMAIL"))}
    env.update(HOME=str(home), PATH=f"{VENV_BIN}:{env['PATH']}", **extra)
    return env


def user_env(home: Path, **extra) -> dict:
    """A researcher's environment for cloning: like :func:`clean_env`, but
    with a git identity (``git annex init`` in a clone commits)."""
    return clean_env(home, GIT_AUTHOR_NAME="R", GIT_AUTHOR_EMAIL="r@example.org",
                     GIT_COMMITTER_NAME="R", GIT_COMMITTER_EMAIL="r@example.org", **extra)


def visit_store(store: Path, input_dir: Path = SAMPLE_VISIT, study: str = STUDY,
                visit: str = VISIT) -> Visit:
    """Archive and metadata JSON for ``input_dir`` made by steps 1 and 2."""
    for script, args in (("make_studyvisit_archive", [input_dir]), ("deposit_visit_metadata", [])):
        result = run_tool(script, "-q", "-o", store, "--id", study, visit, *args)
        assert result.returncode == 0, result.stderr
    return Visit(store, study, visit)


def deposit(visit: Visit, *args, env: dict) -> subprocess.CompletedProcess:
    return run_tool("deposit_visit_dataset", "-q", "-o", visit.store, "--id", visit.study,
                    visit.visit, *args, env=env, timeout=120)


def run(cmd: list, cwd: Path | None = None, env: dict | None = None, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{cmd}: {result.stderr}"
    return result


def clone(url: str, target: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """``datalad clone`` run beside the target: run inside another git
    repository (e.g. this checkout), datalad-next 1.6.0 initialises git-annex
    in that repository (conftest checks that this checkout stays clean)."""
    return run([VENV_BIN / "datalad", "clone", url, target], cwd=target.parent, env=env, check=check)


def dicom_records(visit: Visit) -> list[dict]:
    return json.loads(visit.metadata_dicoms.read_text())


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def study_listing(visit: Visit) -> list[str]:
    return sorted(p.name for p in visit.study_dir.iterdir())


@pytest.fixture(scope="module")
def deposited(tmp_path_factory):
    """The sample visit deposited once, with an empty HOME and no identity."""
    root = tmp_path_factory.mktemp("deposit")
    visit = visit_store(root / "store")
    home = root / "home"
    result = deposit(visit, env=clean_env(home))
    assert result.returncode == 0, result.stderr
    return visit, home


@pytest.mark.slow
def test_deposits_without_a_writable_home(tmp_path):
    """As a cluster job may run it: HOME a directory it cannot write (found
    by ``make test-container``: DataLad made ~/.cache/datalad/sockets)."""
    visit = visit_store(tmp_path / "store")
    home = tmp_path / "home"
    home.mkdir(mode=0o555)
    result = run_tool("deposit_visit_dataset", "-q", "-o", visit.store, "--id", visit.study, visit.visit,
                      env=clean_env(home), unprivileged=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert list(home.iterdir()) == []
    assert visit.deposit_refs.is_file()


@pytest.mark.slow
def test_leaves_exactly_the_two_files_and_touches_no_config(deposited):
    visit, home = deposited
    assert study_listing(visit) == sorted([
        visit.tarball.name, visit.md5sum.name, visit.metadata_tarball.name,
        visit.metadata_dicoms.name, visit.deposit_refs.name, visit.deposit_repo_export.name])
    # no global git or datalad configuration written (helpers may fill ~/.cache)
    assert [p.name for p in home.iterdir() if p.name != ".cache"] == []
    refs = visit.deposit_refs.read_text()
    assert "refs/heads/main" in refs and "refs/heads/git-annex" in refs


@pytest.mark.slow
def test_clone_get_metadata_view_fsck(deposited, tmp_path):
    visit, _ = deposited
    env = user_env(tmp_path / "home")
    ds = tmp_path / "clone"
    clone(visit.clone_url(visit.store.resolve().as_uri()), ds, env)
    records = dicom_records(visit)
    # every DICOM and the TAR are there as annexed files, nothing else
    files = run(["git", "ls-files"], cwd=ds, env=env).stdout.split("\n")
    assert sorted(f for f in files if f and not f.startswith(".")) == sorted(
        [r["path"] for r in records] + [visit.dataset_tar_path])
    config = (ds / ".datalad" / "config").read_text()
    assert "id = " in config
    first = records[0]
    run([VENV_BIN / "datalad", "get", first["path"]], cwd=ds, env=env)
    assert md5_of(ds / first["path"]) == first["md5"]
    whereis = json.loads(run(["git", "annex", "whereis", "--json", first["path"]], cwd=ds, env=env).stdout)
    assert {"[archivist]", "[tarslice]"} <= {w["description"] for w in whereis["whereis"]}
    # archivist serves the same keys (datalad get prefers tarslice, the cheaper)
    second = records[1]
    run(["git", "annex", "get", "--from", "archivist", second["path"]], cwd=ds, env=env)
    assert md5_of(ds / second["path"]) == second["md5"]
    # the TAR through uncurl
    run(["git", "annex", "get", "--from", "uncurl", visit.dataset_tar_path], cwd=ds, env=env)
    tarball = json.loads(visit.metadata_tarball.read_text())
    assert md5_of(ds / visit.dataset_tar_path) == tarball["md5"]
    meta = json.loads(run(["git", "annex", "metadata", "--json", first["path"]], cwd=ds, env=env).stdout)
    for tag in ("SeriesDescription", "SeriesNumber", "Modality", "MRAcquisitionType", "ProtocolName",
                "series", "InstanceNumber"):
        assert meta["fields"][tag] == [str(first[tag])]
    assert "PulseSequenceName" not in meta["fields"]  # empty in the JSON: not set
    run(["git", "annex", "fsck", "--fast", "-q"], cwd=ds, env=env)
    run(["git", "annex", "view", "protocolname=*", "seriesnumber=*"], cwd=ds, env=env)
    viewed = {p.relative_to(ds).parts[:2] for p in ds.rglob("*")
              if p.is_symlink() and not p.relative_to(ds).parts[0].startswith(".")}
    assert viewed == {(r["ProtocolName"], str(r["SeriesNumber"])) for r in records}


@pytest.mark.slow
def test_deterministic_refs(deposited, tmp_path):
    """A second build elsewhere, same inputs and store URL, a user's git
    configuration that sets other key settings: same refs."""
    visit, _ = deposited
    url = visit.store.resolve().as_uri()
    other = Visit(tmp_path / "store", visit.study, visit.visit)
    other.study_dir.mkdir(parents=True)
    for path in (visit.tarball, visit.metadata_tarball, visit.metadata_dicoms):
        shutil.copy2(path, other.study_dir)
    # a user whose git configuration would change keys, if it were read
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[annex]\n\tbackend = SHA256E\n\tmaxextensionlength = 10\n"
                                     "\tmaxextensions = 5\n[init]\n\tdefaultBranch = trunk\n")
    result = deposit(other, "--store-url", url, env=clean_env(home))
    assert result.returncode == 0, result.stderr
    assert other.deposit_refs.read_bytes() == visit.deposit_refs.read_bytes()


@pytest.mark.slow
def test_existing_deposit_needs_force_and_leftovers_go(tmp_path):
    visit = visit_store(tmp_path / "store")
    env = clean_env(tmp_path / "home")
    assert deposit(visit, env=env).returncode == 0
    before = visit.deposit_refs.read_bytes()
    refused = deposit(visit, env=env)
    assert refused.returncode == 1
    assert "exists already" in refused.stderr and str(visit.deposit_repo_export) in refused.stderr
    # a killed run's leftovers: build directory and partial files
    (visit.study_dir / f".{VISIT}_XDLRA.build" / "repo").mkdir(parents=True)
    (visit.study_dir / f".{VISIT}_XDLRA--refs.partial").write_text("junk")
    forced = deposit(visit, "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert visit.deposit_refs.read_bytes() == before
    assert not [n for n in study_listing(visit) if n.startswith(".")]


@pytest.mark.slow
def test_killed_run_leaves_previous_deposit(tmp_path):
    visit = visit_store(tmp_path / "store")
    env = clean_env(tmp_path / "home")
    assert deposit(visit, env=env).returncode == 0
    before = {p: p.read_bytes() for p in (visit.deposit_refs, visit.deposit_repo_export)}
    proc = subprocess.Popen(
        [sys.executable, Path(__file__).parent.parent / "bin" / "deposit_visit_dataset", "-q", "--force",
         "-o", visit.store, "--id", STUDY, VISIT], env=env, start_new_session=True)
    build = visit.study_dir / f".{VISIT}_XDLRA.build" / "repo"
    deadline = time.monotonic() + 60
    while not build.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert build.exists() and proc.poll() is None  # killed inside the build
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert {p: p.read_bytes() for p in before} == before
    assert deposit(visit, "--force", env=env).returncode == 0
    assert not [n for n in study_listing(visit) if n.startswith(".")]


@pytest.mark.slow
def test_crash_between_the_two_renames_still_clones_and_is_reported(deposited, tmp_path):
    """kill -9 between the two renames leaves the new repo-export beside
    the previous refs: built here with real runs (the new deposit differs by
    its store URL), then the crash state is made by putting the old refs back."""
    built, _ = deposited
    visit = Visit(tmp_path / "store", built.study, built.visit)
    shutil.copytree(built.study_dir, visit.study_dir)
    previous_refs = visit.deposit_refs.read_bytes()
    env = clean_env(tmp_path / "home")
    assert deposit(visit, "--force", "--store-url", "http://127.0.0.1:9/store", env=env).returncode == 0
    new_refs = visit.deposit_refs.read_text()
    assert new_refs.encode() != previous_refs
    visit.deposit_refs.write_bytes(previous_refs)
    ds = tmp_path / "clone"
    clone(visit.clone_url(visit.store.resolve().as_uri()), ds, user_env(tmp_path / "user"))
    cloned = run(["git", "rev-parse", "origin/git-annex"], cwd=ds).stdout.strip()
    assert f"{cloned} refs/heads/git-annex" in new_refs  # the new dataset, whole
    result = run_tool("verify_visit", "-o", visit.store, "--id", STUDY, VISIT, env=env)
    assert result.returncode == 3
    assert f"{visit.deposit_refs}: names other commits than" in result.stderr, result.stderr
    assert deposit(visit, "--force", env=env).returncode == 0
    result = run_tool("verify_visit", "-o", visit.store, "--id", STUDY, VISIT, env=env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", [
    "MR.1.3.46.670589.11.38317.5.0.4476.2014042516042547586", "a.b.nii.gz", "x.tar.gz2",
    "é.DCM", ".hidden.dcm", "no_ext", "with space.dcm", "two..dots.IMA", "ünï.çødé", "a.b-c.gz",
    "series.1.toolong5.dcm",
])
def test_keys_match_git_annex_calckey(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"content\n")
    env = clean_env(tmp_path / "home")
    run(["git", "init", "-q", tmp_path / "r"], env=env)
    expected = run(["git", "-c", "annex.maxextensionlength=4", "-c", "annex.maxextensions=2",
                    "annex", "calckey", "--backend=MD5E", path], cwd=tmp_path / "r", env=env).stdout.strip()
    assert annex_key(hashlib.md5(b"content\n").hexdigest(), 8, f"top/{name}") == expected, key_extension(name)


@pytest.mark.slow
def test_git_annex_branch_matches_batch_commands(deposited, tmp_path):
    """The logs written directly equal what git-annex's own commands write."""
    visit, _ = deposited
    env = user_env(tmp_path / "home")
    ds = tmp_path / "clone"
    clone(visit.clone_url(visit.store.resolve().as_uri()), ds, env)
    assert_branch_made_by_batch_commands(visit, ds, tmp_path / "ref", env)


def assert_branch_made_by_batch_commands(visit: Visit, ds: Path, ref: Path, env: dict) -> None:
    """Replay the deposit with ``initremote``, ``registerurl --batch`` and
    ``metadata --batch`` in a new repository ``ref``; its git-annex branch
    must equal the one cloned into ``ds``, file by file."""
    ours = branch_files(ds, "origin/git-annex", env)
    timestamp = ours["uuid.log"].split("timestamp=")[1].split("s")[0]
    env_ref = dict(env, GIT_ANNEX_VECTOR_CLOCK=timestamp, GIT_AUTHOR_NAME="x", GIT_AUTHOR_EMAIL="x@y",
                   GIT_COMMITTER_NAME="x", GIT_COMMITTER_EMAIL="x@y")
    uuids = {dict(kv.split("=", 1) for kv in line.split()[1:])["name"]: line.split()[0]
             for line in ours["remote.log"].splitlines()}
    annex_uuid = next(line.split()[0] for line in ours["uuid.log"].splitlines() if " ICF deposit " in line)
    run(["git", "init", "-q", ref], env=env_ref)
    run(["git", "config", "annex.uuid", annex_uuid], cwd=ref, env=env_ref)
    run(["git", "annex", "init", "-q", f"ICF deposit {visit.study}/{visit.visit}"], cwd=ref, env=env_ref)
    for remote in ("uncurl", "archivist", "tarslice"):
        run(["git", "annex", "initremote", "-q", remote, "type=external", f"externaltype={remote}",
             "encryption=none", "autoenable=true", f"uuid={uuids[remote]}"], cwd=ref, env=env_ref)
    tar_key = annex_key(json.loads(visit.metadata_tarball.read_text())["md5"],
                        json.loads(visit.metadata_tarball.read_text())["size"], "x.tar")
    tar_url = visit.tar_url(visit.store.resolve().as_uri())
    records = dicom_records(visit)
    batch(ref, env_ref, ["registerurl", "--batch", "-z", "--json", "--remote=uncurl"],
          f"{tar_key} {tar_url}\0")
    batch(ref, env_ref, ["registerurl", "--batch", "-z", "--json", "--remote=archivist"], "".join(
        f"{annex_key(r['md5'], r['size'], r['path'])} "
        f"dl+archive:{tar_key}#path={r['path']}&size={r['size']}\0" for r in records))
    batch(ref, env_ref, ["registerurl", "--batch", "-z", "--json", "--remote=tarslice"], "".join(
        f"{annex_key(r['md5'], r['size'], r['path'])} "
        f"tarslice:{tar_key}#offset={r['offset']}&size={r['size']}\0" for r in records))
    # metadata: every field of the record but where and what the file is, all
    # values of a multi-valued tag, once per key (identical files share one)
    first_of_key = {annex_key(r["md5"], r["size"], r["path"]): r for r in reversed(records)}
    batch(ref, env_ref, ["metadata", "--batch", "--json"], "".join(json.dumps({
        "key": key, "fields": fields}) + "\n" for key, r in reversed(first_of_key.items())
        if (fields := metadata_of(r))))
    run(["git", "annex", "merge", "-q"], cwd=ref, env=env_ref)
    assert branch_files(ref, "git-annex", env_ref) == ours


def metadata_of(record: dict) -> dict[str, list[str]]:
    """The git-annex metadata a DICOM record should give: its fields but
    path, md5, size, offset, kind and frames, each with its non-empty values."""
    fields = {}
    for name, value in record.items():
        values = [str(v) for v in (value if isinstance(value, list) else [value]) if str(v) != ""]
        if name not in ("path", "md5", "size", "offset", "kind", "frames") and values:
            fields[name] = values
    return fields


def batch(repo: Path, env: dict, args: list, stdin: str) -> None:
    result = subprocess.run(["git", "annex", *args], cwd=repo, env=env, input=stdin,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert all(json.loads(line)["success"] for line in result.stdout.splitlines()), result.stdout


def branch_files(repo: Path, ref: str, env: dict) -> dict[str, str]:
    names = run(["git", "ls-tree", "-r", "--name-only", "-z", ref], cwd=repo, env=env).stdout.split("\0")
    return {n: run(["git", "cat-file", "blob", f"{ref}:{n}"], cwd=repo, env=env).stdout
            for n in names if n}


ODD_NAMES = ["with space.dcm", "quote'single", 'quote"double', "ünïcødé.dcm", "per%20cent",
             "question?mark", "plus+sign", "semi;colon", "equals=sign", "back\\slash"]


def odd_input(directory: Path, names: list[str]) -> Path:
    for index, name in enumerate(names):
        make_dicom(directory / "odd" / name, SeriesNumber=index + 1, ProtocolName=f"proto {index}")
    return directory


@pytest.mark.slow
def test_odd_paths_work_end_to_end(tmp_path):
    visit = visit_store(tmp_path / "store", odd_input(tmp_path / "input", ODD_NAMES))
    result = deposit(visit, env=clean_env(tmp_path / "home"))
    assert result.returncode == 0, result.stderr
    env = user_env(tmp_path / "user")
    ds = tmp_path / "clone"
    clone(visit.clone_url(visit.store.resolve().as_uri()), ds, env)
    records = dicom_records(visit)
    assert len(records) == len(ODD_NAMES)
    run([VENV_BIN / "datalad", "get", "."], cwd=ds, env=env)
    for record in records:
        assert md5_of(ds / record["path"]) == record["md5"], record["path"]
    run(["git", "annex", "fsck", "--fast", "-q"], cwd=ds, env=env)
    # odd names in URLs, metadata values with spaces (base64 in the log), keys with extensions
    assert_branch_made_by_batch_commands(visit, ds, tmp_path / "ref", env)


@pytest.mark.slow
def test_multivalued_tags_identical_files_and_views(tmp_path):
    """A multi-valued tag is several git-annex values, identical DICOMs at
    two paths each keep their own archivist URL, and ``git annex view`` by
    sequence and by series works in a clone without content."""
    source = tmp_path / "input"
    make_dicom(source / "t1" / "a.dcm", SeriesNumber=2, ProtocolName=["T1 MPRAGE", "repeat"],
               SequenceName="*tfl3d1_16ns", InstanceNumber=1)
    (source / "copy").mkdir()
    shutil.copy(source / "t1" / "a.dcm", source / "copy" / "same.dcm")
    make_dicom(source / "bold" / "b.dcm", SeriesNumber=5, SequenceName="epfid2d1_64", InstanceNumber=1)
    visit = visit_store(tmp_path / "store", source)
    result = deposit(visit, env=clean_env(tmp_path / "home"))
    assert result.returncode == 0, result.stderr
    env = user_env(tmp_path / "user")
    ds = tmp_path / "clone"
    clone(visit.clone_url(visit.store.resolve().as_uri()), ds, env)
    records = {r["path"].split("/", 1)[1]: r for r in dicom_records(visit)}
    same_key = {r["md5"] for name, r in records.items() if name in ("t1/a.dcm", "copy/same.dcm")}
    assert len(same_key) == 1  # one key, two paths
    whereis = json.loads(run(["git", "annex", "whereis", "--json", records["copy/same.dcm"]["path"]],
                             cwd=ds, env=env).stdout)
    urls = [url for w in whereis["whereis"] for url in w.get("urls", [])]
    both = ("copy/same.dcm", "t1/a.dcm")
    assert sorted(url.split("#path=")[1] for url in urls if url.startswith("dl+archive:")) == [
        f"{records[name]['path']}&size={records[name]['size']}" for name in both]
    assert sorted(url.split("#")[1] for url in urls if url.startswith("tarslice:")) == sorted(
        f"offset={records[name]['offset']}&size={records[name]['size']}" for name in both)
    assert len(urls) == 4
    meta = json.loads(run(["git", "annex", "metadata", "--json", records["t1/a.dcm"]["path"]],
                          cwd=ds, env=env).stdout)
    assert sorted(meta["fields"]["ProtocolName"]) == ["T1 MPRAGE", "repeat"]
    assert meta["fields"]["SequenceName"] == ["*tfl3d1_16ns"]
    assert_branch_made_by_batch_commands(visit, ds, tmp_path / "ref", env)

    def view(*fields: str) -> set[tuple[str, ...]]:
        run(["git", "annex", "view", *fields], cwd=ds, env=env)
        shown = {p.relative_to(ds).parts for p in ds.rglob("*")
                 if p.is_symlink() and not p.relative_to(ds).parts[0].startswith(".")}
        run(["git", "annex", "vpop"], cwd=ds, env=env)
        return shown

    by_sequence = view("SequenceName=*")
    assert {parts[0] for parts in by_sequence} == {"*tfl3d1_16ns", "epfid2d1_64"}
    assert {len(parts) for parts in by_sequence} == {2} and len(by_sequence) == 3
    series = {name: r["series"] for name, r in records.items()}
    assert {parts[0] for parts in view("series=*")} == set(series.values()) and len(set(series.values())) == 2
    by_protocol = {parts[0] for parts in view("ProtocolName=*") if parts[1].startswith("a")}
    assert by_protocol == {"T1 MPRAGE", "repeat"}  # one file under each of its values
    run([VENV_BIN / "datalad", "get", "."], cwd=ds, env=env)
    for name, record in records.items():
        assert md5_of(ds / record["path"]) == record["md5"], name


@pytest.mark.parametrize("name", ["amp&ersand.dcm", "hash#tag.dcm"])
def test_unaddressable_paths_refused_before_writing(tmp_path, name):
    visit = visit_store(tmp_path / "store", odd_input(tmp_path / "input", ["fine.dcm", name]))
    before = study_listing(visit)
    result = deposit(visit, env=clean_env(tmp_path / "home"))
    assert result.returncode == 1
    assert name in result.stderr and "cannot deposit" in result.stderr
    assert study_listing(visit) == before


# -- over HTTP with basic authentication --------------------------------------

USER, SECRET = "researcher", "s3cret"


@pytest.fixture
def http_store(tmp_path):
    """A store served with basic auth (realm "icf") on 127.0.0.1."""
    store = tmp_path / "store"
    store.mkdir()
    with range_server(store, (USER, SECRET)) as (url, _):
        yield store, url


def credential_env(home: Path, base_url: str, user: str, secret: str) -> dict:
    """Credentials the datalad-next way, from the environment (see docs/user.rst)."""
    return user_env(home, DATALAD_CREDENTIAL_ICF_USER=user, DATALAD_CREDENTIAL_ICF_SECRET=secret,
                     DATALAD_CREDENTIAL_ICF_REALM=f"{base_url}/icf",
                     DATALAD_CREDENTIAL_ICF_TYPE="user_password")


@pytest.mark.slow
def test_http_basic_auth(http_store, tmp_path):
    store, base_url = http_store
    visit = visit_store(store)
    result = deposit(visit, "--store-url", base_url, env=clean_env(tmp_path / "home"))
    assert result.returncode == 0, result.stderr
    url = visit.clone_url(base_url)
    # without or with wrong credentials: clone fails, no content
    for name, env in (("none", user_env(tmp_path / "h1")),
                      ("wrong", credential_env(tmp_path / "h2", base_url, USER, "wrong"))):
        failed = clone(url, tmp_path / f"clone-{name}", env, check=False)
        assert failed.returncode != 0, name
        # datalad-next's words for a refused download (documented in docs/user.rst)
        assert "deposit does not exist, or is inaccessible" in failed.stdout, failed.stdout
        assert not (tmp_path / f"clone-{name}").exists() or not any(
            (tmp_path / f"clone-{name}").rglob("MR.*")), name
    env = credential_env(tmp_path / "h3", base_url, USER, SECRET)
    ds = tmp_path / "clone"
    clone(url, ds, env)
    first = dicom_records(visit)[0]
    # a wrong secret at get time fails and leaves no content
    wrong = credential_env(tmp_path / "h4", base_url, USER, "wrong")
    assert run([VENV_BIN / "datalad", "get", first["path"]], cwd=ds, env=wrong, check=False).returncode != 0
    assert not (ds / first["path"]).exists()
    run([VENV_BIN / "datalad", "get", first["path"]], cwd=ds, env=env)
    assert md5_of(ds / first["path"]) == first["md5"]
