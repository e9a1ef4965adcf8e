#!/usr/bin/env python3
"""icf-run: ``singularity run`` for an image that is a root file system directory.

    icf-run run  [-B|--bind SPEC]... IMAGE [ARGS...]     the image's runscript
    icf-run exec [-B|--bind SPEC]... IMAGE COMMAND [ARGS...]
    icf-run test [-B|--bind SPEC]... IMAGE               the image's %test

IMAGE is a directory that ``build.py`` made from a definition file (with the
``/.singularity.d`` layout Apptainer writes); SPEC is Singularity's:
``SRC[:DST[:ro|rw]]``, several separated by commas. The SLURM array script
uses it as its container runtime (``ICF_SINGULARITY=tests/container/icf-run``,
``ICF_IMAGE=<the image directory>``), where a cluster has ``singularity``.

What the command sees is what a cluster user's ``apptainer run --contain``
gives it: the image read-only (an overlay on a tmpfs holds the mount points
of the binds, as Apptainer's overlay does), the host's /proc, /sys, /dev,
/etc/hosts and /etc/resolv.conf, an empty tmpfs on /tmp and /var/tmp, the
binds, the host's environment except PATH (the image's default) and HOME
(the user's home in the image's /etc/passwd, not mounted: there is no HOME),
``APPTAINERENV_NAME=value`` setting NAME, then the image's environment
scripts; the working directory is kept if a bind holds it, else it is
``/``. It runs as the unprivileged user ICF_RUN_UID
(default 65534, nobody) with group ICF_RUN_GID (default: that user's), no
supplementary groups and no capabilities; an uid the image's /etc/passwd
lacks gets an entry, as Apptainer adds one. ``ICF_RUN_UID=0`` keeps root.

It must itself be started as root (it mounts in a private mount namespace,
as a setuid Apptainer does); nothing it mounts is visible outside that
namespace, and nothing is left when the command ends. It execs the command
in its own process: exit status and signals are the command's. Options for
the image build only: ``--writable`` (the image itself, read-write, no
overlay; bind destinations must exist), ``--cleanenv`` (of the host's
environment only LANG and TERM) and ``--pwd DIR``. Its own errors exit 255.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ACTIONS = {"run": "/.singularity.d/actions/run", "exec": "/.singularity.d/actions/exec",
           "test": "/.singularity.d/actions/test"}
NOBODY = 65534
# what a host variable may not carry into the container (Apptainer resets these)
DROPPED_ENV = ("PATH", "HOME", "LD_LIBRARY_PATH", "PS1", "USER", "LOGNAME")
CLEANENV_KEPT = ("LANG", "TERM")

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18


class RunError(Exception):
    """The container cannot be started: one line for the user, exit 255."""


@dataclass(frozen=True)
class Bind:
    """One bind: a host path, where it appears in the container, read-only or not."""

    source: str
    destination: str
    read_only: bool


@dataclass(frozen=True)
class Request:
    """A parsed command line."""

    action: str
    image: Path
    args: list[str]
    binds: list[Bind]
    bind_spec: str
    writable: bool = False
    cleanenv: bool = False
    pwd: str | None = None


USAGE = "usage: icf-run {run,exec,test} [-B|--bind SRC[:DST[:ro|rw]][,...]]... [--writable] [--cleanenv] " \
        "[--pwd DIR] IMAGE [ARGS...]"


def parse_binds(spec: str) -> list[Bind]:
    """Singularity's bind list: ``SRC[:DST[:ro|rw]]``, comma-separated."""
    binds = []
    for item in spec.split(","):
        parts = item.split(":")
        if not parts[0] or len(parts) > 3:
            raise RunError(f"bad bind '{item}': SRC[:DST[:ro|rw]]")
        source = parts[0]
        destination = parts[1] if len(parts) > 1 and parts[1] else source
        option = parts[2] if len(parts) == 3 else "rw"
        if option not in ("ro", "rw"):
            raise RunError(f"bad bind option '{option}' in '{item}' (ro or rw)")
        if not os.path.isabs(destination) or os.path.normpath(destination) in ("/", "//"):
            raise RunError(f"bind destination must be an absolute path other than /: '{destination}'")
        real = os.path.realpath(source)
        if not os.path.exists(real):
            raise RunError(f"bind source does not exist: '{source}'")
        binds.append(Bind(real, os.path.normpath(destination), option == "ro"))
    return binds


