"""PassageTracker: a passage counts only for a grant this daemon issued, for that door, in time; any other input
(forged, replayed, malformed, huge) is refused and counted, never an exception."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from facegate.config import DoorConfig
from facegate.runtime.decision import Decision
from facegate.runtime.events import SignedEvent
from facegate.runtime.passages import KEEP_S, PassageTracker
from facegate.runtime.rules import AccessRules

NOON = datetime(2026, 6, 3, 12, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _tracker() -> tuple[PassageTracker, AccessRules, Clock]:
    rules = AccessRules([DoorConfig(id="front", anti_passback=True, anti_passback_confirmed=True, cooldown_s=0),
                         DoorConfig(id="back", anti_passback=True, anti_passback_confirmed=True, cooldown_s=0)])
    clock = Clock()
    return PassageTracker(rules, clock), rules, clock


def _grant(tracker: PassageTracker, event_id: str, door: str = "front", person: int = 7) -> None:
    d = Decision(type="grant", camera="cam1", door=door, track_id=1, captured_at=NOON, decided_at=NOON,
                 identity_id=person, identity_name="P")
    tracker.emit(SignedEvent({"event_id": event_id, "type": "grant"}, d, f"site/{door}/event"))


def _passage(door: str, event_id: str) -> bytes:
    return json.dumps({"door": door, "event_id": event_id, "granted_at": "x", "opened_at": "y"}).encode()


def _blocked(rules: AccessRules, door: str = "front", now: float = 1001.0) -> bool:
    return rules.check(identity_id=7, groups=(), door=door, wall=NOON, now=now) == "anti_passback"


def test_only_a_passage_for_our_own_grant_at_that_door_counts_once():
    tracker, rules, clock = _tracker()
    _grant(tracker, "e1")
    tracker.on_passage("site/front/passage", _passage("front", "nope"))  # not a grant of ours
    tracker.on_passage("site/back/passage", _passage("back", "e1"))  # our grant, but for another door
    assert not _blocked(rules)
    _grant(tracker, "e2")
    tracker.on_passage("site/back/passage", _passage("front", "e2"))  # topic and payload disagree on the door
    tracker.on_passage("site/front/passage", _passage("front", "e2"))
    assert _blocked(rules)
    assert tracker.counts == {"unknown_grant": 1, "wrong_door": 2, "confirmed": 1}
    tracker.on_passage("site/front/passage", _passage("front", "e2"))  # replayed: one passage per grant
    assert tracker.counts["unknown_grant"] == 2


def test_a_late_passage_does_not_count():
    tracker, rules, clock = _tracker()
    _grant(tracker, "e1")
    clock.t += KEEP_S + 1
    tracker.on_passage("site/front/passage", _passage("front", "e1"))
    assert tracker.counts == {"too_late": 1} and not _blocked(rules, now=clock.t)


@settings(max_examples=300, derandomize=True)
@given(topic=st.text(max_size=40), payload=st.one_of(
    st.binary(max_size=6000),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                 max_leaves=20).map(lambda v: json.dumps(v).encode())))
def test_any_input_is_refused_without_raising(topic, payload):
    tracker, rules, _ = _tracker()
    _grant(tracker, "e1")
    tracker.on_passage(topic, payload)
    assert sum(tracker.counts.values()) == 1 and not _blocked(rules)
