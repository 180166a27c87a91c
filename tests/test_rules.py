"""Access rules: groups, weekly schedules in a time zone (DST, across midnight), cooldown, anti-passback."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from facegate.config import DAYS, DoorConfig, ScheduleConfig
from facegate.runtime.rules import AccessRules, WeeklySchedule


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def schedule(tz: str, *windows: tuple[list[str], str, str]) -> WeeklySchedule:
    return WeeklySchedule(ScheduleConfig(timezone=tz, windows=[{"days": d, "start": a, "end": b}
                                                               for d, a, b in windows]))


WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


def test_office_hours_follow_daylight_saving_time():
    # Berlin: CET (UTC+1) until Sun 29 Mar 2026 02:00, CEST (UTC+2) after; CET again from Sun 25 Oct 2026.
    s = schedule("Europe/Berlin", (WEEKDAYS, "07:00", "19:00"))
    assert not s.allows(utc("2026-03-23T05:30"))  # Mon 06:30 CET: closed
    assert s.allows(utc("2026-03-23T06:00"))  # Mon 07:00 CET: opens
    assert s.allows(utc("2026-03-30T05:30"))  # Mon 07:30 CEST: same UTC time of day, now open
    assert not s.allows(utc("2026-03-30T17:00"))  # Mon 19:00 CEST: closed (end exclusive)
    assert s.allows(utc("2026-03-30T16:59:59"))
    assert not s.allows(utc("2026-10-26T05:30"))  # Mon 06:30 CET after the change back
    assert not s.allows(utc("2026-03-28T10:00"))  # Saturday


def test_window_across_midnight_belongs_to_its_start_day():
    s = schedule("Europe/Berlin", (["fri"], "22:00", "02:00"))
    assert not s.allows(utc("2026-06-05T19:59"))  # Fri 21:59 CEST
    assert s.allows(utc("2026-06-05T20:00"))  # Fri 22:00
    assert s.allows(utc("2026-06-05T23:30"))  # Sat 01:30
    assert not s.allows(utc("2026-06-06T00:00"))  # Sat 02:00: closed
    assert not s.allows(utc("2026-06-06T20:30"))  # Sat 22:30: only Friday nights


def test_night_shift_across_the_dst_night():
    # Sat 28 → Sun 29 Mar 2026: 02:00-03:00 local does not exist; the window ends at 06:00 local wall time.
    s = schedule("Europe/Berlin", (["sat"], "22:00", "06:00"))
    assert s.allows(utc("2026-03-28T21:00"))  # Sat 22:00 CET
    assert s.allows(utc("2026-03-29T03:59"))  # Sun 05:59 CEST
    assert not s.allows(utc("2026-03-29T04:00"))  # Sun 06:00 CEST


def test_several_windows_and_midnight():
    s = schedule("UTC", (["sat", "sun"], "09:00", "12:00"), (["sat", "sun"], "14:00", "24:00"),
                 (["fri", "sat", "sun", "mon"], "06:00", "07:00"))
    assert s.allows(utc("2026-06-06T10:00"))  # Sat
    assert not s.allows(utc("2026-06-06T13:00"))
    assert s.allows(utc("2026-06-07T23:59:59.9"))  # Sun until 24:00
    assert not s.allows(utc("2026-06-08T00:00"))  # Mon 00:00: Sunday's window has ended
    assert s.allows(utc("2026-06-08T06:30"))  # Mon 06:00-07:00
    assert not s.allows(utc("2026-06-09T06:30"))  # Tue
    assert schedule("UTC", (DAYS, "00:00", "24:00")).allows(utc("2026-06-09T03:00"))


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule("UTC", (DAYS, "00:00", "24:00")).allows(datetime(2026, 1, 1))


WED_NOON = utc("2026-06-03T12:00")
Door = DoorConfig


def test_groups_unknown_door_and_reason_order():
    lab_hours = {"timezone": "UTC", "windows": [{"days": WEEKDAYS, "start": "08:00", "end": "18:00"}]}
    rules = AccessRules([Door(id="lab", allowed_groups=["staff"], schedule=lab_hours),
                         Door(id="lobby"), Door(id="vault", allowed_groups=[])])
    check = rules.check
    assert check(identity_id=1, groups=["staff"], door="lab", wall=WED_NOON, now=0) is None
    assert check(identity_id=2, groups=["visitor"], door="lab", wall=WED_NOON, now=0) == "not_in_group"
    # group is checked before the schedule
    assert check(identity_id=2, groups=[], door="lab", wall=utc("2026-06-03T20:00"), now=0) == "not_in_group"
    assert check(identity_id=1, groups=["staff"], door="lab", wall=utc("2026-06-03T20:00"), now=0) == "outside_schedule"
    assert check(identity_id=2, groups=[], door="lobby", wall=WED_NOON, now=0) is None  # None = everyone enrolled
    assert check(identity_id=1, groups=["staff"], door="vault", wall=WED_NOON, now=0) == "not_in_group"
    assert check(identity_id=1, groups=["staff"], door="garage", wall=WED_NOON, now=0) == "unknown_door"


def test_cooldown_is_per_person_and_door():
    rules = AccessRules([Door(id="a", cooldown_s=10), Door(id="b", cooldown_s=10)])
    rules.record_grant("p", "a", now=100.0)
    assert rules.check(identity_id="p", groups=(), door="a", wall=WED_NOON, now=105.0) == "cooldown"
    assert rules.check(identity_id="q", groups=(), door="a", wall=WED_NOON, now=105.0) is None
    assert rules.check(identity_id="p", groups=(), door="b", wall=WED_NOON, now=105.0) is None
    assert rules.check(identity_id="p", groups=(), door="a", wall=WED_NOON, now=110.0) is None


def test_anti_passback_until_an_exit_is_passed():
    rules = AccessRules([Door(id="in", anti_passback=True, anti_passback_s=600),
                         Door(id="out", exit=True, anti_passback=True, anti_passback_s=600)])
    kw = dict(groups=(), wall=WED_NOON)
    rules.record_grant("p", "in", now=0.0)
    assert rules.check(identity_id="p", door="in", now=60.0, **kw) == "anti_passback"
    assert rules.check(identity_id="p", door="out", now=60.0, **kw) is None  # exits are never blocked
    rules.record_grant("p", "out", now=120.0)
    assert rules.check(identity_id="p", door="in", now=130.0, **kw) is None
    rules.record_grant("p", "in", now=200.0)
    rules.record_exit("p")  # an exit reader outside facegate
    assert rules.check(identity_id="p", door="in", now=210.0, **kw) is None
    rules.record_grant("p", "in", now=300.0)
    assert rules.check(identity_id="p", door="in", now=901.0, **kw) is None  # window over


def test_anti_passback_is_off_unless_enabled():
    rules = AccessRules([Door(id="in", anti_passback_s=600, cooldown_s=0)])
    rules.record_grant("p", "in", now=0.0)
    assert rules.check(identity_id="p", groups=(), door="in", wall=WED_NOON, now=60.0) is None


def test_duplicate_doors_are_refused():
    with pytest.raises(ValueError, match="twice"):
        AccessRules([Door(id="a"), Door(id="a")])


def test_confirmed_anti_passback_counts_only_a_real_passage():
    rules = AccessRules([Door(id="in", anti_passback=True, anti_passback_s=600, anti_passback_confirmed=True,
                              cooldown_s=0),
                         Door(id="out", exit=True, anti_passback_confirmed=True, cooldown_s=0)])
    kw = dict(groups=(), wall=WED_NOON)
    rules.record_grant("p", "in", now=0.0)  # granted, but nobody walked through
    assert rules.check(identity_id="p", door="in", now=60.0, **kw) is None
    rules.record_grant("p", "in", now=70.0)
    rules.record_passage("p", "in", now=72.0)  # the door contact saw the door open
    assert rules.check(identity_id="p", door="in", now=100.0, **kw) == "anti_passback"
    rules.record_grant("p", "out", now=110.0)  # an exit grant alone does not clear it …
    assert rules.check(identity_id="p", door="in", now=120.0, **kw) == "anti_passback"
    rules.record_passage("p", "out", now=121.0)  # … the exit passage does
    assert rules.check(identity_id="p", door="in", now=130.0, **kw) is None
    rules.record_passage("q", "lobby", now=131.0)  # a passage for a door without rules changes nothing
    assert "lobby" not in rules.doors
