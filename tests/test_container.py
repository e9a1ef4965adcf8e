"""Issue 6, requirements 3 and 4, and issue 13: the container recipe, the
icf-utils dispatcher (its runscript) and the SLURM array job script.

No Apptainer exists on our machines: ``make test-container`` builds the
image from the recipe as Apptainer does (``tests/container/build.py``) and
runs it, and ``make test-hpc`` runs the SLURM script on a real single-node
SLURM (both need root). Here, quickly: the recipe as that builder's parser
(``tests/container/deffile.py``) reads it, the parser itself, the runtime's
refusals, the dispatcher and the Makefile for real, in a checkout and in a
copy laid out as in the image, and the SLURM script with a mock
``singularity`` that runs the dispatcher on the host."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO, SAMPLE_VISIT

RECIPE = REPO / "singularity" / "icf.def"
SLURM_SCRIPT = REPO / "singularity" / "slurm-visit-array.sh"
DISPATCHER = REPO / "bin" / "icf-utils"
CONTAINER_TOOLS = REPO / "tests" / "container"
IMAGE_REPO = "/opt/icf-utils"
IMAGE_VENV = "/opt/venv"
# what the image holds of the repo, as the recipe's %files should copy it
IMAGE_FILES = {"bin": f"{IMAGE_REPO}/bin", "lib": f"{IMAGE_REPO}/lib",
               "Makefile": f"{IMAGE_REPO}/Makefile",
               "requirements.txt": f"{IMAGE_REPO}/requirements.txt"}
TOOL_PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").is_dir() else sys.executable


def run(*args, cwd=None, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(arg) for arg in args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=timeout)


def load_module(name: str) -> ModuleType:
    """A module of tests/container by its path (it is no package)."""
    spec = importlib.util.spec_from_file_location(f"container_{name}", CONTAINER_TOOLS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


deffile = load_module("deffile")


# --- the recipe, as the image builder reads it ----------------------------------------

@pytest.fixture(scope="module")
def recipe():
    """The recipe with its default build arguments, as ``build.py`` parses it."""
    return deffile.load(RECIPE)


def commands(section) -> list[list[str]]:
    """A shell section's commands, one word list per line."""
    return [shlex.split(line) for line in section.lines()]


def test_recipe_bootstraps_debian_bookworm(recipe):
    assert RECIPE.read_text().splitlines()[0] == "Bootstrap: debootstrap"
    assert recipe.header == {"bootstrap": "debootstrap", "osversion": "bookworm",
                             "mirrorurl": "http://deb.debian.org/debian",
                             "include": "git make python3 python3-venv"}
    assert recipe.arguments == {"mirror": "http://deb.debian.org/debian"}
    assert set(recipe.sections) == {"arguments", "help", "labels", "post", "environment", "runscript", "test"}


def test_recipe_mirror_is_a_build_argument_with_a_documented_default(recipe):
    assert "MirrorURL: {{ mirror }}" in RECIPE.read_text()
    mirror = "http://mirror.example.org/debian"
    other = deffile.load(RECIPE, {"mirror": mirror})
    assert other.header["mirrorurl"] == mirror and other.arguments == {"mirror": mirror}
    assert f"MirrorURL: {mirror}" in other.text  # what the image records as its definition
    help_text = recipe.section("help").body
    assert "http://deb.debian.org/debian" in help_text and "--build-arg mirror=URL" in help_text
    with pytest.raises(deffile.DefinitionError, match="not used"):
        deffile.load(RECIPE, {"mirrors": mirror})


def test_recipe_copies_the_repo_from_its_root(recipe):
    assert dict(recipe.files) == IMAGE_FILES
    # sources are relative to where `apptainer build` runs: the repo's root
    assert all((REPO / source).exists() for source, _ in recipe.files)


def test_recipe_installs_exactly_the_pinned_requirements(recipe):
    post = commands(recipe.section("post"))
    pip = [words for words in post if any(word.endswith("/pip") for word in words[:1])]
    installs = [words for words in pip if words[1:2] == ["install"]]
    assert len(installs) == 1, pip
    words = installs[0]
    assert words[0] == f"{IMAGE_VENV}/bin/pip"
    assert words[words.index("-r") + 1] == IMAGE_FILES["requirements.txt"]
    # nothing but options and the one requirements file: no unpinned extras
    assert [w for w in words[2:] if not w.startswith("-")] == [IMAGE_FILES["requirements.txt"]]
    assert ["python3", "-m", "venv", IMAGE_VENV] in post
    # Debian gives git, make and python3 (debootstrap's Include), nothing from apt in %post
    assert not [words for words in post if words[:1] == ["apt-get"] and "install" in words]
    # git-annex comes from the pinned file, not from Debian
    assert any(line.startswith("git-annex==")
               for line in (REPO / "requirements.txt").read_text().splitlines())
    # no dev requirements, and no venv where icf-utils and make would take it for a checkout's
    assert not [words for words in post if any("requirements-dev" in word for word in words)]
    assert not [source for source, _ in recipe.files if "requirements-dev" in source]
    assert not [words for words in post if any(word.startswith(f"{IMAGE_REPO}/.venv") for word in words)]


