"""Run the facegate CLI as a user would: a subprocess, capturing stdout/stderr and the exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Result:
    """``python -m facegate.cli ARGS`` with the current environment plus ``env``."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "facegate.cli", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_user_error(result: Result, *needles: str, code: int | None = None) -> None:
    """A user error: non-zero exit, ``facegate: error:`` naming the thing, and no traceback."""
    assert result.code != 0, result
    if code is not None:
        assert result.code == code, result
    assert "facegate: error:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
