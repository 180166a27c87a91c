"""CLI sub-command modules; each defines ``register(subparsers)`` and handlers that return an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


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
