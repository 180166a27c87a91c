"""The ``facegate`` command: argparse sub-commands only.

Each sub-command lives in ``facegate.commands.<module>`` with ``register(subparsers)``; its handler parses nothing
itself, calls the library, prints JSON on stdout and returns an exit code. Errors a user can cause are
``FacegateError``: printed as ``facegate: error: …`` on stderr without a traceback (``--debug`` shows it), exit code
from the error (1 runtime, 2 usage/config). Exit 130 on Ctrl-C. A full disk (ENOSPC, EDQUOT, SQLite's "disk is
full") that a command does not report itself ends as such an error too (exit 1), naming the file.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sqlite3
import sys
from collections.abc import Sequence

from facegate import __version__
from facegate.errors import FacegateError

#: Modules under facegate.commands that add sub-commands, in help order.
COMMAND_MODULES = ("models", "faces", "gallery", "evaluate", "liveness", "daemon", "admin", "keys", "door")


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with ``facegate: error:`` like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"facegate: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="facegate",
        description="Real-time face-recognition access control. JSON on stdout, messages on stderr.",
        epilog="Example: facegate detect photo.jpg --annotate out.png",
    )
    parser.add_argument("--version", action="version", version=f"facegate {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="info-level logs on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(f"facegate.commands.{module_name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except FacegateError as exc:
        if args.debug:
            raise
        print(f"facegate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except (OSError, sqlite3.OperationalError) as exc:
        # a full disk (or quota) where a command writes: its own message where it has one (enroll, gallery, eval,
        # keys), this one anywhere else — a clear error, never a traceback
        if args.debug or not _disk_full(exc):
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"facegate: error: no space left on the device{where}: {exc}; free space and run the command again",
              file=sys.stderr)
        return 1


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from the OS, or SQLite's "database or disk is full" (SQLITE_FULL)."""
    if isinstance(exc, sqlite3.OperationalError):
        return ((getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


if __name__ == "__main__":
    sys.exit(main())
