"""CLI sub-command modules; each defines ``register(subparsers)`` and handlers that return an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from facegate.limits import thread_count_problem


def print_json(value: Any) -> None:
    """Write one JSON document to stdout (machine-readable output only goes here)."""
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (thread counts, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def thread_count(text: str) -> int:
    """argparse type of every ``--threads``: a whole number from 1 to the CPUs this process may use
    (``facegate.limits.thread_count_problem``, the check the daemon's ``inference.threads`` gets too)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if problem := thread_count_problem(value):
        raise argparse.ArgumentTypeError(problem)
    return value


def jitter_count(text: str) -> int:
    """argparse type of every ``--jitters``: a whole number from 0 to ``packs.jitter.MAX_JITTERS``."""
    from facegate.packs.jitter import MAX_JITTERS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_JITTERS:
        raise argparse.ArgumentTypeError(f"{value} must be from 0 to {MAX_JITTERS} (each copy costs one recogniser "
                                         "run per face)")
    return value
