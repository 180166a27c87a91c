"""Door contact and request-to-exit (REX) inputs, and the door state they give.

States (published retained on ``<prefix>/<door>/state``):

* ``locked``: output released, door closed (or no contact wired);
* ``unlocked``: output active (a grant, a REX or a remote unlock), door closed;
* ``open``: door open after an authorisation: the output was active, or a grant / REX came within
  ``passage_window_s`` before;
* ``forced``: door opened without any of those (kept until the door closes);
* ``held_open``: an authorised opening that stayed open longer than ``held_open_s``.

A **passage** is the door opening after a grant: each grant gives at most one, carrying that grant's
``event_id``, so the daemon's anti-passback can count only passages that really happened (as door-sensor
confirmed anti-passback in commercial controllers does). Without a contact there are no passages.

GPIO inputs are sampled through the ``InputLine`` seam (``GpiodInput`` holds the real libgpiod calls; tests use a
fake) by ``InputPoller``, which debounces them; MQTT inputs arrive through the agent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from facegate.errors import FacegateError
from facegate.signing import rfc3339

log = logging.getLogger(__name__)

STATES = ("locked", "unlocked", "open", "forced", "held_open")


class InputError(FacegateError):
    """A GPIO input line that cannot be requested (missing chip, line taken, no gpiod package)."""


class DoorStateMachine:
    """Pure door logic; every method takes ``now`` (monotonic seconds) and is thread-safe.

    ``on_state(state)`` is called on every change of ``state``; ``on_passage(payload)`` with
    ``{"door", "event_id", "granted_at", "opened_at"}`` (times RFC 3339 UTC) once per grant followed by an opening.
    """

    def __init__(self, door: str, *, has_contact: bool, held_open_s: float, passage_window_s: float,
                 on_state: Callable[[str], None] | None = None,
                 on_passage: Callable[[dict[str, Any]], None] | None = None,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.door, self.has_contact = door, has_contact
        self.held_open_s, self.passage_window_s = float(held_open_s), float(passage_window_s)
        self.on_state, self.on_passage, self.wall_clock = on_state, on_passage, wall_clock
        self._lock = threading.RLock()
        self._output = False
        self._open = False
        self._open_since: float | None = None
        self._forced = False
        self._grant: tuple[str, float, datetime] | None = None  # (event_id, at, wall time) awaiting its passage
        self._rex_at: float | None = None
        self.state = "locked"

    def _compute(self, now: float) -> str:
        if self._open:
            if self._forced:
                return "forced"
            if self._open_since is not None and now - self._open_since > self.held_open_s:
                return "held_open"
            return "open"
        return "unlocked" if self._output else "locked"

    def _update(self, now: float) -> None:
        new = self._compute(now)
        if new != self.state:
            self.state = new
            log.info("event=door_state door=%s state=%s", self.door, new)
            if self.on_state:
                self.on_state(new)

    def _recent(self, at: float | None, now: float) -> bool:
        return at is not None and 0 <= now - at <= self.passage_window_s

    def output_changed(self, active: bool, now: float) -> None:
        with self._lock:
            self._output = active
            self._update(now)

    def granted(self, event_id: str, now: float) -> None:
        """A verified grant opened the output (its passage is expected within ``passage_window_s``)."""
        with self._lock:
            self._grant = (event_id, now, self.wall_clock())

    def rex(self, now: float) -> None:
        with self._lock:
            self._rex_at = now

    def contact(self, is_open: bool, now: float) -> None:
        with self._lock:
            if is_open == self._open:
                return
            self._open = is_open
            if is_open:
                self._open_since = now
                grant_ok = self._grant is not None and self._recent(self._grant[1], now)
                self._forced = not (self._output or grant_ok or self._recent(self._rex_at, now))
                if self._forced:
                    log.warning("event=door_forced door=%s", self.door)
                if grant_ok and self._grant is not None:
                    event_id, _, granted_wall = self._grant
                    self._grant = None  # one passage per grant
                    payload = {"door": self.door, "event_id": event_id, "granted_at": rfc3339(granted_wall),
                               "opened_at": rfc3339(self.wall_clock())}
                    log.info("event=passage door=%s event_id=%s", self.door, event_id)
                    if self.on_passage:
                        self.on_passage(payload)
                self._rex_at = None
            else:
                self._open_since, self._forced = None, False
            self._update(now)

    def tick(self, now: float) -> None:
        """Re-evaluate time-based states (held_open) and forget stale grants; call a few times a second."""
        with self._lock:
            if self._grant is not None and not self._recent(self._grant[1], now):
                self._grant = None
            self._update(now)


# ------------------------------------------------------------------------------------------------ GPIO inputs
class InputLine(Protocol):
    """The GPIO seam for one input: ``read()`` → True when active (contact open / button pressed)."""

    def read(self) -> bool: ...
    def close(self) -> None: ...


class GpiodInput:
    """One input line through libgpiod v2 with the kernel's pull-up bias (``Bias.PULL_UP``: a contact or button
    wired to ground reads active-low). The real gpiod calls only; raises ``InputError`` naming chip and line."""

    def __init__(self, chip: str, line: int, *, active_low: bool = False, consumer: str = "facegate-door") -> None:
        try:
            import gpiod
            from gpiod.line import Bias, Direction, Value
        except ImportError as exc:
            raise InputError("GPIO inputs need the gpiod package (pip install 'facegate[door]')") from exc
        self._line, self._active = line, Value.ACTIVE
        try:
            self._request = gpiod.request_lines(chip, consumer=consumer, config={line: gpiod.LineSettings(
                direction=Direction.INPUT, active_low=active_low, bias=Bias.PULL_UP)})
        except (OSError, ValueError) as exc:
            raise InputError(f"GPIO {chip} line {line}: cannot request it as an input ({exc})") from exc

    def read(self) -> bool:
        return self._request.get_value(self._line) == self._active

    def close(self) -> None:
        self._request.release()


class InputPoller:
    """Samples named ``InputLine``s every ``poll_s`` in a thread; a value must hold ``debounce_s`` before
    ``on_change(name, value)`` is called. A line that fails to read is logged once per episode and keeps its last
    debounced value (a contact that cannot be read never opens anything)."""

    def __init__(self, lines: dict[str, InputLine], on_change: Callable[[str, bool], None], *, poll_s: float = 0.02,
                 debounce_s: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        self.lines, self.on_change = lines, on_change
        self.poll_s, self.debounce_s, self.clock = poll_s, debounce_s, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.values: dict[str, bool] = {}
        self._candidate: dict[str, tuple[bool, float]] = {}
        self._failing: set[str] = set()

    def start(self) -> None:
        for name, line in self.lines.items():  # initial values, reported at once (no debounce at start)
            try:
                self.values[name] = line.read()
                self.on_change(name, self.values[name])
            except Exception as exc:
                log.error("event=input_error input=%s error=%r", name, str(exc))
                self._failing.add(name)
        self._thread = threading.Thread(target=self._loop, name="door-inputs", daemon=True)
        self._thread.start()

    def poll_once(self) -> None:
        now = self.clock()
        for name, line in self.lines.items():
            try:
                value = line.read()
            except Exception as exc:
                if name not in self._failing:
                    log.error("event=input_error input=%s error=%r", name, str(exc))
                    self._failing.add(name)
                continue
            self._failing.discard(name)
            if value == self.values.get(name):
                self._candidate.pop(name, None)
                continue
            since = self._candidate.setdefault(name, (value, now))
            if since[0] != value:
                self._candidate[name] = (value, now)
            elif now - since[1] >= self.debounce_s:
                self.values[name] = value
                self._candidate.pop(name, None)
                self.on_change(name, value)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for line in self.lines.values():
            try:
                line.close()
            except Exception as exc:  # closing is best effort at shutdown
                log.debug("input close failed: %r", exc)
