"""Golden archives (issue 10, requirement 6): step 1's TARs for the names
that stress the TAR format, pinned byte for byte and checked against GNU tar.

Three small input trees, built here from literal names (no network, nothing
outside this checkout):

- ``non-ascii``: umlauts, CJK, Hangul, emoji and ZWJ sequences, combining
  marks, right-to-left script, a literal U+FFFD, and NFC/NFD spellings of one
  name as two different files.
- ``long-names``: names of 100 to 255 bytes at the ustar field limits: member
  paths of exactly 100, 101 and 255 bytes, components of 100, 101, 200 and
  255 bytes (the file-system limit), a prefix of exactly 155 and of 156
  bytes, and multi-byte UTF-8 characters straddling byte 100.
- ``long-paths``: member paths over 255 bytes: 256 bytes that still fit
  ustar's prefix/name split, 257 that do not, deep directories, and a
  255-byte CJK component at the end of a ~1500-byte path.

Each tree holds real scanner DICOMs (copied from the sample visit) and
non-DICOM files, so member mtimes come from real DICOM headers.

What is pinned, and why:

1. The md5 of step 1's archive of each tree (``GOLDEN_MD5``): a changed byte
   breaks reproducibility for existing stores, so it must fail a test. The
   same md5 must come out under another umask, time zone and locale, with
   other file modes, mtimes and creation order.
2. Each archive, read back member by member, against GNU tar's archive of
   the same input (``tar --format=pax --sort=name --owner=0 --group=0
   --numeric-owner --mtime=@T``): name, size, mode, mtime and content of
   every regular-file member, in the same order; read by Python's tarfile and
   by GNU tar itself (``tar -tv`` and ``tar -xO``). Not byte for byte: for a
   non-ASCII path both write the real name in a pax ``path`` record but a
   different fallback in the ustar name field, and GNU tar adds directory
   members (ours has none), so only regular-file members are compared.

3. The same bytes under a locale whose charset is not UTF-8, with Python's
   UTF-8 mode off (an ISO-8859-1 locale once gave double-encoded names, an
   ASCII locale refused valid UTF-8 names: step 1 now reads names as bytes).
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import os
import shutil
import subprocess
import tarfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
from conftest import SAMPLE_DICOMS, run_tool

STUDY, VISIT = "study", "visit"
TOP = f"{STUDY}_{VISIT}"
#: StudyDate/StudyTime of every sample DICOM (no TimezoneOffsetFromUTC), so
#: the mtime of every member of these archives: DICOMs get it from their
#: header, non-DICOM files get the latest DICOM timestamp, which is this one.
STUDY_TIME = calendar.timegm((2014, 4, 25, 15, 53, 35))

#: A tree: member path below ``TOP/`` -> a sample DICOM to copy, or content.
Tree = dict[str, Path | bytes]


# -- the input trees -------------------------------------------------------------


def sized(head: str, length: int, tail: str = "") -> str:
    """``head``, ``x`` padding, ``tail``: exactly ``length`` bytes of UTF-8."""
    pad = length - len(head.encode()) - len(tail.encode())
    assert pad >= 0, (head, length, tail)
    return head + "x" * pad + tail


def text(name: str, size: int | None = None) -> bytes:
    """Non-DICOM content derived from ``name``; ``size`` bytes if given."""
    line = f"not DICOM: {name}\n".encode()
    return line * 3 if size is None else (line * (size // len(line) + 1))[:size]


def member_length(rel: str) -> int:
    return len(f"{TOP}/{rel}".encode())


def non_ascii_tree() -> Tree:
    cafe_nfc, cafe_nfd = "Caf\u00e9.txt", "Cafe\u0301.txt"
    hangul_nfc = "한국어.txt"
    hangul_nfd = unicodedata.normalize("NFD", hangul_nfc)
    assert len({cafe_nfc, cafe_nfd, hangul_nfc, hangul_nfd}) == 4  # four files, not two
    tree: Tree = {
        "Müller/Straße.dcm": SAMPLE_DICOMS[0],
        "Ärzte-Übersicht.txt": text("Ärzte"),
        "日本語/脳画像.dcm": SAMPLE_DICOMS[1],
        "🧠-scan.dcm": SAMPLE_DICOMS[2],
        "👨\u200d👩\u200d👧-family.txt": text("family"),
        cafe_nfc: text("NFC"),
        cafe_nfd: text("NFD, another file"),
        hangul_nfc: text("Hangul NFC"),
        hangul_nfd: text("Hangul NFD, another file"),
        "Ωμέγα/Привет/مرحبا.txt": text("scripts"),
        "e\u0301\u0302\u0303-stacked.txt": text("stacked combining marks"),
        "\ufffd-replacement.txt": text("a real U+FFFD, as in our ustar fallback"),
        "nbsp\u00a0name.txt": text("no-break space"),
        "a/ä/ą.txt": text("sorting"),
        "leer-ä.txt": b"",
        "block-ö.txt": text("one block", 512),
    }
    assert not any(rel.isascii() for rel in tree)
    return tree


def long_name_tree() -> Tree:
    d1, d2 = sized("d1-", 50), sized("d2-", 92)  # TOP/d1/d2 is a 155-byte ustar prefix
    tree: Tree = {
        sized("member100-", 88, ".dcm"): SAMPLE_DICOMS[3],  # fills the name field, no NUL
        sized("member101-", 89, ".txt"): text("member101"),  # prefix TOP, name 89
        f"{d1}/{d2}/" + sized("member255-", 99, ".dcm"): SAMPLE_DICOMS[4],  # prefix 155 + name 99
        sized("member255-unsplittable-", 243, ".txt"): text("pax"),
        sized("component100-", 100, ".dcm"): SAMPLE_DICOMS[5],  # name field full
        sized("component101-", 101, ".txt"): text("component101"),
        sized("component200-", 200, ".txt"): text("component200"),
        sized("component255-", 255, ".dcm"): SAMPLE_DICOMS[6],  # the file-system limit
        sized("prefix155-", 143) + "/a.dcm": SAMPLE_DICOMS[7],  # prefix exactly 155
        sized("prefix156-", 144) + "/b.txt": text("prefix156"),  # one byte too many
        # multi-byte characters over bytes 99|100 of the member path
        sized("straddle-2-", 87) + "ä.txt": text("2 bytes"),
        sized("straddle-3-", 86) + "€€.txt": text("3 bytes"),
        sized("straddle-4-", 85) + "🧠.dcm": SAMPLE_DICOMS[8],
        sized("straddle-155-", 142) + "é/c.txt": text("over the prefix limit"),
    }
    lengths = {rel: (member_length(rel), max(len(c.encode()) for c in rel.split("/"))) for rel in tree}
    assert all(100 <= n <= 255 or 100 <= c <= 255 for n, c in lengths.values()), lengths
    assert {100, 101, 255} <= {n for n, _ in lengths.values()}
    assert {100, 101, 200, 255} <= {c for _, c in lengths.values()}
    return tree


def long_path_tree() -> Tree:
    d1, d2 = sized("p1-", 50), sized("p2-", 92)  # TOP/d1/d2 is a 155-byte ustar prefix
    levels = "/".join(f"level-{i:02d}" for i in range(40))
    umlaut_levels = "/".join(f"Ebene-{i:02d}-ü" for i in range(40))
    wide = "/".join(sized(f"wide-{i}-", 250) for i in range(5))
    tree: Tree = {
        f"{d1}/{d2}/" + sized("name100-", 100): SAMPLE_DICOMS[9],  # 256 bytes, fits ustar
        f"{d1}/{d2}/" + sized("name101-", 101): text("257 bytes, pax"),
        f"{levels}/deep.dcm": SAMPLE_DICOMS[10],
        f"{levels}.txt": text("beside the directory of the same stem"),
        f"{umlaut_levels}/tief.txt": text("deep, not ASCII"),
        f"{wide}/" + sized("component255-", 255, ".dcm"): SAMPLE_DICOMS[11],
        f"{wide}/" + "語" * 85: text("255 bytes of CJK"),
    }
    lengths = sorted(member_length(rel) for rel in tree)
    assert lengths[0] == 256 and lengths[1] == 257 and lengths[-1] > 1500, lengths
    return tree


@dataclass(frozen=True)
class Case:
    build: Callable[[], Tree]
    md5: str


#: Step 1's archive of each tree, as made by every machine.
CASES = {
    "non-ascii": Case(non_ascii_tree, "21a75093c0edb8da46ea9432a49ea7e1"),
    "long-names": Case(long_name_tree, "486f0841db91c3f54ee5f0e841c03e82"),
    "long-paths": Case(long_path_tree, "1f61a99f9b5c9df34d109e5187a68dfb"),
}


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def write_tree(top: Path, tree: Tree, *, reverse: bool = False, file_mode: int = 0o644,
               dir_mode: int = 0o755, mtime: int = 1_000_000_000) -> Path:
    """Create ``tree`` at ``top`` (in reverse order if ``reverse``), with
    these modes and file mtimes; returns ``top``."""
    for rel in reversed(list(tree)) if reverse else tree:
        path = top / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        source = tree[rel]
        path.write_bytes(source.read_bytes() if isinstance(source, Path) else source)
        os.chmod(path, file_mode)
        os.utime(path, (mtime, mtime))
    for directory in [top, *(p for p in top.rglob("*") if p.is_dir())]:
        os.chmod(directory, dir_mode)
    return top


# -- making and reading archives -------------------------------------------------------


def make_ours(store: Path, input_dir: Path, env: dict | None = None) -> Path:
    """Step 1's archive of ``input_dir``, made by the real script."""
    result = run_tool("make_studyvisit_archive", "-o", store, "--id", STUDY, VISIT, input_dir, env=env)
    assert result.returncode == 0, result.stderr
    return store / STUDY / f"{VISIT}_dicom.tar"


