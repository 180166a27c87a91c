"""PassageTracker: a passage counts only when signed by that door's agent key, for a grant this daemon issued, for
that door, in time; any other input (unsigned, signed by another door, forged, replayed, malformed, huge) is refused
and counted, never an exception."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from facegate.config import DoorConfig
from facegate.runtime.decision import Decision
from facegate.runtime.events import SignedEvent
from facegate.runtime.passages import KEEP_S, PassageTracker
from facegate.runtime.rules import AccessRules
from facegate.signing import sign_payload_v2

NOON = datetime(2026, 6, 3, 12, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


AGENT_KEYS = {"front": Ed25519PrivateKey.generate(), "back": Ed25519PrivateKey.generate(),
              "exit": Ed25519PrivateKey.generate()}


def _tracker() -> tuple[PassageTracker, AccessRules, Clock]:
    rules = AccessRules([DoorConfig(id="front", anti_passback=True, anti_passback_confirmed=True, cooldown_s=0),
                         DoorConfig(id="back", anti_passback=True, anti_passback_confirmed=True, cooldown_s=0),
                         DoorConfig(id="exit", exit=True, anti_passback_confirmed=True, cooldown_s=0)])
    clock = Clock()
    keys = {door: key.public_key() for door, key in AGENT_KEYS.items()}
    return PassageTracker(rules, keys, clock), rules, clock


def _grant(tracker: PassageTracker, event_id: str, door: str = "front", person: int = 7) -> None:
    d = Decision(type="grant", camera="cam1", door=door, track_id=1, captured_at=NOON, decided_at=NOON,
                 identity_id=person, identity_name="P")
    tracker.emit(SignedEvent({"event_id": event_id, "type": "grant"}, d, f"site/{door}/event"))


def _passage(door: str, event_id: str, signer: str | None = "") -> bytes:
    """A passage as the agent of ``signer`` (default: ``door``'s own; None: unsigned) publishes it."""
    payload = {"type": "passage", "door": door, "event_id": event_id, "granted_at": "x", "opened_at": "y"}
    if signer is not None:
        payload = sign_payload_v2(payload, AGENT_KEYS[signer or door])
    return json.dumps(payload).encode()


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


def test_an_unsigned_or_foreign_signed_passage_never_counts():
    tracker, rules, _ = _tracker()
    _grant(tracker, "e1")
    tracker.on_passage("site/front/passage", _passage("front", "e1", signer=None))
    tracker.on_passage("site/front/passage", _passage("front", "e1", signer="back"))  # another door's agent
    forged = json.loads(_passage("front", "e1"))
    forged["opened_at"] = "z"  # altered after signing
    tracker.on_passage("site/front/passage", json.dumps(forged).encode())
    assert tracker.counts == {"unsigned": 1, "unknown_key": 1, "bad_signature": 1} and not _blocked(rules)
    tracker.on_passage("site/front/passage", _passage("front", "e1"))  # the grant was not used up by the forgeries
    assert tracker.counts["confirmed"] == 1 and _blocked(rules)


def test_a_forged_exit_passage_cannot_let_a_person_in_again():
    """The attack on the unsigned first version: person 7 entered (confirmed), was granted at the exit but never
    walked through; anyone on the broker saw the exit grant's event id and published a passage for it. The entry
    must stay blocked: only the exit agent's signed passage clears it."""
    tracker, rules, clock = _tracker()
    _grant(tracker, "in1", door="front")
    tracker.on_passage("site/front/passage", _passage("front", "in1"))
    assert _blocked(rules)
    _grant(tracker, "out1", door="exit")
    tracker.on_passage("site/exit/passage", _passage("exit", "out1", signer=None))
    tracker.on_passage("site/exit/passage", _passage("exit", "out1", signer="front"))
    assert _blocked(rules), "a forged exit passage cleared the entry"
    tracker.on_passage("site/exit/passage", _passage("exit", "out1"))  # the exit agent's own: he really left
    assert not _blocked(rules)


def test_a_signed_grant_event_republished_as_a_passage_never_counts():
    """Second attack: with the daemon's event key given as a door's passage key, a grant event (signed, carrying
    door and event_id) republished on the passage topic counted. Passages are typed, and the daemon refuses its own
    event key (or one key for two doors) as a passage key at start."""
    from facegate.config_rules import passage_keys_problem
    from facegate.signing import key_id

    tracker, rules, _ = _tracker()
    _grant(tracker, "x1", door="exit")
    event = sign_payload_v2({"type": "grant", "door": "exit", "event_id": "x1"}, AGENT_KEYS["exit"])
    tracker.on_passage("site/exit/passage", json.dumps(event).encode())
    assert tracker.counts == {"not_passage": 1}
    kids = {door: key_id(k.public_key()) for door, k in AGENT_KEYS.items()}
    assert passage_keys_problem(kids, None) is None
    assert "the daemon's own event signing key" in passage_keys_problem(kids, kids["exit"])
    assert "share one passage_public_key" in passage_keys_problem({**kids, "back": kids["front"]}, None)


def test_another_doors_agent_cannot_use_up_a_grants_passage():
    tracker, rules, _ = _tracker()
    _grant(tracker, "e1", door="front")
    tracker.on_passage("site/back/passage", _passage("back", "e1"))  # back's own key, front's grant
    tracker.on_passage("site/front/passage", _passage("front", "e1"))  # front's real passage still counts
    assert tracker.counts == {"wrong_door": 1, "confirmed": 1} and _blocked(rules)
