#!/usr/bin/env python3
"""Build an image's root file system from a definition file, as ``apptainer build`` does.

    build.py [--build-arg NAME=VALUE]... [--bind SPEC]... [--cache-dir DIR] [--context DIR] DEFINITION

prints the image directory (a root file system with Apptainer's
``/.singularity.d`` layout) that ``icf-run`` runs. There is no Apptainer on our
machines; this does, for a ``Bootstrap: debootstrap`` definition, what
Apptainer 1.2+ does for ``apptainer build --sandbox``, in its order, reading
everything from the definition (``deffile.py``): debootstrap (minbase, the
header's OSVersion, MirrorURL and Include, Apptainer's excludes), the base
layout (``/.singularity.d`` with its action and environment scripts, empty
/etc/hosts and /etc/resolv.conf), ``%files`` copied from DIR (default: the
current directory) with ``cp -fLr``, ``%post`` run by ``/bin/sh -ex`` as root
in the image (``icf-run exec --writable --cleanenv``: host /proc, /sys, /dev,
DNS), then ``%help``, ``%labels``, ``%environment``, ``%runscript`` and
``%test`` written where Apptainer writes them, and ``%test`` run in the
finished image (as an unprivileged user, read-only: stricter than Apptainer).
``--bind SPEC`` binds a host path into ``%post`` only, and
``APPTAINERENV_NAME=value`` sets NAME there, as with ``apptainer build``
(behind a TLS-intercepting proxy, pip in ``%post`` needs the host's CA
bundle: ``--bind /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro``
with ``APPTAINERENV_PIP_CERT=/etc/ssl/certs/ca-certificates.crt``); neither
is part of the cache key: they change how %post downloads, not what it makes.
Not supported, and refused: other bootstraps, ``%setup``, ``%pre``,
``%startscript``, SCIF apps, multi-stage files.

Two cached stages, in DIR (default ICF_CONTAINER_CACHE, else
/var/cache/icf-utils/container), each built in a temporary directory and
renamed into place when complete, so an interrupted build leaves nothing a
later run trusts (the next build removes its leftovers):

- ``debootstrap-<key>``: debootstrap's result, keyed by the bootstrap header
  (with build arguments applied) and the debootstrap command;
- ``image-<key>``: the image, keyed by that, the whole definition, the
  content of every ``%files`` source (except ``__pycache__`` directories: the
  host's bytecode, which the recipe removes) and this builder's own code.

The two newest of each are kept. Builds wait for each other (a lock).
Needs root and debootstrap, as ``apptainer build`` does for this bootstrap.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import deffile

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "icf_run.py"
DEFAULT_CACHE = "/var/cache/icf-utils/container"
# Apptainer's (internal/pkg/build/sources/conveyorPacker_debootstrap.go)
DEBOOTSTRAP_EXCLUDE = "openssl,udev,debconf-i18n,e2fsprogs"
KEEP = 2
STAGE1_FORMAT = 1  # bump when what the debootstrap stage holds changes

ENV_LOOP = """for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done
"""
# what Apptainer puts under /.singularity.d (base_environment.go), in our words
BASE_FILES = {
    "actions/exec": f"#!/bin/sh\n\n{ENV_LOOP}\nexec \"$@\"\n",
    "actions/run": f"#!/bin/sh\n\n{ENV_LOOP}\nif test -x /.singularity.d/runscript; then\n"
                   "    exec /.singularity.d/runscript \"$@\"\nfi\n"
                   "echo \"No runscript in this image, running /bin/sh\" >&2\nexec /bin/sh \"$@\"\n",
    "actions/test": f"#!/bin/sh\n\n{ENV_LOOP}\nif test -x /.singularity.d/test; then\n"
                    "    exec /.singularity.d/test \"$@\"\nfi\n"
                    "echo \"No test in this image\" >&2\nexec /bin/sh -c true\n",
    "actions/shell": f"#!/bin/sh\n\n{ENV_LOOP}\nexec /bin/sh \"$@\"\n",
    "env/01-base.sh": "#!/bin/sh\n",
    "env/90-environment.sh": "#!/bin/sh\n# Custom environment shell code should follow\n\n",
    "env/99-base.sh": "#!/bin/sh\n\nif [ -z \"$LD_LIBRARY_PATH\" ]; then\n"
                      "    LD_LIBRARY_PATH=\"/.singularity.d/libs\"\nelse\n"
                      "    LD_LIBRARY_PATH=\"$LD_LIBRARY_PATH:/.singularity.d/libs\"\nfi\n"
                      "PS1=\"Apptainer> \"\nexport LD_LIBRARY_PATH PS1\n",
    "runscript": "#!/bin/sh\n\necho \"There is no runscript defined for this container\"\n",
}
BASE_LINKS = {"apptainer": ".singularity.d/runscript", ".run": ".singularity.d/actions/run",
              ".exec": ".singularity.d/actions/exec", ".test": ".singularity.d/actions/test",
              ".shell": ".singularity.d/actions/shell", "environment": ".singularity.d/env/90-environment.sh"}


class BuildError(Exception):
    """The image cannot be built: one line for the user."""


def say(message: str) -> None:
    print(f"build.py: {message}", file=sys.stderr, flush=True)


def digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def run(argv: list[str], *, log: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run argv (output to ``log`` if given, else to stderr) in a process group
    of its own, killed whole if this build is stopped (debootstrap and pip
    start processes of their own); fail naming it."""
    with open(log or os.devnull, "ab") as out:
        process = subprocess.Popen(argv, stdout=out if log else sys.stderr, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            returncode = process.wait()
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    if returncode != 0:
        tail = ""
        if log:
            tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise BuildError(f"{argv[0]} failed (exit {returncode}): {' '.join(argv)}{tail}")


# --- keys ---------------------------------------------------------------------------

def debootstrap_argv(definition: deffile.Definition, arch: str, target: Path) -> list[str]:
    """Apptainer's debootstrap command for this header."""
    header = definition.header
    include = ",".join(["apt", *header.get("include", "").split()])
    return ["debootstrap", "--variant=minbase", f"--exclude={DEBOOTSTRAP_EXCLUDE}", f"--include={include}",
            f"--arch={arch}", header["osversion"], str(target), header["mirrorurl"]]


def tree_digest(path: Path) -> list[object]:
    """What ``cp -fLr`` copies from ``path``: names, permissions and contents,
    symlinks followed; ``__pycache__`` directories left out."""
    if not path.exists():
        raise BuildError(f"%files source does not exist: {path}")
    if path.is_file():
        return [oct(path.stat().st_mode & 0o777), hashlib.sha256(path.read_bytes()).hexdigest()]
    entries: list[object] = []
    for directory, subdirs, names in os.walk(path, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        for name in sorted(names):
            file = Path(directory, name)
            entries.append([str(file.relative_to(path)), *tree_digest(file)])
    return entries


def builder_digest() -> str:
    return hashlib.sha256(b"".join((HERE / name).read_bytes()
                                   for name in ("build.py", "deffile.py", "icf_run.py"))).hexdigest()


# --- the cache -----------------------------------------------------------------------

def mounted_under(path: Path) -> list[str]:
    """Mount points at or under ``path`` in this mount namespace."""
    prefix = str(path).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == str(path) or point.startswith(prefix):
            points.append(point)
    return points


def remove(path: Path) -> None:
    """Remove a build directory, never through a mount point."""
    mounts = mounted_under(path)
    if mounts:
        raise BuildError(f"not removing {path}: something is mounted there: {', '.join(mounts)}")
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True)


def cached(cache: Path, name: str, build: Callable[[Path], None], material: dict[str, object]) -> Path:
    """``cache/name``, built by ``build(tmp)`` into a temporary directory first
    and renamed into place complete; touched when used."""
    final = cache / name
    if final.is_dir():
        os.utime(final)
        return final
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
    try:
        build(tmp)
        (tmp / "build.json").write_text(json.dumps(material, indent=1, sort_keys=True) + "\n")
        tmp.chmod(0o755)
        os.rename(tmp, final)
    except BaseException:
        remove(tmp)
        raise
    return final


def prune(cache: Path, prefix: str, used: Path) -> None:
    """Keep the KEEP newest ``prefix*`` entries (and the one in use)."""
    entries = sorted(cache.glob(f"{prefix}*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for entry in entries[KEEP:]:
        if entry != used:
            say(f"removing the older cached {entry.name}")
            remove(entry)


# --- the image -------------------------------------------------------------------------

def secure_join(root: Path, path: str) -> Path:
    """``path`` (absolute, in the image) under ``root``, refusing '..' and symlinks on the way."""
    parts = [part for part in path.split("/") if part]
    if not path.startswith("/") or ".." in parts:
        raise BuildError(f"%files destination must be an absolute path without '..': {path}")
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise BuildError(f"%files destination {path} passes through a symlink in the image")
    return current


def base_layout(rootfs: Path) -> None:
    """Apptainer's base environment: /.singularity.d and the empty host files."""
    for directory in (".singularity.d/libs", ".singularity.d/actions", ".singularity.d/env", "dev", "proc",
                      "root", "var/tmp", "tmp", "etc", "sys", "home"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    for name, text in BASE_FILES.items():
        write(rootfs / ".singularity.d" / name, text, 0o755)
    for name in ("etc/hosts", "etc/resolv.conf"):
        target = rootfs / name
        if target.is_symlink():
            target.unlink()
        write(target, "", 0o644)
    for name, link in BASE_LINKS.items():
        if not (rootfs / name).exists():
            (rootfs / name).symlink_to(link)
    os.chmod(rootfs, 0o755)


def write(path: Path, text: str, mode: int) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def copy_files(definition: deffile.Definition, context: Path, rootfs: Path) -> None:
    """%files, as Apptainer's CopyFromHost: ``cp -fLr SOURCE DEST``, DEST's parent made."""
    for source, destination in definition.files:
        source_path = context / source
        if not source_path.exists():
            raise BuildError(f"%files source does not exist: {source_path}")
        target = secure_join(rootfs, destination)
        if destination.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
        say(f"%files: {source} -> {destination}")
        run(["cp", "-fLr", "--", str(source_path), str(target)])


def script_argv(section: deffile.Section, script: str) -> list[str]:
    """How Apptainer runs a build script: ``/bin/sh -ex [args] SCRIPT`` (``-c``: the rest is one command)."""
    params = section.args.split("#", 1)[0].split()
    if "-c" in params:
        index = params.index("-c")
        if index == len(params) - 1:
            raise BuildError(f"%{section.name} -c: missing command")
        return ["/bin/sh", "-ex", *params[:index + 1], " ".join([*params[index + 1:], script])]
    return ["/bin/sh", "-ex", *params, script]


def shebang_script(section: deffile.Section) -> str:
    """A runscript or test file as Apptainer writes it: shebang (default
    /bin/sh, plus the section's arguments), a blank line, the text."""
    shebang, body = "#!/bin/sh", section.body
    if section.body.strip().startswith("#!"):
        first, _, body = section.body.partition("\n")
        shebang = first.strip()
    if section.args:
        shebang += " " + section.args.split("#", 1)[0]
    return f"{shebang}\n\n{body}\n"


def run_post(definition: deffile.Definition, rootfs: Path, binds: list[str]) -> None:
    post = definition.section("post")
    if not post.body.strip():
        return
    script = rootfs / ".post.script"
    write(script, post.body, 0o755)
    say("running %post")
    try:
        run([sys.executable, str(RUNNER), "exec", "--writable", "--cleanenv", "--pwd", "/",
             *[option for spec in binds for option in ("--bind", spec)], str(rootfs),
             *script_argv(post, "/.post.script")], env=dict(os.environ, ICF_RUN_UID="0", ICF_RUN_GID="0"))
    finally:
        script.unlink()


def insert_metadata(definition: deffile.Definition, rootfs: Path) -> None:
    """%help, %labels, the definition, %environment, %runscript and %test, where Apptainer puts them."""
    meta = rootfs / ".singularity.d"
    help_text = definition.section("help").body
    labels = {"org.label-schema.schema-version": "1.0"}
    labels.update({f"org.label-schema.usage.singularity.deffile.{key}": value
                   for key, value in definition.header.items()})
    if help_text:
        write(meta / "runscript.help", help_text + "\n", 0o644)
        labels["org.label-schema.usage"] = "/.singularity.d/runscript.help"
    labels.update(definition.labels)
    write(meta / "labels.json", json.dumps(labels, indent="\t", sort_keys=True), 0o644)
    write(meta / "Singularity", definition.text, 0o644)
    environment = definition.section("environment").body
    if environment:
        with open(meta / "env" / "90-environment.sh", "a", encoding="utf-8") as env_file:
            env_file.write("\n" + environment + "\n")
    for name, file in (("runscript", "runscript"), ("test", "test")):
        section = definition.section(name)
        if section.body.strip():
            write(meta / file, shebang_script(section), 0o755)


def build_image(definition: deffile.Definition, context: Path, base: Path, binds: list[str], tmp: Path) -> None:
    rootfs = tmp / "rootfs"
    say(f"copying {base.name}")
    run(["cp", "-a", "--", str(base / "rootfs"), str(rootfs)])
    base_layout(rootfs)
    copy_files(definition, context, rootfs)
    run_post(definition, rootfs, binds)
    insert_metadata(definition, rootfs)
    if definition.section("test").body.strip():
        say("running %test")
        run([sys.executable, str(RUNNER), "test", str(rootfs)])


def check_supported(definition: deffile.Definition) -> None:
    if definition.header.get("bootstrap") != "debootstrap":
        raise BuildError(f"only 'Bootstrap: debootstrap' is supported, not '{definition.header.get('bootstrap')}'")
    for key in ("osversion", "mirrorurl"):
        if not definition.header.get(key):
            raise BuildError(f"the debootstrap header needs '{key}'")
    for name in ("setup", "pre", "startscript"):
        if definition.section(name).body.strip():
            raise BuildError(f"%{name} is not supported by this builder")


def build(definition_path: Path, build_args: dict[str, str], cache: Path, context: Path,
          binds: list[str]) -> Path:
    """The image directory for the definition: cached, or built now."""
    if os.geteuid() != 0:
        raise BuildError("must run as root (as apptainer build with debootstrap)")
    if not shutil.which("debootstrap"):
        raise BuildError("debootstrap is not installed (apt-get install debootstrap)")
    definition = deffile.load(definition_path, build_args)
    check_supported(definition)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for leftover in cache.glob(".tmp-*"):
            say(f"removing {leftover.name}, left by an interrupted build")
            remove(leftover)

        stage1 = {"format": STAGE1_FORMAT, "arch": arch,
                  "debootstrap": debootstrap_argv(definition, arch, Path("ROOTFS"))}
        key1 = digest(stage1)[:16]

        def bootstrap(tmp: Path) -> None:
            log = tmp / "debootstrap.log"
            say(f"debootstrap {definition.header['osversion']} from {definition.header['mirrorurl']} "
                f"(log: {log})")
            # its own mount namespace: mounts debootstrap makes never reach the host
            run(["unshare", "--mount", "--propagation", "private", "--",
                 *debootstrap_argv(definition, arch, tmp / "rootfs")], log=log)

        start = time.monotonic()
        base = cached(cache, f"debootstrap-{key1}", bootstrap, stage1)
        say(f"debootstrap stage {base.name} ready in {time.monotonic() - start:.0f} s")

        stage2 = {"debootstrap": key1, "definition": definition.text, "builder": builder_digest(),
                  "files": [[source, destination, tree_digest(context / source)]
                            for source, destination in definition.files]}
        key2 = digest(stage2)[:16]
        start = time.monotonic()
        image = cached(cache, f"image-{key2}", lambda tmp: build_image(definition, context, base, binds, tmp),
                       {"debootstrap": key1, "definition": definition.text, "builder": stage2["builder"],
                        "definition_file": str(definition_path), "build_args": definition.arguments})
        say(f"image {image.name} ready in {time.monotonic() - start:.0f} s")
        prune(cache, "image-", image)
        prune(cache, "debootstrap-", base)
    return image / "rootfs"


def main(argv: list[str]) -> int:
    # a stop (timeout, make interrupted) removes the temporary build directory
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    parser = argparse.ArgumentParser(prog="build.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("definition", type=Path)
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("ICF_CONTAINER_CACHE") or DEFAULT_CACHE))
    parser.add_argument("--bind", action="append", default=[], metavar="SPEC",
                        help="a bind for %%post only, as apptainer build --bind: SRC[:DST[:ro|rw]]")
    parser.add_argument("--context", type=Path, default=Path("."),
                        help="the directory %%files sources are relative to (default: the current one)")
    args = parser.parse_args(argv)
    build_args = {}
    for item in args.build_arg:
        name, equals, value = item.partition("=")
        if not equals or not name:
            parser.error(f"--build-arg {item}: NAME=VALUE")
        build_args[name] = value
    try:
        image = build(args.definition.resolve(), build_args, args.cache_dir.resolve(), args.context.resolve(),
                      args.bind)
    except (BuildError, deffile.DefinitionError) as error:
        say(f"error: {error}")
        return 1
    print(image)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