def parse_args(argv: list[str]) -> Request:
    """The command line: action, options (up to IMAGE), IMAGE, then the command's arguments."""
    if not argv or argv[0] in ("-h", "--help"):
        raise RunError(USAGE)
    action, rest = argv[0], argv[1:]
    if action not in ACTIONS:
        raise RunError(f"unknown command '{action}'\n{USAGE}")
    binds: list[Bind] = []
    specs: list[str] = []
    writable = cleanenv = False
    pwd_dir = None
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        name, equals, value = option.partition("=")
        if name in ("-B", "--bind", "--pwd") and not equals:
            if not rest:
                raise RunError(f"{name} needs a value")
            value = rest.pop(0)
        if name in ("-B", "--bind"):
            binds += parse_binds(value)
            specs.append(value)
        elif name == "--pwd":
            pwd_dir = value
        elif option == "--writable":
            writable = True
        elif option == "--cleanenv":
            cleanenv = True
        else:
            raise RunError(f"unknown option '{option}'\n{USAGE}")
    if not rest:
        raise RunError(USAGE)
    image = Path(os.path.realpath(rest[0]))
    args = rest[1:]
    if action == "exec" and not args:
        raise RunError("exec needs a command")
    if not (image / ACTIONS[action].lstrip("/")).is_file():
        raise RunError(f"not an image directory (no {ACTIONS[action]}): {rest[0]}")
    if any(char in str(image) for char in ",:\\"):
        raise RunError(f"the image's path cannot hold ',', ':' or '\\' (overlay options): {image}")
    return Request(action, image, args, binds, ",".join(specs), writable, cleanenv, pwd_dir)


# --- mounting ---------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def mount(source: str | None, target: str | Path, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2), raising a one-line error."""
    def encode(value: str | Path | None) -> bytes | None:
        return None if value is None else os.fsencode(value)
    if _libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        error = ctypes.get_errno()
        raise RunError(f"cannot mount {source or fstype or ''} on {target}: {os.strerror(error)}")


def private_namespace() -> None:
    """Move this process into a new mount namespace that shares nothing with the host's."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        error = ctypes.get_errno()
        raise RunError(f"cannot make a private mount namespace ({os.strerror(error)}): icf-run must run as root")
    mount(None, "/", flags=MS_REC | MS_PRIVATE)


def inside(root: Path, path: str, *, file: bool = False, create: bool = True) -> Path:
    """``path`` (absolute, in the container) under ``root``, made if missing and
    ``create`` (a file if ``file``); refusing a symlink on the way, which would
    lead out of the image on the host."""
    current = root
    parts = [part for part in path.split("/") if part]
    for index, part in enumerate(parts):
        current = current / part
        last = index == len(parts) - 1
        shown = "/" + "/".join(parts[:index + 1])
        if current.is_symlink():
            raise RunError(f"bind destination {path} passes through a symlink in the image: {shown}")
        if not current.exists():
            if not create:
                raise RunError(f"bind destination {path} does not exist in the image (--writable makes none)")
            if last and file:
                current.touch(mode=0o644)
            else:
                current.mkdir(mode=0o755)
        elif not last and not current.is_dir():
            raise RunError(f"bind destination {path}: {shown} is not a directory in the image")
    return current


@dataclass(frozen=True)
class User:
    """Who the command runs as, and their home."""

    uid: int
    gid: int
    name: str
    home: str


def container_user(image: Path) -> tuple[User, str | None]:
    """The user from ICF_RUN_UID/ICF_RUN_GID and the image's /etc/passwd; and
    an /etc/passwd line to add if the image has no entry for the uid."""
    try:
        uid = int(os.environ.get("ICF_RUN_UID", str(NOBODY)))
        gid_given = os.environ.get("ICF_RUN_GID")
        gid = int(gid_given) if gid_given else None
    except ValueError as error:
        raise RunError(f"ICF_RUN_UID and ICF_RUN_GID must be numbers: {error}") from None
    passwd = image / "etc" / "passwd"
    for line in passwd.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[2] == str(uid):
            return User(uid, gid if gid is not None else int(fields[3]), fields[0], fields[5]), None
    gid = uid if gid is None else gid
    user = User(uid, gid, f"icf-user{uid}", "/nonexistent")
    return user, f"{user.name}:x:{uid}:{gid}:icf-run user:{user.home}:/bin/sh\n"


def environment(request: Request, user: User) -> dict[str, str]:
    """The command's environment before the image's scripts run."""
    if request.cleanenv:
        env = {name: os.environ[name] for name in CLEANENV_KEPT if name in os.environ}
    else:
        env = {name: value for name, value in os.environ.items()
               if name not in DROPPED_ENV and not name.startswith(("APPTAINER", "SINGULARITY"))
               and not name.startswith("ICF_RUN_")}
    env.update(PATH=DEFAULT_PATH, HOME=user.home, USER=user.name, LOGNAME=user.name)
    # Apptainer's way to set a variable in the container, --cleanenv or not
    for name, value in os.environ.items():
        for prefix in ("SINGULARITYENV_", "APPTAINERENV_"):
            if name.startswith(prefix) and name[len(prefix):]:
                env[name[len(prefix):]] = value
    for prefix in ("APPTAINER", "SINGULARITY"):
        env.update({f"{prefix}_CONTAINER": str(request.image), f"{prefix}_NAME": request.image.name,
                    f"{prefix}_COMMAND": request.action,
                    f"{prefix}_ENVIRONMENT": "/.singularity.d/env/91-environment.sh"})
        if request.bind_spec:
            env[f"{prefix}_BIND"] = request.bind_spec
    return env


def working_directory(request: Request) -> str:
    """--pwd, else the host's working directory if a bind shows it, else /."""
    if request.pwd:
        return request.pwd
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:
        return "/"
    for bind in request.binds:
        if cwd == bind.source or cwd.startswith(bind.source.rstrip("/") + "/"):
            return bind.destination + cwd[len(bind.source):]
    return "/"