#: GNU tar's locale: the names on disk are UTF-8, and GNU tar converts them
#: from the locale's charset for pax records. TZ for ``tar -tv``'s times.
GNU_TAR_ENV = {"LC_ALL": "C.UTF-8", "TZ": "UTC"}


def gnu_tar(*args) -> bytes:
    """Run GNU tar; its stdout, after checking it succeeded without a word."""
    result = subprocess.run(["tar", *map(str, args)], env=dict(os.environ, **GNU_TAR_ENV),
                            capture_output=True)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    return result.stdout


def make_gnu(out: Path, input_dir: Path) -> Path:
    """GNU tar's archive of ``input_dir`` (whose name is ``TOP``).

    ``--mtime`` sets one mtime for every member. That is sound here because
    every member of ours has the same one, STUDY_TIME (all DICOMs are from
    one study; the other files get the latest DICOM time), which the
    comparison then checks per member. Modes need no option: the input's
    files are 0644 (write_tree), as step 1 writes every member.
    """
    assert input_dir.name == TOP
    assert b"GNU tar" in gnu_tar("--version"), "these tests compare with GNU tar"
    gnu_tar("--format=pax", "--sort=name", "--owner=0", "--group=0", "--numeric-owner",
            f"--mtime=@{STUDY_TIME}", "-cf", out, "-C", input_dir.parent, TOP)
    return out


