"""icf-utils: the shared library behind the scripts in ``bin/``.

One job per module; the module map in the developer guide
(``docs/developer.rst``) says what each owns and may import:
:mod:`icf.store`, :mod:`icf.dicom`, :mod:`icf.tarball`, :mod:`icf.output`,
:mod:`icf.records`, :mod:`icf.annex`, :mod:`icf.git`, :mod:`icf.cli`, and
the steps :mod:`icf.archive`, :mod:`icf.metadata`, :mod:`icf.dataset`,
:mod:`icf.catalog` and :mod:`icf.verify`. This module holds what all of
them share: the error types and how an OSError becomes one line.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional

#: ``progress(items, total)`` wraps a step's per-file loop (e.g. in a progress
#: bar) and yields the items; ``total`` is None when not known in advance.
Progress = Callable[[Iterable[Any], Optional[int]], Iterable[Any]]


def no_progress(items: Iterable[Any], total: Optional[int]) -> Iterable[Any]:
    return items


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