def test_recipe_runscript_dispatches_icf_utils(recipe):
    assert recipe.section("runscript").lines() == [f'exec {IMAGE_FILES["bin"]}/icf-utils "$@"']
    environment = recipe.section("environment").lines()
    assert f'export PATH="{IMAGE_FILES["bin"]}:{IMAGE_VENV}/bin:$PATH"' in environment
    assert "export LC_ALL=C.UTF-8" in environment
    assert "icf-utils make help" in recipe.section("test").lines()
    assert "org.opencontainers.image.title" in recipe.labels
    help_text = recipe.section("help").body
    assert "apptainer build icf.sif singularity/icf.def" in help_text
    assert "--bind" in help_text


# --- the parser -----------------------------------------------------------------------

def test_parser_follows_apptainer():
    text = """Bootstrap: debootstrap  # a comment
OSVersion: {{ release }}
MirrorURL: http://example.org/debian

%arguments
    release=bookworm
%files
    a /opt/a
    b
%post
    echo {{ release }}
    # echo {{ undefined }}, on a comment line: left alone
%post
    echo again
%labels
    key some value
"""
    definition = deffile.parse(text)
    assert definition.header["bootstrap"] == "debootstrap"
    assert definition.header["osversion"] == "bookworm"
    assert definition.files == [("a", "/opt/a"), ("b", "b")]
    assert definition.section("post").lines() == ["echo bookworm", "echo again"]
    assert definition.labels == {"key": "some value"}
    assert deffile.parse(text, {"release": "trixie"}).header["osversion"] == "trixie"
    for bad, message in ((text.replace("release=bookworm", ""), "has no value"),
                         (text + "%appinstall x\n", "SCIF"),
                         (text.replace("%files", "%files from stage1"), "another stage"),
                         (text.replace("    b\n", '    "b c" /d\n'), "quoted"),
                         (text + "Bootstrap: docker\n", "multi-stage"),
                         ("From: x\n%post\n", "Bootstrap"),
                         (text.replace("MirrorURL", "Mirror"), "unknown header")):
        with pytest.raises(deffile.DefinitionError, match=message):
            deffile.parse(bad)


def test_parser_sees_a_section_where_apptainer_does():
    """A line of %help whose first word starts with '%' opens a section for
    Apptainer too: the parser refuses it rather than cutting %help short."""
    with pytest.raises(deffile.DefinitionError, match="not a section"):
        deffile.parse("Bootstrap: debootstrap\n%help\n    The sources in\n    %here are relative\n")


def test_runtime_refuses_bad_command_lines(tmp_path):
    runner = CONTAINER_TOOLS / "icf-run"
    assert os.access(runner, os.X_OK)
    for args, message in ((["frobnicate", tmp_path], "unknown command 'frobnicate'"),
                          (["run", "--bind", f"{tmp_path / 'missing'}:/x", tmp_path], "bind source does not exist"),
                          (["run", "--bind", f"{tmp_path}:relative", tmp_path], "absolute path"),
                          (["run", "--bind", f"{tmp_path}:/x:rx", tmp_path], "bad bind option"),
                          (["run", tmp_path, "make"], "not an image directory"),
                          (["exec", "--frob", tmp_path], "unknown option")):
        result = run(sys.executable, runner, *args)
        assert result.returncode == 255, (args, result)
        assert result.stderr.startswith("icf-run: ") and message in result.stderr, (args, result.stderr)


# --- the dispatcher, in this checkout -----------------------------------------

def test_dispatcher_lists_its_commands():
    result = run(DISPATCHER, "--help")
    assert result.returncode == 0, result.stderr
    for command in ("make_studyvisit_archive", "deposit_visit_metadata", "deposit_visit_dataset",
                    "catalogify_studyvisit_from_meta", "make"):
        assert f"\n  {command} " in result.stdout
    no_command = run(DISPATCHER)
    assert no_command.returncode == 2 and no_command.stderr.startswith("usage: icf-utils")