class Member(NamedTuple):
    name: str
    size: int
    mode: int
    mtime: int
    content: bytes


def regular_members(tar_path: Path) -> list[Member]:
    """The regular-file members of a TAR as Python's tarfile reads them (GNU
    tar's directory members are left out: ours has none)."""
    with tarfile.open(tar_path) as tar:
        return [Member(m.name, m.size, m.mode, m.mtime, tar.extractfile(m).read())
                for m in tar.getmembers() if m.isreg()]


def gnu_listing(tar_path: Path) -> list[bytes]:
    """``tar -tv``'s lines for the regular-file members (mode, owner, size,
    mtime, name)."""
    lines = gnu_tar("--list", "--verbose", "--full-time", "--numeric-owner", "-f", tar_path).splitlines()
    return [line for line in lines if line.startswith(b"-")]


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Golden:
    case: str
    tree: Tree
    ours: Path
    gnu: Path


@pytest.fixture(scope="module", params=list(CASES))
def golden(request, tmp_path_factory) -> Golden:
    """One case's tree, step 1's archive of it and GNU tar's."""
    case = request.param
    root = tmp_path_factory.mktemp(case)
    tree = CASES[case].build()
    input_dir = write_tree(root / "src" / TOP, tree)
    return Golden(case, tree, make_ours(root / "store", input_dir), make_gnu(root / "gnu.tar", input_dir))


