"""What the scripts share: options, help wording, messages, signals, exit codes.

Exit status (the same for every script, see the admin guide):

- 0: done;
- 1: an input or state the tool cannot handle faithfully, or an operating
  system error (full disk, permission denied, ...): one line on stderr
  naming the file and what was being done; nothing half-written is left;
- 2: a usage error (bad option or ID): nothing written;
- 3: ``verify_visit`` found a mismatch (one line per mismatch);
- 128 + N: interrupted by signal N (SIGINT 130, SIGTERM 143, SIGHUP 129).
  The message says whether the output had been completed before the
  signal (it then stays, complete) or nothing was written.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from icf import IcfError, Progress, no_progress, os_error_line
from icf.output import HELD_SIGNALS
from icf.store import Visit, check_id, check_store_url, default_store_url

EXIT_OK, EXIT_ERROR = 0, 1


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived (raised by the handlers :func:`run` installs)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def _checked(check: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse type from a ``check`` that raises ValueError."""
    def checked(value: str) -> str:
        try:
            return check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return checked


def argument_parser(prog: str, description: str, epilog: str = "",
                    per_visit: bool = True) -> argparse.ArgumentParser:
    """A parser with the options every script has, worded the same
    everywhere; ``--id`` takes a study and a visit ID, or (not
    ``per_visit``) a study ID alone."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-o", "--store-dir", metavar="PATH", type=Path, default=Path("."),
        help="root directory of the store (default: the current directory)",
    )
    parser.add_argument(
        "--id", nargs=2 if per_visit else 1, metavar=("STUDY-ID", "VISIT-ID") if per_visit else "STUDY-ID",
        type=_checked(check_id), required=True,
        help=f"study{' and visit' if per_visit else ''} ID: letters, digits, '.', '_' and '-', "
        "not starting with '.' or '-'",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true",
        help="no progress bar and no summary; warnings and errors only",
    )
    return parser


def add_force_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--force", action="store_true", help=f"replace existing {what} (atomically)",
    )


def add_store_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store-url", metavar="URL", type=_checked(check_store_url),
        help="URL at which the store's root is served to users "
        "(default: the file:// URL of the store directory); characters "
        "outside RFC 3986 (quotes, spaces, '$', ';', '<', '>', '&', '#', '?', "
        "non-ASCII) must be percent-encoded",
    )


def store_url(args: argparse.Namespace) -> str:
    return args.store_url or default_store_url(args.store_dir)


def visit_of(args: argparse.Namespace) -> Visit:
    return Visit(args.store_dir, *args.id)


def run(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], str],
        outputs: Callable[[argparse.Namespace], Sequence[Path]] = lambda args: ()) -> None:
    """Parse the command line, run ``main``, print its one-line summary, exit.

    ``main`` returns the summary; it raises IcfError for anything it cannot
    do faithfully, which becomes one ``<prog>: error: ...`` line and the
    error's exit status. An OSError that no step turned into an IcfError
    still becomes one line naming the path, and any other exception one
    ``internal error`` line (``ICF_DEBUG=1`` shows the traceback): no input
    or environment gives a traceback. ``outputs(args)`` lists the files the
    script makes; after a signal, the message says which of them changed.
    """
    for signum in HELD_SIGNALS:
        signal.signal(signum, _raise_interrupted)
    try:
        args = parser.parse_args()
    except Interrupted as exc:
        _fail(parser.prog, f"interrupted by {signal.Signals(exc.signum).name}, nothing written",
              128 + exc.signum, prefix="")
    logging.basicConfig(
        format=f"{parser.prog}: %(message)s",
        level=logging.WARNING if args.quiet else logging.INFO,
        stream=sys.stderr,
    )
    # pydicom logs what it thinks of odd values (any bytes a header holds):
    # values never reach our messages as they are, so neither do its words
    logging.getLogger("pydicom").disabled = True
    # DataLad warns on import when git has no identity (a cluster job's
    # case); no tool commits as the user (step 3 sets its own identity)
    logging.getLogger("datalad.config").addFilter(
        lambda record: "configure Git" not in record.getMessage())
    started = time.monotonic()
    before = {path: _state(path) for path in outputs(args)}
    try:
        summary = main(args)
        if not args.quiet:
            print(f"{parser.prog}: {summary} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    except IcfError as exc:
        _fail(parser.prog, str(exc), exc.exit_status)
    except OSError as exc:
        _fail(parser.prog, os_error_line(exc), EXIT_ERROR)
    except Interrupted as exc:
        changed = [path.name for path, state in before.items() if _state(path) != state]
        outcome = (f"after {', '.join(changed)} {'was' if len(changed) == 1 else 'were'} complete"
                   if changed else "nothing written")
        _fail(parser.prog, f"interrupted by {signal.Signals(exc.signum).name}, {outcome}",
              128 + exc.signum, prefix="")
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("ICF_DEBUG"):
            raise
        _fail(parser.prog, f"internal error: {type(exc).__name__}: {exc} "
              "(rerun with ICF_DEBUG=1 for a traceback, and report it)", EXIT_ERROR)
    sys.exit(EXIT_OK)


def one_line(message: str) -> str:
    """``message`` with line breaks shown as ``\\n``/``\\r``: one line, whatever a name holds."""
    return message.replace("\n", "\\n").replace("\r", "\\r")


def _fail(prog: str, message: str, status: int, prefix: str = "error: ") -> None:
    print(f"{prog}: {prefix}{one_line(message)}", file=sys.stderr)
    sys.exit(status)


def _state(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def progress_bar(args: argparse.Namespace, unit: str) -> Progress:
    """``wrap(items, total)``: a tqdm progress bar on stderr when it is a
    terminal and not --quiet; otherwise the items unchanged."""
    if args.quiet or not sys.stderr.isatty():
        return no_progress
    from tqdm import tqdm

    return lambda items, total: tqdm(items, total=total, unit=unit, leave=False, file=sys.stderr)
