"""Access rules per door: allowed groups, a weekly schedule in an IANA time zone, cooldown and anti-passback.

``AccessRules.check`` answers ``None`` (allowed) or the reason a known person is refused, checked in this order:

* ``"unknown_door"``: the door has no rules (fail closed: a door nobody configured opens for nobody);
* ``"not_in_group"``: the door lists allowed groups and the person is in none of them
  (``allowed_groups=None`` admits every enrolled person, an empty set admits nobody);
* ``"outside_schedule"``: the instant, in the door's local time, is outside every window of its weekly schedule;
* ``"cooldown"``: the person was granted at this door less than ``cooldown_s`` seconds ago;
* ``"anti_passback"``: an entry door with ``anti_passback_s > 0`` granted this person less than that many seconds
  ago and they have not passed an exit door since. A grant at a door with ``exit=True``, or a call to
  ``record_exit`` (e.g. an exit reader outside facegate), clears the person's anti-passback state at every door.
  This is the simple "timed" anti-passback of access-control panels, not a full area/zone model.

Schedules are wall-clock windows in the door's zone (``zoneinfo``), so a "07:00-19:00" window follows daylight
saving time: it opens at 07:00 local on both sides of a DST change. A window whose end is not after its start
("22:00-06:00") runs across midnight into the next day and belongs to the day it starts on. "24:00" is allowed
as an end. Day keys: ``mon`` … ``sun``, ranges ``mon-fri`` (wrapping ``fri-mon`` too), lists ``mon,wed``, ``daily``.
Cooldown and anti-passback use monotonic seconds, so a wall-clock jump cannot reopen a door.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from facegate.errors import ConfigError

log = logging.getLogger(__name__)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()


def _parse_days(key: str, where: str) -> list[int]:
    key = key.strip().lower()
    if key in ("daily", "*", "all"):
        return list(range(7))
    days: list[int] = []
    for part in key.split(","):
        part = part.strip()
        if "-" in part:
            a, b = (p.strip() for p in part.split("-", 1))
            if a not in DAYS or b not in DAYS:
                raise ConfigError(f"{where}: day range {part!r} must look like 'mon-fri' (days {', '.join(DAYS)})")
            i, j = DAYS.index(a), DAYS.index(b)
            days.extend((i + k) % 7 for k in range(((j - i) % 7) + 1))
        elif part in DAYS:
            days.append(DAYS.index(part))
        else:
            raise ConfigError(f"{where}: unknown day {part!r}; use {', '.join(DAYS)}, ranges like mon-fri, or daily")
    return days


def _parse_clock(text: str, where: str) -> int:
    """'HH:MM' → minutes after midnight (0..1440)."""
    try:
        hh, mm = text.strip().split(":")
        minutes = int(hh) * 60 + int(mm)
        ok = 0 <= int(mm) < 60 and 0 <= minutes <= 24 * 60
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{where}: time {text!r} must be HH:MM between 00:00 and 24:00")
    return minutes


class WeeklySchedule:
    """Weekly opening windows in one IANA time zone.

    ``windows`` maps day keys to "HH:MM-HH:MM" strings or lists of them, e.g.
    ``{"mon-fri": "07:00-19:00", "sat": ["09:00-12:00", "22:00-02:00"]}``. Raises ``ConfigError`` naming the door
    for a bad zone, day or time.
    """

    def __init__(self, windows: Mapping[str, str | Iterable[str]], timezone: str = "UTC", *, door: str = "?"):
        where = f"doors.{door}.schedule"
        try:
            self.tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(
                f"doors.{door}.timezone: {timezone!r} is not an IANA time zone (e.g. 'Europe/Berlin')"
            ) from exc
        # per weekday: list of (start_min, end_min); end may exceed 1440 for windows running past midnight
        self._by_day: list[list[tuple[int, int]]] = [[] for _ in range(7)]
        for key, spans in windows.items():
            days = _parse_days(str(key), where)
            for span in [spans] if isinstance(spans, str) else list(spans):
                if "-" not in str(span):
                    raise ConfigError(f"{where}.{key}: window {span!r} must look like '07:00-19:00'")
                a, b = str(span).split("-", 1)
                start, end = _parse_clock(a, f"{where}.{key}"), _parse_clock(b, f"{where}.{key}")
                if start >= 24 * 60:
                    raise ConfigError(f"{where}.{key}: window {span!r} cannot start at 24:00")
                if end <= start:
                    end += 24 * 60
                for d in days:
                    self._by_day[d].append((start, end))

    def allows(self, when: datetime) -> bool:
        """Is the instant ``when`` (timezone-aware datetime) inside a window, in the zone's local wall time?

        Raises ``ValueError`` for a naive datetime (its zone would be a guess).
        """
        if when.tzinfo is None:
            raise ValueError("WeeklySchedule.allows needs a timezone-aware datetime")
        local = when.astimezone(self.tz)
        minute = local.hour * 60 + local.minute + local.second / 60.0
        today = local.weekday()
        if any(s <= minute < e for s, e in self._by_day[today]):
            return True
        yesterday = (today - 1) % 7
        return any(minute + 24 * 60 < e for s, e in self._by_day[yesterday] if e > 24 * 60)


@dataclass(frozen=True)
class Door:
    """Rules of one door (all keyword-friendly plain values).

    * ``allowed_groups``: group names admitted; ``None`` = every enrolled person, empty = nobody;
    * ``schedule``: day key → window(s), see ``WeeklySchedule``; ``None`` = always open;
    * ``timezone``: IANA zone of the schedule (default "UTC");
    * ``cooldown_s``: seconds before the same person can be granted again at this door;
    * ``anti_passback_s``: seconds an entry grant blocks a second entry here (0 = off);
    * ``exit``: this door is an exit; a grant here clears the person's anti-passback state.
    """

    name: str
    allowed_groups: frozenset[str] | None = None
    schedule: Mapping[str, Any] | None = None
    timezone: str = "UTC"
    cooldown_s: float = 0.0
    anti_passback_s: float = 0.0
    exit: bool = False
    _compiled: WeeklySchedule | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.allowed_groups is not None:
            object.__setattr__(self, "allowed_groups", frozenset(self.allowed_groups))
        if self.cooldown_s < 0 or self.anti_passback_s < 0:
            raise ConfigError(f"doors.{self.name}: cooldown_s and anti_passback_s must be ≥ 0 seconds")
        compiled = WeeklySchedule(self.schedule, self.timezone, door=self.name) if self.schedule is not None else None
        if compiled is None:
            WeeklySchedule({}, self.timezone, door=self.name)  # validate the zone even without a schedule
        object.__setattr__(self, "_compiled", compiled)

    def open_at(self, when: datetime) -> bool:
        """Schedule check for the aware instant ``when``; always True without a schedule."""
        return self._compiled is None or self._compiled.allows(when)


class AccessRules:
    """The doors' rules plus the grant history that cooldown and anti-passback need. Thread-safe.

    ``doors``: ``Door`` objects (or a mapping name → ``Door``). Times: ``now`` monotonic seconds, ``wall`` an aware
    datetime (UTC or any zone).
    """

    def __init__(self, doors: Iterable[Door] | Mapping[str, Door]) -> None:
        items = doors.values() if isinstance(doors, Mapping) else doors
        self.doors: dict[str, Door] = {}
        for d in items:
            if d.name in self.doors:
                raise ConfigError(f"doors: door {d.name!r} is defined twice")
            self.doors[d.name] = d
        self._lock = threading.Lock()
        self._last_grant: dict[tuple[Any, str], float] = {}  # (person, door) → monotonic s
        self._entries: dict[tuple[Any, str], float] = {}  # anti-passback: (person, entry door) → monotonic s

    def update_doors(self, doors: Iterable[Door] | Mapping[str, Door]) -> None:
        """Replace the doors (config reload) and keep the grant history, so a reload reopens no cooldown."""
        fresh = AccessRules(doors)
        with self._lock:
            self.doors = fresh.doors

    def cooldown_s(self, door: str) -> float:
        d = self.doors.get(door)
        return d.cooldown_s if d else 0.0

    def check(self, *, identity_id: Any, groups: Iterable[str], door: str, wall: datetime, now: float) -> str | None:
        """``None`` when ``identity_id`` (in ``groups``) may pass ``door`` at ``wall``/``now``, else the reason."""
        d = self.doors.get(door)
        if d is None:
            return "unknown_door"
        if d.allowed_groups is not None and not (d.allowed_groups & set(groups)):
            return "not_in_group"
        if not d.open_at(wall):
            return "outside_schedule"
        with self._lock:
            last = self._last_grant.get((identity_id, door))
            if last is not None and d.cooldown_s > 0 and now - last < d.cooldown_s:
                return "cooldown"
            entry = self._entries.get((identity_id, door))
            if entry is not None and d.anti_passback_s > 0 and not d.exit and now - entry < d.anti_passback_s:
                return "anti_passback"
        return None

    def record_grant(self, identity_id: Any, door: str, now: float) -> None:
        """Remember a grant (monotonic ``now``) for cooldown and anti-passback."""
        d = self.doors.get(door)
        with self._lock:
            self._last_grant[(identity_id, door)] = now
            if d is not None and d.exit:
                self._clear_entries(identity_id)
            elif d is not None and d.anti_passback_s > 0:
                self._entries[(identity_id, door)] = now
            self._prune(now)

    def record_exit(self, identity_id: Any, now: float | None = None) -> None:
        """The person left (an exit door outside facegate): clear their anti-passback state at every door."""
        with self._lock:
            self._clear_entries(identity_id)

    def _clear_entries(self, identity_id: Any) -> None:
        for key in [k for k in self._entries if k[0] == identity_id]:
            del self._entries[key]

    def _prune(self, now: float) -> None:
        # keeps the history bounded: an entry older than every window can no longer refuse anybody
        horizon = max([0.0] + [max(d.cooldown_s, d.anti_passback_s) for d in self.doors.values()])
        for table in (self._last_grant, self._entries):
            for key in [k for k, t in table.items() if now - t > horizon]:
                del table[key]

