"""Reading hostile TARs (issue 9, requirement 5): whatever the bytes, steps
2 and 3 and verify_visit end in bounded time and memory with a result or one
IcfError line naming the archive, never a traceback or a hang.

Hand-crafted malformed archives cover each way a TAR can lie; a seeded fuzz
run covers the combinations nobody thought of.
"""

from __future__ import annotations

import io
import random
import shutil
import signal
import sys
import tarfile
import time
import traceback
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE_DICOMS, run_tool
from measure import measure

from icf import IcfError
from icf.archive import make_archive
from icf.metadata import deposit_metadata
from icf.store import Visit
from icf.tarball import BLOCK, RECORD, _pax_record, _ustar_header, latest_member_mtime, member_headers

STUDY, VISIT = "study", "visit"
TOP = f"{STUDY}_{VISIT}"
INVALID, CORRUPTED = "not a valid archive", "archive corrupted"


# -- crafting TARs -------------------------------------------------------------------


def with_checksum(header: bytes) -> bytes:
    """``header`` with its checksum field recomputed, as a forger would."""
    blank = header[:148] + b" " * 8 + header[156:]
    return blank[:148] + b"%06o\0 " % sum(blank) + blank[156:]


def field(header: bytes, start: int, value: bytes) -> bytes:
    """``header`` with ``value`` written at ``start`` and a valid checksum."""
    return with_checksum(header[:start] + value + header[start + len(value):])


def tar_of(*blocks: bytes) -> bytes:
    """``blocks`` closed and padded as step 1 closes an archive."""
    data = b"".join(blocks) + bytes(2 * BLOCK)
    return data + bytes(-len(data) % RECORD)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def regular(path: str = f"{TOP}/a.dcm", content: bytes = b"hello") -> list[bytes]:
    return [*member_headers(path, len(content), 1_400_000_000), padded(content)]


def pax_header(payload: bytes, size: int | None = None) -> list[bytes]:
    """A pax ``x`` header holding ``payload``, declaring ``size`` bytes (in
    GNU base-256) if given."""
    header = _ustar_header(b"", b"././@PaxHeader", len(payload), 0, b"x")
    if size is not None:
        header = field(header, 124, b"\x80" + size.to_bytes(11, "big"))
    return [header, padded(payload)]


def pax_then_member(payload: bytes, size: int | None = None) -> bytes:
    return tar_of(*pax_header(payload, size), *regular())


def gnu_long_name_then_member(name: bytes) -> bytes:
    """A GNU ``L`` header holding ``name`` (NUL-terminated), then a regular member."""
    return tar_of(_ustar_header(b"", b"././@LongLink", len(name) + 1, 0, b"L"), padded(name + b"\0"),
                  *regular())


def with_header(start: int, value: bytes) -> bytes:
    first, content = regular()
    return tar_of(field(first, start, value), content)


GOOD = tar_of(*regular(), *regular(f"{TOP}/b.dcm", b"world"))
SIZE, MTIME, NAME = 124, 136, 0

