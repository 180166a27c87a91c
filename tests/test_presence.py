"""Issue 14 in the decision engine: one grant per passage (items 4), a minimum face size for a vote (item 5) and the
lookalike margin (item 3). Same tiny exact gallery as tests/test_decision.py."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from test_decision import ALICE, Door, euclidean_search, face, feed, make, policy

from facegate.config import Config, DecisionConfig, DoorConfig
from facegate.runtime.presence import Presence
from facegate.runtime.rules import DEFAULT_DOOR, AccessRules


def decided(engine, clock, dets, frames: int, dt: float = 0.1) -> list[tuple]:
    return [(d.type, d.reason, d.track_id) for _ in range(frames) for d in feed(engine, clock, dets, dt=dt)]


def test_a_broken_track_is_the_same_passage_no_second_grant_and_no_deny():
    # the issue: with a 5 s cooldown the same person was denied (cooldown) on a new track, then granted again 2 s
    # later; one grant per new track when no cooldown applied
    engine, clock = make(policy(track_max_age_s=0.3, repeat_after_s=5.0), doors=[Door("front", cooldown_s=5.0)])
    assert decided(engine, clock, face(ALICE, x=100), 3) == [("grant", None, 1)]
    assert decided(engine, clock, face(ALICE, x=100), 10) == []
    clock.t += 0.5  # the track breaks (a hand in front of the face) and the face comes back elsewhere: new track
    assert decided(engine, clock, face(ALICE, x=400), 80) == []  # 8 s in front of the camera: nothing at all
    assert engine.stats["same_passage"] >= 1 and engine.stats["grant"] == 1 and engine.stats["deny"] == 0
    clock.t += 4.0  # gone for longer than presence_gap_s (3 s): the next visit is a new passage
    assert decided(engine, clock, face(ALICE, x=100), 3) == [("grant", None, 3)]


def test_a_new_passage_within_the_cooldown_is_denied_once():
    engine, clock = make(policy(track_max_age_s=0.3, presence_gap_s=1.0), doors=[Door("front", cooldown_s=20.0)])
    assert decided(engine, clock, face(ALICE), 3) == [("grant", None, 1)]
    clock.t += 2.0
    assert decided(engine, clock, face(ALICE), 5) == [("deny", "cooldown", 2)]


def test_only_matching_faces_keep_a_passage_alive():
    # a face that matches nobody (turned away, or the tracker carried the track onto someone else) is no sighting:
    # shorter than presence_gap_s it changes nothing, longer and the next match is a new passage
    engine, clock = make(policy(track_max_age_s=0.3, repeat_after_s=1.0), doors=[Door("front", cooldown_s=0.0)])
    assert decided(engine, clock, face(ALICE, x=100), 3) == [("grant", None, 1)]
    turned = face(np.zeros_like(ALICE), x=100)  # the same box, a face that matches nobody
    assert [t for t in decided(engine, clock, turned, 20) if t[0] != "unknown"] == []  # 2 s
    assert decided(engine, clock, face(ALICE, x=400), 30) == []  # new track, same passage: no grant
    assert [t for t in decided(engine, clock, turned, 40) if t[0] != "unknown"] == []  # 4 s > presence_gap_s
    assert decided(engine, clock, face(ALICE, x=400), 3) == [("grant", None, 4)]  # a new passage (4th track)


def test_passages_are_per_camera():
    presence = Presence(3.0)
    presence.grant("cam1", "alice", 10.0)
    assert presence.granted("cam1", "alice", 12.0) and not presence.granted("cam2", "alice", 12.0)
    presence.seen("cam1", "alice", 12.5)
    assert presence.granted("cam1", "alice", 15.4)  # 2.9 s after the last sighting
    presence.seen("cam1", "alice", 16.0)  # 3.5 s after: a new passage
    assert not presence.granted("cam1", "alice", 16.0)
    presence.prune("cam1", 30.0)
    assert not presence.granted("cam1", "alice", 30.0)


def test_the_quick_start_door_has_the_default_cooldown():
    rules = AccessRules.from_config(Config())  # no doors: the implicit door of the quick start
    assert rules.cooldown_s(DEFAULT_DOOR) == DoorConfig.model_fields["cooldown_s"].default == 5.0


def test_faces_below_the_packs_minimum_are_tracked_but_never_vote():
    engine, clock = make()
    engine.min_vote_face_px = 121  # the test faces are 120 px wide
    out = decided(engine, clock, face(ALICE), 40)
    assert [t[0] for t in out] == ["unknown"]  # reported, not granted
    assert engine.stats["small_face_frames"] >= 3
    engine.min_vote_face_px = 120
    clock.t += 40.0
    assert decided(engine, clock, face(ALICE), 3) == [("grant", None, 2)]


def test_lookalikes_need_the_lookalike_margin():
    # ALICE beats bob by 0.061: above margin 0.05, below lookalike_margin 0.10
    partners = {"alice": frozenset({"bob"}), "bob": frozenset({"alice"})}
    engine, clock = make()
    engine.lookalikes = lambda scorer: partners
    out = decided(engine, clock, face(ALICE), 10)
    assert [t[0] for t in out] == ["unknown"] and engine.stats["lookalike_margin_not_met"] >= 3
    engine, clock = make(policy(lookalike_margin=0.06))
    engine.lookalikes = lambda scorer: partners
    assert decided(engine, clock, face(ALICE), 3) == [("grant", None, 1)]
    engine, clock = make()  # not lookalikes: the ordinary margin applies
    engine.lookalikes = lambda scorer: {"carol": frozenset({"alice"})}
    assert decided(engine, clock, face(ALICE), 3) == [("grant", None, 1)]


def test_a_lookalike_missing_from_the_candidates_counts_as_the_last_one():
    engine, _ = make()
    cands = euclidean_search(ALICE[None])[0]  # alice 0.3, bob 0.361, carol 1.04
    partners = {"alice": frozenset({"dave"})}  # dave is not among the candidates: bounded by carol's 1.04
    assert engine.frame_match(cands, partners)[0] is not None
    assert engine.frame_match(cands[:2], partners)[0] is None  # bounded by bob's 0.361: margin 0.061 < 0.10
    assert engine.frame_match(cands[:1], partners)[0] is None  # only alice: no bound at all, fail closed


def test_lookalike_margin_below_margin_is_a_config_error():
    with pytest.raises(ValidationError, match="lookalike_margin"):
        DecisionConfig(margin=0.1, lookalike_margin=0.05)
    assert DecisionConfig(margin=0.1).lookalike_margin is None  # None: the pack's (scoring.margins), never below
