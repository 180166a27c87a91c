"""The daemon as the console sees it: its ``state.json`` (``runtime/state_file.py``), judged by age.

The console never talks to the daemon: a web request cannot reach the decision path. A file that is missing,
unreadable or older than ``admin.state_stale_s`` means the daemon is down (or stuck): the console then says so and
shows the last values it has, marked stale.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from facegate.signing import parse_rfc3339

#: Largest state file read (bytes): a few hundred cameras fit easily.
MAX_STATE_BYTES = 4 << 20


def read_daemon_state(path: Path, stale_s: float, now: datetime | None = None) -> dict[str, Any]:
    """``{"daemon": "up" | "down" | "stopped", "age_s": float | None, "reason": str | None, "state": dict | None}``
    for the state file at ``path``. Never raises."""
    now = now or datetime.now(UTC)
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            return _down(f"{path} is larger than {MAX_STATE_BYTES} bytes")
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        written = parse_rfc3339(str(state.get("written_at")))
    except FileNotFoundError:
        return _down(f"no {path.name} in {path.parent}: the daemon has not run with this config")
    except (OSError, ValueError, TypeError) as exc:
        return _down(f"{path}: unreadable ({exc})")
    age = (now - written).total_seconds()
    if state.get("running") is False:
        return {"daemon": "stopped", "age_s": round(age, 1), "reason": "the daemon stopped", "state": state}
    if age > stale_s:
        return {"daemon": "down", "age_s": round(age, 1),
                "reason": f"state.json not updated for {age:.0f} s (daemon stopped, stuck or crashed)", "state": state}
    return {"daemon": "up", "age_s": round(age, 1), "reason": None, "state": state}


def _down(reason: str) -> dict[str, Any]:
    return {"daemon": "down", "age_s": None, "reason": reason, "state": None}
