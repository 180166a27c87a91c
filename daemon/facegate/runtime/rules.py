"""Access rules per door — the one place that answers "why was this person refused at this door at this time?".

``AccessRules.check`` answers ``None`` (allowed) or the reason a known person is refused, checked in this order:

* ``"unknown_door"``: the door has no rules (fail closed: a door nobody configured opens for nobody);
* ``"not_in_group"``: the door lists ``allowed_groups`` and the person is in none of them
  (``allowed_groups: null`` admits every enrolled person, ``[]`` admits nobody);
* ``"outside_schedule"``: the instant, in the door's local time, is outside every window of its weekly schedule;
* ``"cooldown"``: the person was granted at this door less than ``cooldown_s`` seconds ago;
* ``"anti_passback"``: an entry door with ``anti_passback: true`` granted this person less than ``anti_passback_s``
  seconds ago and they have not passed an exit door since. A grant at a door with ``exit: true``, or a call to
  ``record_exit`` (e.g. an exit reader outside facegate), clears the person's anti-passback state at every door.
  This is the simple "timed" anti-passback of access-control panels, not a full area/zone model. With
  ``anti_passback_confirmed: true`` a door's grant counts for anti-passback only once the door agent reports that
  the door really opened (``record_passage``; a grant nobody walked through blocks nothing), as
  door-sensor-confirmed anti-passback does.

The rules are the validated ``doors:`` section itself (``facegate.config.DoorConfig``): every setting keeps its YAML
name here and is trusted (ids, time zone names, window order were checked when the config was loaded). With no
doors configured, ``AccessRules.from_config`` builds the one implicit door ``DEFAULT_DOOR`` that admits every
enrolled identity at any time, with the default cooldown of ``DoorConfig`` (5 s: a quick-start door must not
grant the same person again and again while they stand in front of the camera).

Schedules are wall-clock windows in the door's zone (``zoneinfo``), to the second, so a 07:00–19:00 window follows
daylight saving time: it opens at 07:00 local on both sides of a DST change. ``end`` is exclusive; ``"24:00"`` ends
at midnight. A window whose end is before its start (22:00–06:00) runs across midnight and belongs to the day it
starts on. Cooldown and anti-passback use monotonic seconds, so a wall-clock jump cannot reopen a door.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from facegate.config import DAYS, CameraConfig, Config, DoorConfig, ScheduleConfig

log = logging.getLogger(__name__)

#: Door used when the config defines no doors at all (demo, quick start): every enrolled identity, any time.
DEFAULT_DOOR = "door"
_DAY_S = 86_400.0


def _seconds(t: time) -> float:
    """Seconds after local midnight (``time.max``, which ``"24:00"`` is read as, counts as the end of the day)."""
    if t == time.max:
        return _DAY_S
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


@dataclass(frozen=True)
class _Span:
    day: int  # datetime.weekday() of the day the window starts on
    start: float  # s after local midnight
    end: float  # s after that midnight; > 86 400 for a window running past midnight


class WeeklySchedule:
    """A door's ``schedule:`` compiled for lookups: per weekday, (start, end) seconds in local wall time."""

    def __init__(self, config: ScheduleConfig) -> None:
        self.tz = ZoneInfo(config.timezone)
        self._by_day: list[list[_Span]] = [[] for _ in range(7)]
        for w in config.windows:
            start, end = _seconds(w.start), _seconds(w.end)
            if end <= start:  # overnight: runs into the next day (the config refuses end == start)
                end += _DAY_S
            for day in w.days:
                i = DAYS.index(day)
                self._by_day[i].append(_Span(i, start, end))

    def allows(self, when: datetime) -> bool:
        """Is the instant ``when`` (timezone-aware) inside a window, in the zone's local wall time?

        Raises ``ValueError`` for a naive datetime (its zone would be a guess).
        """
        if when.tzinfo is None:
            raise ValueError("WeeklySchedule.allows needs a timezone-aware datetime")
        local = when.astimezone(self.tz)
        second = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        today = local.weekday()
        if any(s.start <= second < s.end for s in self._by_day[today]):
            return True
        yesterday = self._by_day[(today - 1) % 7]
        return any(second + _DAY_S < s.end for s in yesterday if s.end > _DAY_S)