#: name: (archive bytes, the kind of error, words the message must hold)
CASES = {
    "size-not-a-number": (with_header(SIZE, b"12x45\0"), CORRUPTED, "size"),
    "size-negative-octal": (with_header(SIZE, b"-0000005\0"), CORRUPTED, "size"),
    "size-base256-negative": (with_header(SIZE, b"\xff" * 12), CORRUPTED, "negative size"),
    "mtime-not-a-number": (with_header(MTIME, b"0o17\0"), CORRUPTED, "mtime"),
    "mtime-base256-negative": (with_header(MTIME, b"\xff" * 12), CORRUPTED, "negative mtime"),
    "mtime-base256-huge": (with_header(MTIME, b"\x80" + b"\xff" * 11), INVALID, "after 2242"),
    "pax-header-8GiB": (pax_then_member(b"", size=8 << 30), INVALID, "8589934592 bytes"),
    "pax-record-length-0": (pax_then_member(b"0 path=x\n"), CORRUPTED, "pax record"),
    "pax-record-length-not-a-number": (pax_then_member(b"1x path=x\n"), CORRUPTED, "pax record"),
    "pax-record-length-beyond-data": (pax_then_member(b"99 path=x\n"), CORRUPTED, "pax record"),
    "pax-record-length-too-short": (pax_then_member(b"3 path=x\n"), CORRUPTED, "pax record"),
    "pax-record-without-equals": (pax_then_member(b"11 pathxyz\n"), CORRUPTED, "without '='"),
    "pax-size-not-a-number": (pax_then_member(_pax_record("size", b"5k")), CORRUPTED, "size record"),
    "pax-size-negative": (pax_then_member(_pax_record("size", b"-5")), CORRUPTED, "size record"),
    "pax-path-not-utf8": (pax_then_member(_pax_record("path", f"{TOP}/\xe9.dcm".encode("latin-1"))),
                          INVALID, "not valid UTF-8"),
    "pax-path-with-nul": (pax_then_member(_pax_record("path", f"{TOP}/a\0.dcm".encode())), INVALID, "NUL"),
    "ustar-name-not-utf8": (with_header(NAME, f"{TOP}/\xff".encode("latin-1") + b"\0"), INVALID, "UTF-8"),
    "gnu-longname-not-utf8": (gnu_long_name_then_member(f"{TOP}/\xff\xfe.dcm".encode("latin-1")),
                              INVALID, "UTF-8"),
    "pax-header-without-member": (tar_of(*pax_header(_pax_record("path", f"{TOP}/x".encode()))),
                                  CORRUPTED, "not followed by a member"),
    "header-checksum-mismatch": (GOOD[:2 * BLOCK + 7] + b"\x01" + GOOD[2 * BLOCK + 8:],
                                 CORRUPTED, "checksum mismatch at byte 1024"),
    "data-after-the-end": (GOOD + b"appended", CORRUPTED, "data after the end"),
    "archive-after-the-end": (GOOD + GOOD, CORRUPTED, "data after the end"),
    "truncated-in-a-header": (GOOD[:2 * BLOCK + 100], CORRUPTED, "truncated at byte 1124"),
    "truncated-in-a-member": (GOOD[:BLOCK + 3], CORRUPTED, "truncated"),
    "truncated-in-the-pax-header": (pax_then_member(b"x" * 600)[:BLOCK + 100], CORRUPTED, "truncated"),
    "truncated-in-the-end-marker": (GOOD[:5 * BLOCK + 100], CORRUPTED, "end-of-archive marker"),
    "ends-inside-a-block": (GOOD[:-10], CORRUPTED, "ends inside a block"),
    "hard-link": (with_header(156, b"1"), INVALID, "member of type '1'"),
    "global-pax-header": (with_header(156, b"g"), INVALID, "member of type 'g'"),
    "sparse-member": (pax_then_member(_pax_record("GNU.sparse.major", b"1")), INVALID, "sparse"),
    "not-a-tar": (b"%PDF-1.4 not a tar" * 100, INVALID, "not a TAR"),
    "empty": (b"", INVALID, "empty file"),
}


def place(store: Path, data: bytes) -> Visit:
    visit = Visit(store, STUDY, VISIT)
    visit.study_dir.mkdir(parents=True, exist_ok=True)
    visit.tarball.write_bytes(data)
    return visit


# -- in-process: every case, both readers ---------------------------------------------


def test_the_crafted_good_archive_is_read(store):
    """The base of the crafted cases is fine, so each case fails for its one lie."""
    with tarfile.open(fileobj=io.BytesIO(GOOD)) as tar:
        assert tar.getnames() == [f"{TOP}/a.dcm", f"{TOP}/b.dcm"]
    visit = place(store, GOOD)
    summary = deposit_metadata(visit)
    assert (summary.members, summary.record.size) == (2, len(GOOD))
    assert latest_member_mtime(visit.tarball) == 1_400_000_000


@pytest.mark.parametrize("case", CASES)
def test_malformed_archive_is_one_line_icf_error(store, case):
    """Step 2's one-pass reader and step 3's header scan refuse each lie
    alike, with one line naming the file and the kind of damage."""
    data, kind, words = CASES[case]
    visit = place(store, data)
    messages = []
    for read in (lambda: deposit_metadata(visit), lambda: latest_member_mtime(visit.tarball)):
        with pytest.raises(IcfError) as caught:
            read()
        messages.append(str(caught.value))
    for message in messages:
        assert message.startswith(f"{visit.tarball}: {kind}: ") and words in message, message
        assert "\n" not in message
    assert messages[0] == messages[1]  # one parser, one message
    assert not visit.metadata_tarball.exists() and not visit.metadata_dicoms.exists()


