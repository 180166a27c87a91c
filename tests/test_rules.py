"""Access rules: groups, weekly schedules in a time zone (DST, across midnight), cooldown, anti-passback."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from facegate.errors import ConfigError
from facegate.runtime.rules import AccessRules, Door, WeeklySchedule


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_office_hours_follow_daylight_saving_time():
    # Berlin: CET (UTC+1) until Sun 29 Mar 2026 02:00, CEST (UTC+2) after; CET again from Sun 25 Oct 2026.
    s = WeeklySchedule({"mon-fri": "07:00-19:00"}, "Europe/Berlin")
    assert not s.allows(utc("2026-03-23T05:30"))  # Mon 06:30 CET: closed
    assert s.allows(utc("2026-03-23T06:00"))  # Mon 07:00 CET: opens
    assert s.allows(utc("2026-03-30T05:30"))  # Mon 07:30 CEST: same UTC time of day, now open
    assert not s.allows(utc("2026-03-30T17:00"))  # Mon 19:00 CEST: closed (end exclusive)
    assert s.allows(utc("2026-03-30T16:59"))
    assert not s.allows(utc("2026-10-26T05:30"))  # Mon 06:30 CET after the change back
    assert not s.allows(utc("2026-03-28T10:00"))  # Saturday


def test_window_across_midnight_belongs_to_its_start_day():
    s = WeeklySchedule({"fri": "22:00-02:00"}, "Europe/Berlin")
    assert not s.allows(utc("2026-06-05T19:59"))  # Fri 21:59 CEST
    assert s.allows(utc("2026-06-05T20:00"))  # Fri 22:00
    assert s.allows(utc("2026-06-05T23:30"))  # Sat 01:30
    assert not s.allows(utc("2026-06-06T00:00"))  # Sat 02:00: closed
    assert not s.allows(utc("2026-06-06T20:30"))  # Sat 22:30: only Friday nights


def test_night_shift_across_the_dst_night():
    # Sat 28 → Sun 29 Mar 2026: 02:00-03:00 local does not exist; the window ends at 06:00 local wall time.
    s = WeeklySchedule({"sat": "22:00-06:00"}, "Europe/Berlin")
    assert s.allows(utc("2026-03-28T21:00"))  # Sat 22:00 CET
    assert s.allows(utc("2026-03-29T03:59"))  # Sun 05:59 CEST
    assert not s.allows(utc("2026-03-29T04:00"))  # Sun 06:00 CEST


def test_day_keys_lists_wrapping_ranges_and_multiple_windows():
    s = WeeklySchedule({"sat,sun": ["09:00-12:00", "14:00-24:00"], "fri-mon": "06:00-07:00"}, "UTC")
    assert s.allows(utc("2026-06-06T10:00"))  # Sat
    assert not s.allows(utc("2026-06-06T13:00"))
    assert s.allows(utc("2026-06-07T23:59"))  # Sun until 24:00
    assert s.allows(utc("2026-06-08T06:30"))  # Mon, in fri-mon
    assert not s.allows(utc("2026-06-09T06:30"))  # Tue
    assert WeeklySchedule({"daily": "00:00-24:00"}).allows(utc("2026-06-09T03:00"))


@pytest.mark.parametrize(
    "windows, tz, message",
    [
        ({"mon-fri": "7-19"}, "UTC", "HH:MM"),
        ({"funday": "07:00-19:00"}, "UTC", "unknown day"),
        ({"mon": "07:00"}, "UTC", "07:00-19:00"),
        ({"mon": "25:00-26:00"}, "UTC", "HH:MM"),
        ({"mon": "07:00-19:00"}, "Mars/Olympus", "IANA"),
    ],
)
def test_bad_schedules_name_the_door_and_key(windows, tz, message):
    with pytest.raises(ConfigError, match=message) as err:
        Door("lobby", schedule=windows, timezone=tz)
    assert "doors.lobby" in str(err.value)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        WeeklySchedule({"daily": "00:00-24:00"}).allows(datetime(2026, 1, 1))


WED_NOON = utc("2026-06-03T12:00")


def test_groups_unknown_door_and_reason_order():
    rules = AccessRules([Door("lab", allowed_groups={"staff"}, schedule={"mon-fri": "08:00-18:00"}, timezone="UTC"),
                         Door("lobby"), Door("vault", allowed_groups=set())])
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
    rules = AccessRules([Door("a", cooldown_s=10), Door("b", cooldown_s=10)])
    rules.record_grant("p", "a", now=100.0)
    assert rules.check(identity_id="p", groups=(), door="a", wall=WED_NOON, now=105.0) == "cooldown"
    assert rules.check(identity_id="q", groups=(), door="a", wall=WED_NOON, now=105.0) is None
    assert rules.check(identity_id="p", groups=(), door="b", wall=WED_NOON, now=105.0) is None
    assert rules.check(identity_id="p", groups=(), door="a", wall=WED_NOON, now=110.0) is None


def test_anti_passback_until_an_exit_is_passed():
    rules = AccessRules([Door("in", anti_passback_s=600), Door("out", exit=True, anti_passback_s=600)])
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


def test_duplicate_doors_and_negative_times_are_config_errors():
    with pytest.raises(ConfigError, match="twice"):
        AccessRules([Door("a"), Door("a")])
    with pytest.raises(ConfigError, match="cooldown_s"):
        Door("a", cooldown_s=-1)