class AccessRules:
    """The doors' rules plus the grant history that cooldown and anti-passback need. Thread-safe.

    ``doors``: validated ``DoorConfig`` objects. Times: ``now`` monotonic seconds, ``wall`` an aware datetime.
    Raises ``ValueError`` for two doors with one id (the config refuses them before this).
    """

    def __init__(self, doors: Iterable[DoorConfig]) -> None:
        self.doors: dict[str, DoorConfig] = {}
        self._schedules: dict[str, WeeklySchedule] = {}
        for d in doors:
            if d.id in self.doors:
                raise ValueError(f"doors: door {d.id!r} is defined twice")
            self.doors[d.id] = d
            if d.schedule is not None:
                self._schedules[d.id] = WeeklySchedule(d.schedule)
        self._lock = threading.Lock()
        self._last_grant: dict[tuple[Any, str], float] = {}  # (person, door) → monotonic s
        self._entries: dict[tuple[Any, str], float] = {}  # anti-passback: (person, entry door) → monotonic s

    @classmethod
    def from_config(cls, config: Config) -> AccessRules:
        """The rules of ``config.doors``; with no doors, the implicit ``DEFAULT_DOOR`` (everyone enrolled, any
        time, ``DoorConfig``'s default cooldown) and a warning that every enrolled identity is admitted."""
        if config.doors:
            return cls(config.doors)
        door = DoorConfig(id=DEFAULT_DOOR)
        log.warning("event=no_doors_configured door=%s cooldown_s=%g "
                    "note=every_enrolled_identity_is_admitted_at_any_time", DEFAULT_DOOR, door.cooldown_s)
        return cls([door])

    def update(self, other: AccessRules) -> None:
        """Take ``other``'s doors (SIGHUP reload) and keep this object's grant history, so a reload reopens no
        cooldown and forgets no anti-passback entry."""
        with self._lock:
            self.doors, self._schedules = other.doors, other._schedules

    def cooldown_s(self, door: str) -> float:
        """The door's ``cooldown_s`` (0 for an unknown door, which never grants anyway)."""
        d = self.doors.get(door)
        return d.cooldown_s if d else 0.0

    def open_at(self, door: str, when: datetime) -> bool:
        """Schedule check for the aware instant ``when``; True for a door without a schedule."""
        schedule = self._schedules.get(door)
        return schedule is None or schedule.allows(when)

    def check(self, *, identity_id: Any, groups: Iterable[str], door: str, wall: datetime, now: float) -> str | None:
        """``None`` when ``identity_id`` (in ``groups``) may pass ``door`` at ``wall``/``now``, else the reason."""
        d = self.doors.get(door)
        if d is None:
            return "unknown_door"
        if d.allowed_groups is not None and not (set(d.allowed_groups) & set(groups)):
            return "not_in_group"
        if not self.open_at(door, wall):
            return "outside_schedule"
        with self._lock:
            last = self._last_grant.get((identity_id, door))
            if last is not None and d.cooldown_s > 0 and now - last < d.cooldown_s:
                return "cooldown"
            entry = self._entries.get((identity_id, door))
            if entry is not None and d.anti_passback and not d.exit and now - entry < d.anti_passback_s:
                return "anti_passback"
        return None

    def record_grant(self, identity_id: Any, door: str, now: float) -> None:
        """Remember a grant (monotonic ``now``) for cooldown, and for anti-passback unless the door waits for a
        confirmed passage."""
        d = self.doors.get(door)
        with self._lock:
            self._last_grant[(identity_id, door)] = now
            if d is not None and not d.anti_passback_confirmed:
                self._passed(d, identity_id, now)
            self._prune(now)

    def record_passage(self, identity_id: Any, door: str, now: float) -> None:
        """The door agent reports that the person granted at ``door`` really went through (monotonic ``now``):
        anti-passback counts it at a door with ``anti_passback_confirmed`` (elsewhere the grant already did)."""
        d = self.doors.get(door)
        if d is None or not d.anti_passback_confirmed:
            return
        with self._lock:
            self._passed(d, identity_id, now)
            self._prune(now)

    def _passed(self, d: DoorConfig, identity_id: Any, now: float) -> None:
        if d.exit:
            self._clear_entries(identity_id)
        elif d.anti_passback:
            self._entries[(identity_id, d.id)] = now

    def record_exit(self, identity_id: Any) -> None:
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


def camera_doors(config: Config, cameras: Iterable[CameraConfig]) -> dict[str, str]:
    """Camera id → the door it watches: the camera's ``door``, the door listing it, the only door, else
    ``DEFAULT_DOOR`` (the implicit door when none is configured; with several doors and no assignment, a door
    without rules, which never grants)."""
    out = {}
    for cam in cameras:
        if not config.doors:
            out[cam.id] = DEFAULT_DOOR
        elif cam.door is not None:
            out[cam.id] = cam.door
        else:
            listed = [d.id for d in config.doors if cam.id in d.cameras]
            out[cam.id] = listed[0] if listed else config.doors[0].id if len(config.doors) == 1 else DEFAULT_DOOR
    return out