# -- through the real commands -----------------------------------------------------------


def one_error_line(result, prog: str) -> str:
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize("case", CASES)
def test_deposit_visit_metadata_refuses_cleanly(store, case):
    data, kind, words = CASES[case]
    visit = place(store, data)
    result = run_tool("deposit_visit_metadata", "-o", store, "--id", STUDY, VISIT, timeout=30)
    line = one_error_line(result, "deposit_visit_metadata")
    assert f"{visit.tarball}: {kind}: " in line and words in line, line
    assert sorted(p.name for p in visit.study_dir.iterdir()) == [visit.tarball.name]


@pytest.mark.parametrize("case", ["pax-record-length-0", "pax-header-8GiB", "size-base256-negative",
                                  "pax-path-not-utf8", "truncated-in-a-member", "data-after-the-end"])
def test_verify_visit_reports_the_damage_cleanly(store, case):
    """verify_visit on metadata from the good archive, the TAR then swapped."""
    visit = place(store, GOOD)
    deposit_metadata(visit)
    written = {p: p.read_bytes() for p in (visit.metadata_tarball, visit.metadata_dicoms)}
    data, kind, words = CASES[case]
    visit.tarball.write_bytes(data)
    result = run_tool("verify_visit", "-o", store, "--id", STUDY, VISIT, timeout=30)
    one_error_line(result, "verify_visit")
    assert any(f"{visit.tarball}: {kind}: " in line and words in line
               for line in result.stderr.splitlines()), result.stderr
    assert {p: p.read_bytes() for p in written} == written


def test_8_gib_pax_header_costs_no_memory(store):
    """Refused before its payload is read: here 256 MiB follow it (a hole
    in a sparse file), which reading it whole would hold in memory."""
    visit = place(store, b"")
    with open(visit.tarball, "wb") as tar:
        tar.write(pax_header(b"", size=8 << 30)[0])
        tar.seek(256 << 20, 1)
        tar.write(tar_of(*regular()))
    run = measure([sys.executable, REPO / "bin/deposit_visit_metadata", "-o", store, "--id", STUDY, VISIT])
    assert run.returncode == 1 and run.peak_rss_mb < 100, run


def test_huge_declared_member_is_not_read_past_the_file(store):
    """A member claiming 2**80 bytes: the header scan seeks no further than
    the end of the file, the one-pass reader reads no more than the file holds."""
    first, content = regular()
    visit = place(store, tar_of(field(first, SIZE, b"\x80" + (2**80).to_bytes(11, "big")), content))
    for read in (lambda: deposit_metadata(visit), lambda: latest_member_mtime(visit.tarball)):
        with pytest.raises(IcfError, match="archive corrupted: truncated at byte 10240, in member"):
            read()


def test_header_scan_seeks_over_contents(store):
    """Step 3's scan reads headers, not contents: a 1 GiB member (a hole in
    a sparse file) costs it a few blocks of reading."""
    visit = place(store, b"")
    size = 1 << 30
    with open(visit.tarball, "wb") as tar:
        tar.write(b"".join(member_headers(f"{TOP}/big.dcm", size, 1_500_000_000)))
        tar.seek(size, 1)
        tar.write(tar_of(*regular()))
    before = read_chars()
    assert latest_member_mtime(visit.tarball) == 1_500_000_000
    assert read_chars() - before < 64 * 1024


def read_chars() -> int:
    """Bytes this process has read with read(2) and the like so far."""
    return int(Path("/proc/self/io").read_text().split("rchar:")[1].split()[0])


# -- fuzzing ---------------------------------------------------------------------------------

SEED = 20240902
ROUNDS = 5000
GUARD_SECONDS = 10


class Hung(Exception):
    """Raised by the guard's timer: a read took longer than the bound."""


def _hung(signum, frame):
    raise Hung(f"no result within {GUARD_SECONDS} s")