def test_dispatcher_runs_a_tool():
    result = run(DISPATCHER, "make_studyvisit_archive", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: make_studyvisit_archive")


def test_dispatcher_refuses_an_unknown_command():
    result = run(DISPATCHER, "rm", "-rf", "/")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert "unknown command 'rm'" in lines[0] and "make_studyvisit_archive" in lines[0]


def test_dispatcher_runs_make_help():
    result = run(DISPATCHER, "make", "help")
    assert result.returncode == 0, result.stderr
    assert "  archive " in result.stdout and "  catalog " in result.stdout


def metadata_run(dispatcher: list, store: Path, cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(exist_ok=True)
    return run(*dispatcher, "make", f"STORE={store}", "STUDY=s", "VISIT=v",
               f"INPUT={SAMPLE_VISIT}", "metadata", cwd=cwd)


def assert_metadata_made(store: Path, cwd: Path) -> None:
    for name in ("v_dicom.tar", "v_dicom.tar.md5sum",
                 "v_metadata_tarball.json", "v_metadata_dicoms.json"):
        assert (store / "s" / name).is_file(), name
    assert list(cwd.iterdir()) == []  # all of it went to STORE


def test_dispatcher_runs_make_from_another_directory(tmp_path):
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    result = metadata_run([DISPATCHER], store, elsewhere)
    assert result.returncode == 0, result.stderr
    assert_metadata_made(store, elsewhere)
    # the checkout's way: make's default Python (the repo's venv when there is one)
    assert f"{TOOL_PYTHON} {REPO}/bin/make_studyvisit_archive" in result.stdout


# --- the dispatcher, laid out as in the image ------------------------------------

@pytest.fixture
def image_copy(tmp_path) -> Path:
    """The repo's files as %files copies them, with no .venv beside them."""
    root = tmp_path / "opt" / "icf-utils"
    for source, target in IMAGE_FILES.items():
        target_path = root / Path(target).relative_to(IMAGE_REPO)
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target_path,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / source, target_path)
    return root


def test_dispatcher_without_venv_runs_make_with_its_own_python(image_copy, tmp_path):
    """As in the container: PYTHON is the dispatcher's Python, VENV_READY= so
    that make neither wants nor builds a venv."""
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    result = metadata_run([sys.executable, image_copy / "bin" / "icf-utils"], store, elsewhere)
    assert result.returncode == 0, result.stderr
    assert_metadata_made(store, elsewhere)
    assert f"{sys.executable} {image_copy}/bin/make_studyvisit_archive" in result.stdout
    assert not (image_copy / ".venv").exists()
    tool = run(sys.executable, image_copy / "bin" / "icf-utils", "deposit_visit_metadata", "--help")
    assert tool.returncode == 0 and tool.stdout.startswith("usage: deposit_visit_metadata")


PID_TOOL = """#!/usr/bin/env python3
\"\"\"Print this process's id, interpreter and arguments.\"\"\"
import os, sys
print(os.getpid(), sys.executable, sys.argv[1:])
"""
PID_MAKEFILE = """PYTHON ?= default-python
VENV_READY ?= default-ready
pid:
\t@echo $$PPID $(PYTHON) [$(VENV_READY)]
"""


def dispatch(dispatcher: Path, *args) -> tuple[int, str]:
    """Run the dispatcher; its pid and what the command printed."""
    process = subprocess.Popen([sys.executable, str(dispatcher), *args],
                               stdout=subprocess.PIPE, text=True)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    return process.pid, out.strip()


def test_dispatcher_execs_in_place_and_passes_arguments(image_copy):
    """No wrapper process lingers: the tool and make run in the dispatcher's
    own process (a stand-in tool and Makefile print their process ids)."""
    (image_copy / "bin" / "make_studyvisit_archive").write_text(PID_TOOL)
    (image_copy / "Makefile").write_text(PID_MAKEFILE)
    dispatcher = image_copy / "bin" / "icf-utils"

    pid, out = dispatch(dispatcher, "make_studyvisit_archive", "a b", "--c")
    assert out == f"{pid} {sys.executable} ['a b', '--c']"
    pid, out = dispatch(dispatcher, "make", "pid")  # make's pid is the recipe shell's parent
    assert out == f"{pid} {sys.executable} []"
    _, out = dispatch(dispatcher, "make", "pid", "PYTHON=mine")  # the user's word wins
    assert out.split()[1] == "mine"

    (image_copy / ".venv" / "bin").mkdir(parents=True)  # a checkout with a venv
    _, out = dispatch(dispatcher, "make", "pid")
    assert out.split()[1:] == ["default-python", "[default-ready]"]


# --- the SLURM array job script -----------------------------------------------

SINGULARITY_MOCK = """#!/bin/bash
# MOCK of `singularity run --bind SPEC IMAGE ARGS...` (make test-hpc runs
# the script with a real runtime on a real SLURM). It records its arguments,
# checks that every bind is an existing host path mounted at the same path
# (SRC:SRC or SRC:SRC:ro), and runs what the image's runscript runs
# (bin/icf-utils ARGS) on the host.
set -eu
printf '%s\\n' "$@" > "$MOCK_LOG.$SLURM_ARRAY_TASK_ID"
[ "$1" = run ] && [ "$2" = --bind ] || { echo "mock: unexpected $*" >&2; exit 97; }
IFS=, read -ra binds <<<"$3"
for bind in "${binds[@]}"; do
  IFS=: read -r source destination options <<<"$bind"
  [ -d "$source" ] && [ "$source" = "$destination" ] && case $options in '' | ro) ;; *) false ;; esac ||
    { echo "mock: bad bind $bind" >&2; exit 98; }
done
shift 4
exec @PYTHON@ @DISPATCHER@ "$@"
"""


def test_slurm_script_is_valid_bash():
    result = run("bash", "-n", SLURM_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert os.access(SLURM_SCRIPT, os.X_OK)


def slurm_stand_in(tmp_path: Path) -> dict[str, str]:
    """The environment of an array task with the stand-in runtime on PATH:
    empty submit directory and store under ``tmp_path``."""
    mock_dir, submit, store = tmp_path / "mock", tmp_path / "submit", tmp_path / "store"
    for path in (mock_dir, submit, store):
        path.mkdir()
    mock = mock_dir / "singularity"
    mock.write_text(SINGULARITY_MOCK.replace("@PYTHON@", shlex.quote(sys.executable))
                    .replace("@DISPATCHER@", shlex.quote(str(DISPATCHER))))
    mock.chmod(0o755)
    return {"PATH": f"{mock_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(submit),
            "ICF_STORE": str(store), "ICF_IMAGE": str(tmp_path / "icf.sif"),
            "MOCK_LOG": str(tmp_path / "argv")}


@pytest.fixture
def slurm_env(tmp_path) -> dict[str, str]:
    """A submit directory with a visit list, a store, and the mock on PATH."""
    env = slurm_stand_in(tmp_path)
    submit = Path(env["SLURM_SUBMIT_DIR"])
    (submit / "input").symlink_to(SAMPLE_VISIT)  # a relative INPUT-DIR
    (submit / "visits.txt").write_text(
        f"# STUDY VISIT INPUT-DIR\n\ns v1 {SAMPLE_VISIT}\n  s v2 input\n")
    return env


@pytest.mark.slow
def test_slurm_array_runs_one_visit_per_task(slurm_env, tmp_path):
    submit, store = Path(slurm_env["SLURM_SUBMIT_DIR"]), Path(slurm_env["ICF_STORE"])
    tasks = [subprocess.Popen(["bash", str(SLURM_SCRIPT), "visits.txt"], cwd=submit,
                              env=dict(os.environ, **slurm_env, SLURM_ARRAY_TASK_ID=str(task)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for task in (1, 2)]
    for task in tasks:
        _, err = task.communicate(timeout=120)
        assert task.returncode == 0, err
    # the default target: every step, both visits in the one catalog (tasks ran at once)
    for visit in ("v1", "v2"):
        for name in ("dicom.tar", "metadata_tarball.json", "metadata_dicoms.json", "XDLRA--refs"):
            assert (store / "s" / f"{visit}_{name}").is_file(), (visit, name)
    catalog = store / "s" / "catalog"
    assert sorted(p.name for p in (catalog / "visits").iterdir()) == ["v1.json", "v2.json"]
    listed = set()
    for record in catalog.glob("metadata/**/*.json"):
        listed |= {sub["dataset_path"] for sub in json.loads(record.read_text()).get("subdatasets", [])}
    assert listed >= {"v1", "v2"}, listed
    argv = (tmp_path / "argv.2").read_text().splitlines()
    assert argv == ["run", "--bind", f"{store}:{store},{SAMPLE_VISIT}:{SAMPLE_VISIT}:ro",
                    slurm_env["ICF_IMAGE"], "make", f"STORE={store}", "STUDY=s", "VISIT=v2",
                    f"INPUT={SAMPLE_VISIT}", "catalog"]


def test_slurm_array_refuses_a_task_beyond_the_list(slurm_env):
    result = run("bash", SLURM_SCRIPT, "visits.txt", cwd=slurm_env["SLURM_SUBMIT_DIR"],
                 env=dict(slurm_env, SLURM_ARRAY_TASK_ID="3"))
    assert result.returncode == 2
    assert "has no visit number 3" in result.stderr
    assert not list(Path(slurm_env["ICF_STORE"]).iterdir())
