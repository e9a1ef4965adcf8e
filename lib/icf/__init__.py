"""icf-utils: the shared library behind the scripts in ``bin/``.

Modules, one job each:

- :mod:`icf.store`    the store's layout, study/visit IDs, derived UUIDs, URLs
- :mod:`icf.dicom`    reading DICOM headers, timestamps and tag values
- :mod:`icf.tarball`  writing reproducible TARs and reading them back safely
- :mod:`icf.output`   atomic output files, locks and deterministic JSON
- :mod:`icf.cli`      the options, messages, signals and exit codes all scripts share
- :mod:`icf.archive`, :mod:`icf.metadata`, :mod:`icf.dataset`,
  :mod:`icf.catalog`  the four steps; :mod:`icf.verify` fixity
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class IcfError(Exception):
    """An input or state a tool cannot handle faithfully (exit status 1).

    The message is one line and names the offending file(s).
    """

    exit_status = 1


class Mismatch(IcfError):
    """``verify_visit`` found the store's files disagreeing (exit status 3)."""

    exit_status = 3


@contextmanager
def doing(action: str, where: object = None) -> Iterator[None]:
    """Turn an operating system error inside into an :class:`IcfError` that
    names the path and ``action`` (what was being done), e.g.
    ``/store/s/.v_dicom.tar.partial: writing: No space left on device``;
    ``where`` names the place for errors that carry no file name (a failed
    read or write on an open file)."""
    try:
        yield
    except OSError as exc:
        raise IcfError(os_error_line(exc, action, where)) from None


def os_error_line(exc: OSError, action: str = "", where: object = None) -> str:
    """``<path>: <action>: <reason>``, the one line an OSError becomes."""
    path = exc.filename if exc.filename is not None else where or "(no file name)"
    if exc.filename2 is not None:
        path = f"{path} -> {exc.filename2}"
    reason = exc.strerror or str(exc)
    return f"{path}: {action + ': ' if action else ''}{reason}"
