"""What the four scripts share: options, help wording, messages, exit codes.

Exit status: 0 done, 1 an input or state the tool cannot handle faithfully
(one line on stderr naming the file), 2 a usage error (nothing written).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from icf import IcfError
from icf.store import Visit, check_id, default_store_url

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _id(value: str) -> str:
    try:
        return check_id(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def argument_parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """A parser with the options every script has, worded the same everywhere."""
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
        "--id", nargs=2, metavar=("STUDY-ID", "VISIT-ID"), type=_id, required=True,
        help="study and visit ID: letters, digits, '.', '_' and '-', "
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
        "--store-url", metavar="URL",
        help="URL at which the store's root is served to users "
        "(default: the file:// URL of the store directory)",
    )


def store_url(args: argparse.Namespace) -> str:
    return args.store_url or default_store_url(args.store_dir)


def visit_of(args: argparse.Namespace) -> Visit:
    return Visit(args.store_dir, *args.id)


def run(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], str]) -> None:
    """Parse the command line, run ``main``, print its one-line summary, exit.

    ``main`` returns the summary; it raises IcfError for anything it cannot
    do faithfully, which becomes one ``<prog>: error: ...`` line and exit 1.
    """
    args = parser.parse_args()
    logging.basicConfig(
        format=f"{parser.prog}: %(message)s",
        level=logging.WARNING if args.quiet else logging.INFO,
        stream=sys.stderr,
    )
    started = time.monotonic()
    try:
        summary = main(args)
    except IcfError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted, nothing written", file=sys.stderr)
        sys.exit(130)
    if not args.quiet:
        print(f"{parser.prog}: {summary} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    sys.exit(EXIT_OK)


def progress_bar(args: argparse.Namespace, unit: str) -> Callable[[Iterable, int], Iterable]:
    """``wrap(items, total)``: a tqdm progress bar on stderr when it is a
    terminal and not --quiet; otherwise the items unchanged."""
    if args.quiet or not sys.stderr.isatty():
        return lambda items, total: items
    from tqdm import tqdm

    return lambda items, total: tqdm(items, total=total, unit=unit, leave=False, file=sys.stderr)
