"""DecisionEngine: k-of-n voting, margin, stale frames, liveness gating, rules, no spam, fail closed.

The gallery is a real (tiny) one: templates as unit vectors, searched exhaustively by Euclidean distance or cosine
similarity, so every probe's scores are exact and known from its construction.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pydantic import ValidationError

from facegate.config import DecisionConfig, DoorConfig
from facegate.detections import Detections
from facegate.errors import UsageError
from facegate.runtime.decision import DecisionEngine, LivenessGate, Vote
from facegate.runtime.rules import AccessRules
from facegate.scoring import Candidate, Scorer

D = 8
E = np.eye(D, dtype=np.float32)
# identity → (name, groups, template); bob is 0.2 from alice so probes can fall between them
GALLERY = {
    "alice": ("Alice", ("staff",), E[0]),
    "bob": ("Bob", ("staff",), E[0] + 0.2 * E[1]),
    "carol": ("Carol", ("visitors",), E[2]),
}
ALICE = E[0] + 0.3 * E[3]  # distance 0.3 to alice, sqrt(0.13) ≈ 0.361 to bob: margin ≈ 0.061
BETWEEN = E[0] + 0.1 * E[1] + 0.3 * E[3]  # equally far (≈ 0.316) from alice and bob: margin 0
CAROL = E[2] + 0.2 * E[4]
STRANGER = E[5]  # sqrt(2) from alice and carol, more from bob
T0 = datetime(2026, 6, 3, 12, 0, tzinfo=UTC)  # a Wednesday


def euclidean_search(emb: np.ndarray) -> list[list[Candidate]]:
    ids = list(GALLERY)
    templates = np.stack([GALLERY[i][2] for i in ids])
    dist = np.linalg.norm(emb[:, None, :] - templates[None], axis=-1)
    return [[Candidate(ids[j], GALLERY[ids[j]][0], GALLERY[ids[j]][1], float(row[j])) for j in np.argsort(row)]
            for row in dist]


def cosine_search(emb: np.ndarray) -> list[list[Candidate]]:
    ids = list(GALLERY)
    templates = np.stack([GALLERY[i][2] / np.linalg.norm(GALLERY[i][2]) for i in ids])
    sim = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ templates.T
    return [[Candidate(ids[j], GALLERY[ids[j]][0], GALLERY[ids[j]][1], float(row[j])) for j in np.argsort(-row)]
            for row in sim]


class Clock:
    """Monotonic and wall time moving together; frames are captured 20 ms before they are processed."""

    def __init__(self) -> None:
        self.t = 100.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.t - 100.0)


def face(emb: np.ndarray, live: float | None = None, x: float = 100.0) -> Detections:
    box = np.array([[x, 100, x + 120, 240]], np.float32)
    lm = np.array([[[x + 40, 160], [x + 80, 160], [x + 60, 185], [x + 45, 210], [x + 75, 210]]], np.float32)
    data = {"embeddings": emb[None].astype(np.float32)}
    if live is not None:
        data["liveness"] = np.array([live], np.float32)
    return Detections(box, np.array([0.99], np.float32), lm, data)


Policy = tuple[DecisionConfig, LivenessGate | None]


def policy(*, liveness_threshold: float | None = None, liveness_frames: int = 3, **kw) -> Policy:
    """The ``decision:`` section these tests vote with (frames older than 0.5 s are stale) and the liveness gate."""
    settings = dict(k=3, n=5, margin=0.05, max_frame_age_s=0.5, unknown_after_s=3.0) | kw
    gate = None if liveness_threshold is None else LivenessGate(liveness_threshold, liveness_frames)
    return DecisionConfig(**settings), gate


def Door(id: str, **kw) -> DoorConfig:  # noqa: N802 - reads as the door it builds
    return DoorConfig(id=id, **({"cooldown_s": 0.0} | kw))


def schedule(days: list[str], start: str, end: str, tz: str = "UTC") -> dict:
    return {"timezone": tz, "windows": [{"days": days, "start": start, "end": end}]}


def make(settings: Policy | None = None, *, doors=None, search=euclidean_search, metric="euclidean",
         threshold=0.6) -> tuple[DecisionEngine, Clock]:
    clock = Clock()
    rules = AccessRules(doors or [Door("front", allowed_groups=["staff"])])
    config, gate = settings or policy()
    engine = DecisionEngine(search=search, scorer=Scorer(metric, threshold), camera_doors={"cam1": "front"},
                            rules=rules, config=config, liveness=gate, wall_clock=clock.wall, clock=clock.mono)
    return engine, clock


def feed(engine: DecisionEngine, clock: Clock, dets: Detections, dt: float = 0.1, age: float = 0.02):
    """Advance time by dt, then process a frame captured ``age`` seconds ago."""
    clock.t += dt
    cap = clock.t - age
    return engine.process("cam1", dets, captured_at=cap, captured_wall=T0 + timedelta(seconds=cap - 100.0))


def test_three_of_five_frames_grant_with_scores_and_capture_time():
    engine, clock = make()
    out = [feed(engine, clock, face(e)) for e in (ALICE, STRANGER, ALICE)]
    assert out == [[], [], []]
    (d,) = feed(engine, clock, face(ALICE))
    assert d.type == "grant" and d.identity_id == "alice" and d.identity_name == "Alice"
    assert d.frames_used == 3
    assert d.score == pytest.approx(0.3, abs=1e-6)
    assert d.margin == pytest.approx(np.sqrt(0.13) - 0.3, abs=1e-6)
    assert d.camera == "cam1" and d.door == "front" and d.track_id == 1
    assert d.captured_at == T0 + timedelta(seconds=0.4 - 0.02)  # the frame that completed it
    assert d.decided_at == T0 + timedelta(seconds=0.4)
    # the same person keeps standing there: no second grant for this track
    assert [feed(engine, clock, face(ALICE)) for _ in range(10)] == [[]] * 10


def test_below_k_of_n_gives_one_unknown_and_a_later_match_still_grants():
    engine, clock = make()
    seq = [ALICE, STRANGER, STRANGER, ALICE, STRANGER]
    out = [feed(engine, clock, face(e)) for e in seq]
    assert out[:4] == [[], [], [], []]
    assert [d.type for d in out[4]] == ["unknown"]
    assert out[4][0].identity_id is None and out[4][0].frames_used == 5
    assert [feed(engine, clock, face(STRANGER)) for _ in range(5)] == [[]] * 5  # no unknown spam
    decided = [d for _ in range(5) for d in feed(engine, clock, face(ALICE))]
    assert [(d.type, d.identity_id) for d in decided] == [("grant", "alice")]


def test_margin_to_second_identity_is_required():
    engine, clock = make()
    decided = [d for _ in range(5) for d in feed(engine, clock, face(BETWEEN))]
    assert [d.type for d in decided] == ["unknown"]  # below threshold for both alice and bob, but no margin
    engine, clock = make(policy(k=3, n=5, margin=0.0))
    decided = [d for _ in range(5) for d in feed(engine, clock, face(BETWEEN))]
    assert decided[0].type == "grant" and decided[0].margin == pytest.approx(0.0, abs=1e-6)


def test_threshold_and_a_tie_between_identities_never_grant():
    engine, clock = make(threshold=0.25)  # alice's probe is 0.3 away
    assert [d.type for _ in range(5) for d in feed(engine, clock, face(ALICE))] == ["unknown"]
    # liveness (4 frames) holds the decision back until carol has as many votes as alice: a tie is no answer
    engine, clock = make(policy(k=2, n=5, margin=0.05, liveness_threshold=0.5, liveness_frames=4))
    out = [d for e in (ALICE, ALICE, CAROL, CAROL, STRANGER) for d in feed(engine, clock, face(e, live=0.9))]
    assert [(d.type, d.identity_id) for d in out] == [("unknown", None)]


def test_stale_frames_are_dropped_and_old_observations_never_used():
    engine, clock = make()
    assert feed(engine, clock, face(ALICE), age=0.8) == []  # older than max_frame_age 0.5 s
    assert engine.stats["stale_frames"] == 1
    # two fresh matches, then a 0.45 s gap: at the third match the first two are > 0.5 s old
    feed(engine, clock, face(ALICE))
    feed(engine, clock, face(ALICE), dt=0.05)
    assert feed(engine, clock, face(ALICE), dt=0.5) == []
    (d,) = [*feed(engine, clock, face(ALICE), dt=0.05), *feed(engine, clock, face(ALICE), dt=0.05)]
    assert d.type == "grant" and d.frames_used == 3


def test_liveness_must_pass_before_a_grant():
    settings = policy(k=2, n=5, margin=0.05, liveness_threshold=0.5, liveness_frames=3)
    engine, clock = make(settings)
    assert feed(engine, clock, face(ALICE, live=0.9)) == []
    assert feed(engine, clock, face(ALICE, live=0.9)) == []  # k reached, only 2 of 3 live scores
    (d,) = feed(engine, clock, face(ALICE, live=0.8))
    assert d.type == "grant"


def test_failed_liveness_denies_and_the_track_never_grants():
    settings = policy(k=2, n=5, margin=0.05, liveness_threshold=0.5, liveness_frames=3)
    engine, clock = make(settings)
    out = [d for lv in (0.9, 0.1, 0.2) for d in feed(engine, clock, face(ALICE, live=lv))]
    assert [(d.type, d.reason, d.identity_id) for d in out] == [("deny", "liveness", "alice")]
    assert [d for _ in range(10) for d in feed(engine, clock, face(ALICE, live=0.99))] == []


def test_missing_liveness_scores_deny_after_the_unknown_timeout():
    settings = policy(k=2, n=5, margin=0.05, liveness_threshold=0.5, unknown_after_s=1.0)
    engine, clock = make(settings)
    out = [d for _ in range(12) for d in feed(engine, clock, face(ALICE))]  # no data["liveness"]
    assert [(d.type, d.reason) for d in out] == [("deny", "liveness")]


def test_rules_deny_with_reason_once_per_track():
    engine, clock = make(doors=[Door("front", allowed_groups=["staff"])])
    out = [d for _ in range(10) for d in feed(engine, clock, face(CAROL))]
    assert [(d.type, d.identity_id, d.reason) for d in out] == [("deny", "carol", "not_in_group")]
    engine, clock = make(doors=[Door("front", schedule=schedule(["mon", "tue", "wed", "thu", "fri"], "07:00", "12:00",
                                                                   "Europe/Berlin"))])
    out = [d for _ in range(5) for d in feed(engine, clock, face(ALICE))]  # 14:00 in Berlin
    assert [(d.type, d.reason) for d in out] == [("deny", "outside_schedule")]


def test_cooldown_for_a_returning_person_then_grant_again():
    settings = policy(k=3, n=5, margin=0.05, track_max_age_s=0.5, repeat_after_s=5.0, presence_gap_s=1.0)
    engine, clock = make(settings, doors=[Door("front", cooldown_s=20.0)])
    first = [d for _ in range(3) for d in feed(engine, clock, face(ALICE))]
    assert [d.type for d in first] == ["grant"]
    clock.t += 2.0  # walked away: track expires; back after 2 s (> presence_gap_s: a new passage) as a new track
    again = [d for _ in range(3) for d in feed(engine, clock, face(ALICE))]
    assert [(d.type, d.reason, d.track_id) for d in again] == [("deny", "cooldown", 2)]
    clock.t += 20.0
    later = [d for _ in range(3) for d in feed(engine, clock, face(ALICE))]
    assert [(d.type, d.track_id) for d in later] == [("grant", 3)]


def test_anti_passback_through_the_engine():
    engine, clock = make(doors=[Door("front", anti_passback=True, anti_passback_s=3600), Door("back", exit=True)])
    assert [d.type for _ in range(3) for d in feed(engine, clock, face(ALICE))] == ["grant"]
    clock.t += 40.0  # past repeat_after_s (30 s): the same track is evaluated again
    out = [d for _ in range(3) for d in feed(engine, clock, face(ALICE))]
    assert [(d.type, d.reason) for d in out] == [("deny", "anti_passback")]
    engine.rules.record_exit("alice")
    clock.t += 40.0
    assert [d.type for _ in range(3) for d in feed(engine, clock, face(ALICE))] == ["grant"]


def test_unknown_after_timeout_with_few_frames():
    engine, clock = make(policy(k=3, n=10, margin=0.05, unknown_after_s=1.0))
    out = [d for _ in range(4) for d in feed(engine, clock, face(STRANGER), dt=0.4)]
    assert [d.type for d in out] == ["unknown"]
    assert out[0].score == pytest.approx(np.sqrt(2), abs=1e-6)  # best distance seen (unit vectors, orthogonal)


def test_two_people_in_one_frame_are_decided_separately():
    engine, clock = make()
    both = Detections.merge([face(ALICE, x=50), face(STRANGER, x=400)])
    out = [d for _ in range(5) for d in feed(engine, clock, both)]
    assert sorted((d.type, d.track_id) for d in out) == [("grant", 1), ("unknown", 2)]


def test_similarity_metric_direction():
    # cosine: alice 1/sqrt(1.09) ≈ 0.958, bob 1/sqrt(1.09·1.04) ≈ 0.939, margin ≈ 0.019
    engine, clock = make(policy(k=3, n=5, margin=0.05), search=cosine_search, metric="cosine",
                         threshold=0.9)
    assert [d.type for _ in range(5) for d in feed(engine, clock, face(ALICE))] == ["unknown"]
    engine, clock = make(policy(k=3, n=5, margin=0.01), search=cosine_search, metric="cosine",
                         threshold=0.9)
    (d,) = [d for _ in range(3) for d in feed(engine, clock, face(ALICE))]
    assert d.type == "grant" and d.score == pytest.approx(1 / np.sqrt(1.09), abs=1e-6)


def test_search_failure_grants_nothing(caplog):
    def broken_search(emb):
        raise RuntimeError("index is being rebuilt")

    engine, clock = make(search=broken_search)
    with caplog.at_level(logging.INFO, logger="facegate"):
        assert [d for _ in range(8) for d in feed(engine, clock, face(ALICE))] == []
    assert engine.stats["errors"] == 8
    # one line for the episode (health part decision:cam1), no traceback per frame
    assert [r.getMessage() for r in caplog.records if "event=degraded" in r.getMessage()] == [
        "event=degraded part=decision:cam1 reason='RuntimeError: index is being rebuilt' "
        "effect=no_decisions_from_that_camera"]
    assert not [r for r in caplog.records if r.exc_info]
    assert engine.health.snapshot()["parts"]["decision:cam1"]["count"] == 8


def test_wrong_answers_from_search_grant_nothing():
    engine, clock = make(search=lambda emb: [])  # no answer for the face
    assert [d for _ in range(5) for d in feed(engine, clock, face(ALICE))] == []
    assert engine.stats["errors"] == 5

    def unhashable_ids(emb):
        return [[Candidate(["alice"], "Alice", ("staff",), 0.1)] for _ in range(len(emb))]

    engine, clock = make(search=unhashable_ids)  # blows up while voting
    out = [d for _ in range(5) for d in feed(engine, clock, face(ALICE))]
    assert [(d.type, d.reason) for d in out] == [("deny", "error")]
    assert engine.stats["errors"] == 5


def test_missing_embeddings_and_unknown_cameras_grant_nothing():
    engine, clock = make()
    no_emb = face(ALICE)
    no_emb.data.clear()
    assert [d for _ in range(5) for d in feed(engine, clock, no_emb)] == []
    assert engine.process("cam9", face(ALICE), captured_at=clock.t, captured_wall=T0) == []
    assert engine.stats["errors"] == 6


def test_policy_validation():
    with pytest.raises(ValidationError, match="k \\(6\\) must be ≤ n \\(5\\)"):
        policy(k=6, n=5)
    with pytest.raises(UsageError, match="metric"):
        make(metric="distance")  # the old vocabulary: only the manifest's metric names exist
    with pytest.raises(UsageError, match="scorer"):
        DecisionEngine(search=euclidean_search, scorer=("euclidean", 0.6), camera_doors={}, rules=AccessRules([]))


def test_an_error_inside_the_rules_denies_instead_of_granting():
    every_day = schedule(["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "00:00", "24:00")
    engine, clock = make(doors=[Door("front", schedule=every_day)])
    engine.wall_clock = lambda: datetime(2026, 6, 3, 12, 0)  # a naive clock: the schedule check raises
    out = [d for _ in range(6) for d in feed(engine, clock, face(ALICE))]
    assert [(d.type, d.reason, d.identity_id) for d in out] == [("deny", "error", None)]
    assert engine.stats["grant"] == 0 and engine.stats["errors"] == 4  # frames 3..6 each failed


def test_frame_match_gives_a_named_vote_and_resorts_candidates():
    engine, _ = make(policy(k=1, n=1, margin=0.05))
    # handed worst first: the engine re-sorts with the scorer (distance: lower first) before voting
    cands = [Candidate("bob", "Bob", ("staff",), 0.5), Candidate("alice", "Alice", ("staff",), 0.3)]
    vote, best = engine.frame_match(cands)
    assert vote == Vote("alice", "Alice", ("staff",), 0.3, pytest.approx(0.2))
    assert vote.identity_id == "alice" and vote.margin == pytest.approx(0.2) and best == 0.3
    # a NaN score is dropped, not voted on; nothing finite left → no vote, no best score
    assert engine.frame_match([Candidate("alice", "Alice", ("staff",), float("nan"))]) == (None, None)
    # a score exactly at the threshold passes (inclusive, as the operating point is measured)
    engine.scorer = Scorer("euclidean", 0.3)
    assert engine.frame_match(cands)[0] is not None
    engine.scorer = Scorer("euclidean", float(np.nextafter(0.3, 0.0)))
    assert engine.frame_match(cands) == (None, 0.3)
