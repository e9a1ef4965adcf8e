"""A study at a glance (``make STUDY=x report``): one row per visit with its
DICOM files, image series, images (frames), archive size and findings, read
from each visit's metadata files, visits in natural order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from icf import IcfError
from icf.catalog import human_size
from icf.records import read_dicom_records, read_tarball_record
from icf.store import Visit, study_visits

HEADINGS = ("visit", "DICOMs", "series", "images", "size", "findings")


@dataclass(frozen=True)
class ReportRow:
    """A visit's row; ``problem`` instead of figures when its metadata is
    missing or malformed."""

    visit: str
    figures: tuple[int, int, int, int] | None  # DICOMs, series, images, bytes
    findings: str
    problem: str = ""

    def cells(self) -> tuple[str, ...]:
        if self.figures is None:
            return (self.visit, "", "", "", "", self.problem)
        dicoms, series, images, size = self.figures
        return (self.visit, str(dicoms), str(series), str(images), human_size(size), self.findings)


def visit_row(visit: Visit) -> ReportRow:
    if not visit.metadata_tarball.exists():
        return ReportRow(visit.visit, None, "", "no metadata yet (make metadata)")
    try:
        tarball = read_tarball_record(visit)
        dicoms = read_dicom_records(visit)
    except IcfError as exc:
        return ReportRow(visit.visit, None, "", str(exc))
    images = sum(record.frames for record in dicoms if record.kind == "image")
    findings = ", ".join(f"{finding.code} ({finding.count})" for finding in tarball.findings) or "-"
    return ReportRow(visit.visit, (len(dicoms), len(tarball.series), images, tarball.size), findings)


def study_report(store: Path, study: str) -> list[ReportRow]:
    """A row for every visit of ``study`` that has an archive or metadata."""
    visits = study_visits(store, study)
    if not visits:
        raise IcfError(f"{store / study}: no visit with an archive or metadata")
    return [visit_row(Visit(store, study, visit)) for visit in visits]


def table(rows: list[ReportRow]) -> str:
    """The rows as a text table: columns aligned, figures to the right."""
    cells = [HEADINGS, *(row.cells() for row in rows)]
    widths = [max(len(line[column]) for line in cells) for column in range(len(HEADINGS) - 1)]
    lines = []
    for line in cells:
        aligned = [line[0].ljust(widths[0]),
                   *(text.rjust(width) for text, width in zip(line[1:-1], widths[1:], strict=True))]
        lines.append("  ".join([*aligned, line[-1]]).rstrip())
    return "\n".join(lines)