def guarded(action):
    """``action()``'s result, its IcfError, or Hung after GUARD_SECONDS."""
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.setitimer(signal.ITIMER_REAL, GUARD_SECONDS)
    try:
        return action()
    except IcfError as exc:
        return exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def fuzz_archive(tmp_path_factory) -> tuple[bytes, bytes]:
    """A real step 1 archive and its .md5sum: three sample DICOMs, one of them under a
    non-ASCII name and one under a name too long for ustar (both get pax
    headers), and a small text file."""
    base = tmp_path_factory.mktemp("fuzz")
    src = base / "in"
    (src / "run1").mkdir(parents=True)
    shutil.copy(SAMPLE_DICOMS[0], src / "run1" / "MR.1")
    shutil.copy(SAMPLE_DICOMS[1], src / "run1" / "Ünïcødé-脳.dcm")
    shutil.copy(SAMPLE_DICOMS[2], src / "run1" / ("long-name-" * 12 + ".dcm"))
    (src / "notes.txt").write_text("scanner notes\n")
    visit = Visit(base / "store", STUDY, VISIT)
    make_archive(visit, src)
    with tarfile.open(visit.tarball) as tar:
        assert any(m.pax_headers for m in tar.getmembers())
    return visit.tarball.read_bytes(), visit.md5sum.read_bytes()


def header_ranges(data: bytes) -> list[tuple[int, int, bool]]:
    """(start, end, checksummed) of every header block (ustar headers and pax
    payloads) of a good archive."""
    ranges = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            for start in range(member.offset, member.offset_data, BLOCK):
                block = data[start:start + BLOCK]
                ranges.append((start, start + BLOCK, block[257:263] == b"ustar\0"))
    return ranges


def mutate(data: bytes, rng: random.Random, headers: list[tuple[int, int, bool]]) -> tuple[bytes, str]:
    """A damaged copy of ``data`` and what was done, to reproduce it:
    1-8 bytes set to random values, mostly in header blocks (half of the
    time with the checksum then made right, to get past it), or a
    truncation at a random length."""
    if rng.random() < 0.25:
        length = rng.randrange(len(data))
        return data[:length], f"truncated to {length} bytes"
    mutated = bytearray(data)
    changes = []
    forged = set()
    for _ in range(rng.randint(1, 8)):
        if rng.random() < 0.8:
            start, end, checksummed = rng.choice(headers)
            offset = rng.randrange(start, end)
            if checksummed and rng.random() < 0.5:
                forged.add(start)
        else:
            offset = rng.randrange(len(data))
        value = rng.randrange(256)
        mutated[offset] = value
        changes.append(f"{offset}={value}")
    for start in forged:
        mutated[start:start + BLOCK] = with_checksum(bytes(mutated[start:start + BLOCK]))
    fixed = f", checksums at {sorted(forged)} made right" if forged else ""
    return bytes(mutated), f"bytes set {', '.join(changes)}{fixed}"


@pytest.mark.slow
def test_fuzzed_archives_end_in_a_result_or_icf_error(tmp_path, fuzz_archive):
    """ROUNDS seeded mutations of a real archive, each read by step 2
    (in-process, as deposit_visit_metadata runs it) and by the header scan
    under a hard time guard: each ends in a result or an IcfError."""
    good, md5sum = fuzz_archive
    visit = place(tmp_path / "store", good)
    visit.md5sum.write_bytes(md5sum)  # checked after the whole pass, so it cuts nothing short
    rng = random.Random(SEED)
    headers = header_ranges(good)
    outcomes = {"result": 0, "refused": 0}
    started = time.monotonic()
    for round_ in range(ROUNDS):
        data, mutation = mutate(good, rng, headers)
        visit.tarball.write_bytes(data)
        for reader, action in (("deposit_metadata", lambda: deposit_metadata(visit, force=True)),
                               ("latest_member_mtime", lambda: latest_member_mtime(visit.tarball))):
            try:
                outcome = guarded(action)
            except Exception as exc:
                pytest.fail(f"seed {SEED} round {round_} ({mutation}): {reader} raised "
                            f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            if isinstance(outcome, IcfError):
                message = str(outcome)
                assert "\n" not in message and str(visit.tarball) in message, \
                    f"seed {SEED} round {round_} ({mutation}): {reader}: {message}"
                outcomes["refused"] += 1
            else:
                outcomes["result"] += 1
    elapsed = time.monotonic() - started
    print(f"{ROUNDS} mutations, {outcomes} in {elapsed:.1f} s")
    assert outcomes["refused"] > ROUNDS  # the damage is found, not just survived

