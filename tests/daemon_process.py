"""`facegate run --config FILE` as a real subprocess for end-to-end tests, observed through structured output only:
the JSON decision lines on stdout, the audit log, and the daemon's key=value log records (``event=ready``,
``event=gallery_identity_removed id=1 …``), parsed into dicts — never by matching log wording.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from facegate.runtime.audit import is_decision, read_audit

#: A test-only HMAC key (64 hex characters).
KEY = "9f1c2e3d4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff"
# key=value, the value bare, or quoted as %r/json quote it
_FIELD = re.compile(r"(\w+)=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+)")
# the CLI's log format: "%(asctime)s %(levelname)s %(name)s %(message)s"
_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) (?P<logger>\S+) (?P<message>.*)$")


def parse_record(line: str) -> dict[str, str] | None:
    """One log line → its fields (``level``, ``logger`` and every key=value of the message, quotes removed), or
    None for a line that is not a log record (a traceback line)."""
    m = _LINE.match(line)
    if m is None:
        return None
    fields = {"level": m["level"], "logger": m["logger"]}
    for key, value in _FIELD.findall(m["message"]):
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        fields.setdefault(key, value)
    return fields


def facegate(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``facegate ARGS`` as a subprocess of this interpreter (text output captured)."""
    return subprocess.run([sys.executable, "-m", "facegate.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


class Daemon:
    """`facegate run --config FILE` in a subprocess, with its stderr log and stdout event lines captured.

    The config gets a signing key (``KEY``), an audit log and a state folder in ``tmp`` unless it names its own.
    """

    def __init__(self, tmp: Path, config: dict, env: dict | None = None) -> None:
        self.tmp = tmp
        self.key = tmp / "signing.key"
        self.key.write_text(KEY + "\n")
        self.key.chmod(0o600)
        self.audit = tmp / "audit.jsonl"
        config.setdefault("signing", {"algorithm": "hmac-sha256", "key_file": str(self.key)})
        config.setdefault("audit", {"path": str(self.audit)})
        config.setdefault("service", {}).setdefault("state_dir", str(tmp / "state"))
        self.config = tmp / "facegate.yaml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.stdout = tmp / "stdout.jsonl"
        self.stderr = tmp / "stderr.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "facegate.cli", "run", "--config", str(self.config)],
            stdout=self.stdout.open("w"), stderr=self.stderr.open("w"), env=self.env)
        return self

    # -------------------------------------------------------------------------------------------- observing
    def log(self) -> str:
        """The raw stderr (for assertion messages)."""
        return self.stderr.read_text(errors="replace")

    def tail(self) -> str:
        return self.log()[-3000:]

    def records(self, event: str | None = None, **fields: str) -> list[dict[str, str]]:
        """Parsed log records, optionally only those with ``event=event`` and the given field values."""
        out = []
        for line in self.log().splitlines():
            rec = parse_record(line)
            if rec is None or (event is not None and rec.get("event") != event):
                continue
            if all(rec.get(k) == str(v) for k, v in fields.items()):
                out.append(rec)
        return out

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
        """Poll ``predicate()`` until true, the daemon exits, or ``timeout`` s; returns the last result."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        return bool(predicate())

    def wait_record(self, event: str, timeout: float = 60.0, count: int = 1, **fields: str) -> bool:
        """Wait until ``count`` log records with ``event=event`` (and ``fields``) exist."""
        return self.wait_until(lambda: len(self.records(event, **fields)) >= count, timeout)

    def events(self) -> list[dict]:
        """The decisions printed on stdout (JSON lines), in order."""
        return [json.loads(line) for line in self.stdout.read_text().splitlines() if line.startswith("{")]

    def wait_events(self, predicate: Callable[[list[dict]], bool], timeout: float = 60.0) -> bool:
        """Wait until ``predicate(events())`` holds."""
        return self.wait_until(lambda: predicate(self.events()), timeout)

    def audited(self) -> list[dict]:
        """The signed payloads in the audit log, in order (the console's admin records left out)."""
        return [r["event"] for r in read_audit(self.audit) if is_decision(r)] if self.audit.exists() else []

    # -------------------------------------------------------------------------------------------- stopping
    def wait_exit(self, timeout: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"daemon did not exit within {timeout} s; log:\n{self.tail()}") from None

    def terminate(self) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.wait_exit(30)
        return code, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def grants(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "grant"]
