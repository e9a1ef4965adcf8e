"""Shared test helpers: running the real scripts, crafting DICOMs, the sample visit."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "bin"
DATA = Path(__file__).resolve().parent / "data"
SAMPLE_VISIT = DATA / "sample-visit"
SAMPLE_DICOMS = sorted(SAMPLE_VISIT.glob("run1-*/MR.*"))

sys.path.insert(0, str(REPO / "lib"))

# Tests run make themselves: the same whether pytest runs under `make test` or not.
for variable in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"):
    os.environ.pop(variable, None)


def drop_file_access_override() -> None:
    """In a child process: give up root's power to read any file
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so permissions apply to it."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_tool(script: str, *args, cwd=None, env=None, unprivileged: bool = False,
             timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``bin/<script>`` with this Python; ``unprivileged``: with file
    permissions enforced even when the tests run as root."""
    full_env = dict(os.environ, **(env or {}))
    preexec = drop_file_access_override if unprivileged and os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, str(BIN / script), *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
        preexec_fn=preexec, **kwargs,
    )


def members(tar_path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar_path) as tar:
        return tar.getmembers()


def make_dicom(path: Path, *, preamble: bool = True, implicit: bool = False,
               pixel_bytes: int = 0, **tags) -> Path:
    """Write a small DICOM with pydicom: an MR image header with ``tags``
    (keyword=value; None deletes the tag) and optionally pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    ds.StudyDate, ds.StudyTime = "20240102", "030405"
    ds.Modality = "MR"
    ds.SeriesDescription = "t1_mprage"
    ds.ProtocolName = "t1_mprage"
    ds.SeriesNumber = 3
    ds.MRAcquisitionType = "3D"
    ds.PatientName = "Doe^Jane"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["one study"])
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if "SeriesInstanceUID" not in tags:  # one series per SeriesNumber, unless a test says otherwise
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"series {ds.get('SeriesNumber')}"])
    if pixel_bytes:
        ds.Rows, ds.Columns, ds.BitsAllocated = 256, pixel_bytes // 512, 16
        ds.PixelData = bytes(pixel_bytes)
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, implicit_vr=implicit, little_endian=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """No test may touch this checkout's git repository: a command run here
    by mistake (e.g. ``datalad clone`` from inside a git repository makes
    git-annex initialise that repository) fails the session."""
    yield
    assert not (REPO / ".git" / "annex").exists(), f"a test ran git-annex in {REPO}"


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    """A writable copy of the bundled sample visit."""
    target = tmp_path / "input"
    shutil.copytree(SAMPLE_VISIT, target)
    return target


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


def pydicom_read(path: Path):
    """pydicom's reading of ``path``'s header, or None if pydicom does not read
    it as DICOM: ``dcmread``, else (no Part-10 preamble) ``dcmread(force=True)``
    if what that reads starts like a DICOM data set: a file meta group, or a
    group 0008 element first (force=True makes "elements" of any bytes)."""
    import warnings

    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            pass
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            return None
    first = next(iter(ds.keys()), None)  # in file order
    if getattr(ds, "file_meta", None) or (first is not None and first >> 16 == 0x0008):
        return ds
    return None


def assert_read_like_pydicom(path: Path, ds) -> None:
    """Our header walk reads ``path`` as DICOM with what pydicom read (``ds``):
    the exported tags and the identity, each computed here from pydicom."""
    import warnings

    from pydicom.multival import MultiValue
    from pydicom.uid import UID

    from icf.dicom import DICOMDIR_SOP_CLASS, EXPORTED_TAGS, Identity, NotDicom, read_file_header

    def as_json(value):
        if value is None or value == "":
            return ""
        if isinstance(value, MultiValue):
            return [str(v).strip() for v in value]
        return int(value) if type(value).__name__ == "IS" else str(value).strip(" \0")

    def text(value) -> str:
        return "" if value is None else str(value).strip(" \0")

    with warnings.catch_warnings():  # pydicom converts values on first access
        warnings.simplefilter("ignore")
        tags = {k: as_json(ds.get(k)) for k in EXPORTED_TAGS}
        # the rule of DicomHeader.identity(), restated over pydicom's reading
        sop_class = text(ds.get("SOPClassUID")) or text(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID"))
        if sop_class == DICOMDIR_SOP_CLASS:
            kind = "dicomdir"
        elif sop_class:
            kind = "image" if "Image Storage" in UID(sop_class).name else "other"
        else:
            kind = "image" if "Rows" in ds else "other"
        frames = as_json(ds.get("NumberOfFrames"))
        expected = Identity(
            kind=kind, frames=frames if isinstance(frames, int) and frames > 0 else 1,
            instance_number=as_json(ds.get("InstanceNumber")), sop_instance=text(ds.get("SOPInstanceUID")),
            study=text(ds.get("StudyInstanceUID")), series=text(ds.get("SeriesInstanceUID")),
        )
    try:
        header = read_file_header(path)
    except NotDicom as exc:
        pytest.fail(f"{path}: pydicom reads it, we say {exc}")
    assert header.technical_tags() == tags, path
    assert header.identity() == expected, path