# -- 1: pinned bytes -------------------------------------------------------------------


def test_archive_md5_is_pinned(golden):
    digest = md5_of(golden.ours)
    assert digest == CASES[golden.case].md5
    md5sum = golden.ours.with_name(golden.ours.name + ".md5sum")
    assert md5sum.read_text() == f"{digest}  {golden.ours.name}\n"


def test_same_bytes_whatever_umask_tz_locale_modes_mtimes_and_order(golden, tmp_path):
    # the C locale as Python runs in it by default (coerced to UTF-8); see
    # the last test for locales that are not UTF-8
    env = {"TZ": "Pacific/Kiritimati", "LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": "latin-1"}
    with umask(0o077):
        input_dir = write_tree(tmp_path / "src" / TOP, golden.tree, reverse=True, file_mode=0o600,
                               dir_mode=0o700, mtime=2_000_000_000)
        ours = make_ours(tmp_path / "store", input_dir, env)
    assert md5_of(ours) == CASES[golden.case].md5


# -- 2: member by member against GNU tar ---------------------------------------------


def test_members_as_tarfile_reads_them_match_gnu_tar(golden):
    ours, theirs = regular_members(golden.ours), regular_members(golden.gnu)
    expected = sorted(f"{TOP}/{rel}" for rel in golden.tree)
    assert sorted(m.name for m in ours) == expected  # every file, none merged or renamed
    assert [m.name for m in ours] == [m.name for m in theirs]  # GNU tar's --sort=name order
    for mine, gnu in zip(ours, theirs, strict=True):
        assert mine == gnu, mine.name
        assert (mine.mode, mine.mtime) == (0o644, STUDY_TIME), mine.name  # what --mtime assumed
        source = golden.tree[mine.name.split("/", 1)[1]]
        assert mine.content == (source.read_bytes() if isinstance(source, Path) else source), mine.name


def test_gnu_tar_reads_ours_as_it_reads_its_own(golden):
    ours = gnu_listing(golden.ours)
    assert len(ours) == len(golden.tree)
    assert ours == gnu_listing(golden.gnu)
    assert gnu_tar("-xOf", golden.ours) == gnu_tar("-xOf", golden.gnu)  # contents, in order


# -- 3: file names do not follow the locale ---------------------------------------------


def latin1_locale(directory: Path) -> dict:
    """Environment for an ISO-8859-1 locale compiled into ``directory``
    (LOCPATH, nothing installed), or skip if localedef cannot make one."""
    if shutil.which("localedef") is None:
        pytest.skip("no localedef")
    result = subprocess.run(["localedef", "-i", "de_DE", "-f", "ISO-8859-1", directory / "de_DE.ISO-8859-1"],
                            capture_output=True)
    if not (directory / "de_DE.ISO-8859-1").is_dir():
        pytest.skip(f"localedef cannot make de_DE.ISO-8859-1: {result.stderr[-200:]!r}")
    return {"LOCPATH": str(directory), "LC_ALL": "de_DE.ISO-8859-1", "LANG": "de_DE.ISO-8859-1"}


@pytest.mark.parametrize("charset", ["ISO-8859-1", "ASCII"])
def test_same_bytes_under_a_locale_that_is_not_utf8(tmp_path, charset):
    if charset == "ISO-8859-1":
        env = latin1_locale(tmp_path)
    else:  # the C locale without Python's coercion to C.UTF-8 and UTF-8 mode
        env = {"LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    input_dir = write_tree(tmp_path / "src" / TOP, non_ascii_tree())
    assert md5_of(make_ours(tmp_path / "store", input_dir, env)) == CASES["non-ascii"].md5
