"""CLI sub-command modules; each defines ``register(subparsers)`` and handlers that return an exit code."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(value: Any) -> None:
    """Write one JSON document to stdout (machine-readable output only goes here)."""
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    sys.stdout.flush()
