"""Work once per face (runtime/decision.py ``plan``): a decided track is not embedded on every frame, it is
re-verified every ``reverify_s`` and when its box jumps, a check that disagrees ends its decided state, a skipped
face never produces a decision, and the decisions themselves are those the engine makes without skipping.

The frames go through ``plan`` → "embed" only the faces it asks for → ``process``, as the inference stage does; the
gallery and probes are the exact synthetic ones of tests/test_decision.py.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from test_decision import ALICE, STRANGER, T0, Clock, Door, face, make, policy

from facegate.detections import Detections


class Planned:
    """Feeds frames the way the inference stage does and records what ``plan`` asked to embed."""

    def __init__(self, engine, clock: Clock) -> None:
        self.engine, self.clock = engine, clock
        self.asked: list[bool] = []  # per frame of one face: was it embedded?

    def feed(self, dets: Detections, dt: float = 0.1, age: float = 0.02, force_skip: bool = False) -> list:
        self.clock.t += dt
        cap = self.clock.t - age
        ids, embed = self.engine.plan("cam1", dets, cap)
        if force_skip:
            embed = np.zeros(len(dets), bool)
        data = dict(dets.data)
        emb = np.array(data["embeddings"], np.float32)
        emb[~embed] = np.nan  # what the inference stage hands on for faces it did not embed
        data.update(embeddings=emb, track_ids=ids, embedded=embed)
        self.asked.extend(bool(e) for e in embed)
        planned = Detections(dets.boxes, dets.scores, dets.landmarks, data)
        return self.engine.process("cam1", planned, captured_at=cap,
                                   captured_wall=T0 + timedelta(seconds=cap - 100.0))

    def run(self, dets: Detections, frames: int, **kw) -> list:
        return [d for _ in range(frames) for d in self.feed(dets, **kw)]


def granted(**kw) -> Planned:
    engine, clock = make(policy(**({"repeat_after_s": 30.0, "reverify_s": 1.0} | kw)))
    p = Planned(engine, clock)
    assert [d.type for d in p.run(face(ALICE), 3)] == ["grant"]
    return p


def test_a_granted_track_is_embedded_only_when_its_check_is_due():
    p = granted()
    p.asked.clear()
    assert p.run(face(ALICE), 30) == []  # 3 s of the same person standing there: no new decision
    # frames 0.1 s apart: a check once reverify_s (1 s) has passed since the last one, confirmed, and so on
    checks = [i for i, asked in enumerate(p.asked) if asked]
    assert len(checks) in (2, 3) and all(10 <= b - a <= 11 for a, b in zip([-1, *checks], checks, strict=False))
    assert p.engine.stats["reverified"] == len(checks) and p.engine.stats["faces_not_embedded"] == 30 - len(checks)


def test_reverify_0_embeds_every_face_on_every_frame():
    p = granted(reverify_s=0.0)
    p.asked.clear()
    assert p.run(face(ALICE), 10) == []
    assert all(p.asked)


def test_a_box_jump_is_checked_at_once():
    p = granted()
    p.asked.clear()
    assert p.run(face(ALICE), 2) == [] and p.asked == [False, False]
    p.feed(face(ALICE, x=150.0))  # 50 px on a 120 px box: still the same track (landmarks agree), IoU 0.41
    assert p.asked[-1] is True
    assert p.run(face(ALICE, x=150.0), 3) == [] and p.asked[-3:] == [False] * 3
    # a slow drift adds up: the box is compared with the box of the last check, not the previous frame's
    drift = [p.feed(face(ALICE, x=150.0 + 8 * i)) for i in range(1, 8)]
    assert drift == [[]] * 7 and any(p.asked[-7:])


def test_a_skipped_face_never_produces_a_decision():
    engine, clock = make(policy(reverify_s=1.0))
    p = Planned(engine, clock)
    # a face that is not embedded adds no vote: 10 frames of it are not 3 votes for a grant
    assert p.run(face(ALICE), 10, force_skip=True) == []
    assert engine.stats["grant"] == 0
    assert [d.type for d in p.run(face(ALICE), 3)] == ["grant"]  # embedded, it is decided as usual


def test_a_check_that_disagrees_ends_the_decided_state():
    p = granted()
    p.run(face(ALICE), 10)
    p.asked.clear()
    assert p.feed(face(STRANGER)) == [] and p.asked == [True]  # the check: somebody else is in that box now
    assert p.engine.stats["reverify_failed"] == 1
    # no longer decided: every frame is embedded again, and a stranger in the granted window opens nothing
    assert p.run(face(STRANGER), 5) == [] and all(p.asked)
    assert p.engine.stats["grant"] == 1
    # the granted person's votes are back (k of n): decided again, without a second event
    p.asked.clear()
    assert p.run(face(ALICE), 8) == []
    assert p.asked[-3:] == [False] * 3


def test_a_rules_deny_is_checked_again_and_the_grant_follows_when_the_rules_allow():
    engine, clock = make(policy(k=3, n=5, track_max_age_s=0.5, repeat_after_s=30.0, reverify_s=1.0, presence_gap_s=1.0),
                         doors=[Door("front", cooldown_s=5.0)])
    p = Planned(engine, clock)
    assert [d.type for d in p.run(face(ALICE), 3)] == ["grant"]
    clock.t += 2.0  # walked away: the track expires; back as a new track within the door's 5 s cooldown
    denied = p.run(face(ALICE), 3)
    assert [(d.type, d.reason, d.track_id) for d in denied] == [("deny", "cooldown", 2)]
    p.asked.clear()
    ends = 5.0 - (clock.t - 100.3)  # the first grant's frame was decided at 100.3 s
    later = [(i, d) for i in range(40) for d in p.feed(face(ALICE))]  # 4 s more
    assert [(d.type, d.track_id) for _, d in later] == [("grant", 2)]
    # while denied the face was embedded about once a second; the check after the cooldown ended (within
    # reverify_s + a frame) ended the decided state, and k = 3 fresh votes granted
    at = 0.1 * (later[0][0] + 1)
    assert ends <= at <= ends + 1.1 + 0.3 + 1e-6, (ends, at)
    assert p.asked[: int(ends * 10)].count(True) <= int(ends) + 1


def test_when_the_window_ends_the_track_is_voted_afresh_without_a_spurious_unknown():
    p = granted(repeat_after_s=2.0, unknown_after_s=1.0)
    later = p.run(face(ALICE), 30)  # 3 s: the 2 s window ends, the track is decided again from fresh votes …
    assert later == []  # … still the same passage (one grant per passage), and no unknown either
    assert p.engine.stats["same_passage"] >= 1


def test_an_unknown_track_is_checked_and_a_match_or_a_growing_box_reopens_the_vote():
    engine, clock = make(policy(reverify_s=1.0))
    p = Planned(engine, clock)
    assert [d.type for d in p.run(face(STRANGER), 5)] == ["unknown"]
    p.asked.clear()
    assert p.run(face(STRANGER), 5) == [] and not any(p.asked)
    # the person steps closer: a bigger box is a box jump, checked at once; now they match → every frame → grant
    closer = face(ALICE)
    closer.boxes[:] = [[50, 50, 250, 290]]  # IoU 0.35 with the last checked box, still the same track
    closer.landmarks[:] = (closer.landmarks - [160, 170]) * 1.5 + [150, 170]
    out = p.run(closer, 4)
    assert [d.type for d in out] == ["grant"]
    assert p.asked[5:9] == [True, True, True, False]  # checked at once, voted on every frame, then decided again


def test_with_reverify_unknown_off_an_unknown_track_is_embedded_on_every_frame():
    engine, clock = make(policy(reverify_s=1.0, reverify_unknown=False))
    p = Planned(engine, clock)
    assert [d.type for d in p.run(face(STRANGER), 5)] == ["unknown"]
    p.asked.clear()
    assert p.run(face(STRANGER), 5) == [] and all(p.asked)


def test_a_near_miss_unknown_keeps_voting_on_every_frame():
    near = np.eye(8, dtype=np.float32)[0] + 0.62 * np.eye(8, dtype=np.float32)[6]  # 0.62 from alice, threshold 0.6
    engine, clock = make(policy(reverify_s=1.0))
    p = Planned(engine, clock)
    assert [d.type for d in p.run(face(near), 5)] == ["unknown"]
    p.asked.clear()
    assert p.run(face(near), 5) == [] and all(p.asked)  # within margin (0.05) of a match: the next frame may match