def enter(request: Request) -> tuple[Path, User, str]:
    """Build the container's mounts in a private namespace; its root, user and working directory."""
    user, passwd_line = container_user(request.image)
    cwd = working_directory(request)
    private_namespace()
    if request.writable:
        root = request.image
    else:
        session = request.image / "mnt"
        if session.is_symlink() or not session.is_dir():
            raise RunError(f"the image has no /mnt directory for the session: {request.image}")
        mount("icf-run", session, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        for name in ("upper", "work", "root"):
            (session / name).mkdir()
        root = session / "root"
        mount("overlay", root, "overlay", 0,
              f"lowerdir={request.image},upperdir={session / 'upper'},workdir={session / 'work'}")
        if passwd_line:
            passwd = session / "passwd"
            passwd.write_text((request.image / "etc" / "passwd").read_text(encoding="utf-8") + passwd_line,
                              encoding="utf-8")
            mount(str(passwd), root / "etc" / "passwd", flags=MS_BIND)
    for system in ("/proc", "/sys", "/dev"):
        mount(system, inside(root, system, create=not request.writable), flags=MS_BIND | MS_REC)
    for scratch in ("/tmp", "/var/tmp"):
        mount("tmpfs", inside(root, scratch, create=not request.writable), "tmpfs",
              MS_NOSUID | MS_NODEV, "mode=1777")
    for host_file in ("/etc/hosts", "/etc/resolv.conf"):
        if os.path.isfile(host_file):
            mount(host_file, inside(root, host_file, file=True, create=not request.writable), flags=MS_BIND)
    targets = [inside(root, bind.destination, file=not os.path.isdir(bind.source), create=not request.writable)
               for bind in request.binds]
    if not request.writable:
        mount(None, root, flags=MS_REMOUNT | MS_BIND | MS_RDONLY)
    for bind, target in zip(request.binds, targets, strict=True):
        mount(bind.source, target, flags=MS_BIND | MS_REC)
        if bind.read_only:
            mount(None, target, flags=MS_REMOUNT | MS_BIND | MS_RDONLY)
    return root, user, cwd


def main(argv: list[str]) -> int:
    try:
        request = parse_args(argv)
        if os.geteuid() != 0:
            raise RunError("must run as root (it mounts the image in a private mount namespace)")
        root, user, cwd = enter(request)
        env = environment(request, user)
        os.chroot(root)
        try:
            os.chdir(cwd)
        except OSError:
            os.chdir("/")
        if user.uid != 0:
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
        action = ACTIONS[request.action]
        os.execve(action, [action, *request.args], env)
    except RunError as error:
        print(f"icf-run: {error}", file=sys.stderr)
        return 255
    except OSError as error:
        print(f"icf-run: {error.strerror}: {error.filename or ''}", file=sys.stderr)
        return 255
    return 255  # not reached: execve replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
