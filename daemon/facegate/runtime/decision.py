"""Per-track k-of-n voting over 1:N gallery matches, liveness gating and access rules → door decisions.

For every frame of a camera, ``DecisionEngine.process`` tracks the faces (``FaceTracker``), asks the gallery for
each face's candidates, and records one observation per track. A track is then decided:

* **grant** when, among its last ``n`` frames that are younger than ``max_frame_age_s``, at least ``k`` matched the
  same identity (score passing the ``Scorer``'s threshold — ``facegate/scoring.py`` says which threshold applies —
  AND beating the best *other* identity of that frame by ``margin``),
  no other identity has as many such frames, liveness passed (when enabled: the mean of the track's last
  ``liveness.frames`` per-face live scores ≥ ``liveness.threshold``; no grant before that many scores exist), and
  the door's ``AccessRules`` allow it;
* **deny** with a reason when that identity is known but refused: a rules reason (``not_in_group``,
  ``outside_schedule``, ``cooldown``, ``anti_passback``, ``unknown_door``), ``liveness`` (fused live score below
  the threshold, or still not enough live scores ``unknown_after_s`` after the track started), or ``error``
  (an exception while deciding);
* **unknown** when the track has ≥ ``n`` fresh frames and no identity reached ``k``, or it is older than
  ``unknown_after_s`` without a grant or deny.

One decision per track per outcome: a decision with the same (type, identity, reason) is not repeated for a track
until ``repeat_after_s`` has passed; after a grant the track is not decided again for the longer of
``repeat_after_s`` and the door's cooldown (the person is walking through). An unknown can later become a grant
when the person comes close enough to match; a liveness deny never turns into a grant on the same track.

Fail closed: frames older than ``max_frame_age_s`` when they arrive are dropped whole (counted in
``stats["stale_frames"]``), observations that age past it are never used, a search error makes the frame count
for nothing, and any exception while deciding a track gives no grant. The voting follows frigate's per-track face
recognition (``frigate/data_processing/real_time/face.py``: minimum number of samples, a tie is no answer), with
the margin test of open-set identification (ISO/IEC 19795-1 "rank-1 with a margin" / FPIR control).

The voting settings are the validated ``decision:`` section (``facegate.config.DecisionConfig``) under their YAML
names; the threshold is ``Scorer.resolve``'s answer (``facegate/scoring.py``): ``decision.threshold``, else the one
derived from ``decision.false_accept_rate`` with the pack's calibration, the live gallery's template count and the
vote, else the pack's operating point. It is logged (``event=threshold`` with the rate it gives) at start and after
every gallery change (``gallery_changed``). When a goal cannot be met any more — the gallery grew past what the
calibration vouches for — no face votes for anyone (``event=false_accept_goal_unmet``, fail closed) until the gallery
shrinks or the config changes; at start the same condition refuses to run (``FalseAcceptGoalError``).
``on_result`` is the inference stage's downstream: it decides each frame and hands
every decision to the emitter (``runtime/events.py``).

Times: ``captured_at``/``now`` monotonic seconds; ``captured_wall``/``decided_at`` aware UTC datetimes.
``process`` is not thread-safe; ``on_result`` and ``reconfigure`` serialise on the engine's lock.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from facegate.config import DecisionConfig
from facegate.detections import Detections
from facegate.errors import FalseAcceptGoalError, UsageError
from facegate.runtime.rules import AccessRules, camera_doors
from facegate.runtime.tracking import FaceTracker
from facegate.scoring import Candidate, Scorer, liveness_threshold

if TYPE_CHECKING:
    from facegate.calibration import Calibration
    from facegate.config import CameraConfig, Config, LivenessConfig
    from facegate.packs.manifest import PackManifest
    from facegate.pipeline import FacePipeline
    from facegate.runtime.inference import FrameResult

log = logging.getLogger(__name__)

GRANT, DENY, UNKNOWN = "grant", "deny", "unknown"


SearchFn = Callable[[np.ndarray], Sequence[Sequence[Candidate]]]
"""``search(embeddings N×D float32) → per face a list of ``scoring.Candidate``, best first`` (``Gallery.search``)."""


class Vote(NamedTuple):
    """One frame's match for a track: the identity it voted for, its comparison score and its ``margin`` over the
    best other identity of that frame (None when the gallery had no other identity)."""

    identity_id: Any
    name: str
    groups: tuple[str, ...]
    score: float
    margin: float | None


@dataclass(frozen=True)
class LivenessGate:
    """Liveness (PAD) gating of grants: the mean of a track's latest ``frames`` live scores must reach
    ``threshold``; no grant before that many scores exist (``liveness:`` section; None when it is off)."""

    threshold: float
    frames: int

    @classmethod
    def from_config(cls, liveness: LivenessConfig, manifest: PackManifest) -> LivenessGate | None:
        """The gate of the ``liveness:`` section (None when off); the threshold is ``liveness.threshold``, else the
        pack's (``scoring.liveness_threshold``)."""
        if not liveness.enabled:
            return None
        return cls(liveness_threshold(manifest, liveness.threshold), liveness.frames)


@dataclass(frozen=True)
class Decision:
    """One door decision. ``score`` is the mean comparison score of the frames used, ``margin`` the smallest
    margin among them (None when the gallery had no second identity); ``captured_at`` is the wall UTC capture time
    of the frame that completed the decision, ``captured_mono`` its monotonic time and ``inferred_mono`` when its
    inference finished (for latency measurements)."""

    type: Literal["grant", "deny", "unknown"]
    camera: str
    door: str
    track_id: int
    captured_at: datetime
    decided_at: datetime
    identity_id: Any = None
    identity_name: str | None = None
    score: float | None = None
    margin: float | None = None
    frames_used: int = 0
    reason: str | None = None
    captured_mono: float | None = None
    inferred_mono: float | None = None


class _Obs(NamedTuple):
    t: float  # monotonic capture time
    match: Vote | None  # when the frame matched
    best: float | None  # best score of the frame (any identity), for unknown events
    live: float | None


@dataclass
class _TrackState:
    first_seen: float
    obs: deque = field(default_factory=deque)
    emitted: dict = field(default_factory=dict)  # (type, identity, reason) → monotonic s
    granted_at: float | None = None
    spoof: bool = False


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DecisionEngine:
    """Decisions for all cameras. Constructor (keyword only):

    * ``search``: ``SearchFn`` (the running daemon's: ``runtime/matching.py``);
    * ``scorer``: ``scoring.Scorer``, the metric and the threshold in force (``Scorer.resolve(manifest,
      decision.threshold)``: ``facegate/scoring.py`` says which threshold applies);
    * ``camera_doors``: camera id → door id (``runtime/rules.camera_doors``);
    * ``rules``: ``AccessRules``; ``config``: the ``decision:`` section; ``liveness``: ``LivenessGate`` or None;
    * ``sink``: called with every decision ``on_result`` makes (the emitter's ``emit``); None keeps them;
    * ``wall_clock``: returns the aware UTC now (tests inject one); ``clock``: monotonic seconds.
    """

    def __init__(
        self,
        *,
        search: SearchFn,
        scorer: Scorer,
        camera_doors: Mapping[str, str],
        rules: AccessRules,
        config: DecisionConfig | None = None,
        liveness: LivenessGate | None = None,
        sink: Callable[[Decision], Any] | None = None,
        wall_clock: Callable[[], datetime] = _utcnow,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(scorer, Scorer):
            raise UsageError(f"decision: scorer must be a facegate.scoring.Scorer, got {type(scorer).__name__}")
        self.search = search
        self.scorer = scorer
        self.camera_doors = dict(camera_doors)
        self.rules = rules
        self.config = config or DecisionConfig()
        self.liveness = liveness
        self.sink = sink
        self.wall_clock = wall_clock
        self.clock = clock
        self._trackers: dict[str, FaceTracker] = {}
        self._tracks: dict[str, dict[int, _TrackState]] = {}
        self._lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        #: Why no face may vote (a false-accept goal the gallery outgrew), None normally: fail closed.
        self.blocked: str | None = None
        self._manifest: PackManifest | None = None
        self._calibration: Calibration | None = None
        self._templates: int | None = None

    @classmethod
    def from_config(cls, config: Config, *, pipeline: FacePipeline, search: SearchFn, rules: AccessRules,
                    cameras: Sequence[CameraConfig], sink: Callable[[Decision], Any] | None,
                    templates: int | None = None) -> DecisionEngine:
        """The engine of ``config``: ``decision:`` voting, the threshold (``Scorer.resolve`` with the pack's
        calibration and ``templates``, the live gallery's size), ``liveness:`` gating, each camera's door.

        Raises ``FalseAcceptGoalError`` when ``decision.false_accept_rate`` cannot be met with ``templates``, and
        ``ConfigError`` for a goal on a pack without calibration or a damaged calibration file."""
        from facegate.packs.manifest import pack_calibration

        calibration = pack_calibration(pipeline.manifest)
        scorer = _resolve(pipeline.manifest, config.decision, calibration, templates)
        engine = cls(search=search, scorer=scorer, camera_doors=camera_doors(config, cameras), rules=rules,
                     config=config.decision, liveness=LivenessGate.from_config(config.liveness, pipeline.manifest),
                     sink=sink)
        engine._manifest, engine._calibration, engine._templates = pipeline.manifest, calibration, templates
        _log_threshold(scorer, "start")
        engine._warn_doorless()
        return engine

    def reconfigure(self, config: Config, cameras: Sequence[CameraConfig], manifest: PackManifest) -> None:
        """SIGHUP: new voting settings, threshold (``Scorer.resolve`` of the new ``decision:`` section with the
        gallery size last seen) and camera→door map take effect at the next frame; tracks and their votes are kept
        (liveness settings need a restart: the models are loaded at start). A goal that cannot be met blocks every
        grant (logged) rather than keeping the old threshold."""
        with self._lock:
            self.config = config.decision
            self._manifest = manifest
            self._rescore("reload")
            self.camera_doors = camera_doors(config, cameras)
        self._warn_doorless()

    def gallery_changed(self, templates: int) -> None:
        """The live gallery now holds ``templates`` templates (``LiveGallery.on_change``): derive the threshold
        again (it depends on the gallery's size when ``decision.false_accept_rate`` is set) and log it."""
        with self._lock:
            self._templates = templates
            self._rescore("gallery_changed")

    def _rescore(self, why: str) -> None:
        """Re-resolve the scorer (under the lock); a goal the gallery cannot meet blocks every vote (fail closed)."""
        if self._manifest is None:
            return  # built without from_config: the injected scorer stays
        try:
            self.scorer = _resolve(self._manifest, self.config, self._calibration, self._templates)
        except Exception as exc:  # FalseAcceptGoalError, or anything else: the old threshold no longer holds
            if self.blocked is None:
                event = "false_accept_goal_unmet" if isinstance(exc, FalseAcceptGoalError) else "threshold_error"
                log.error("event=%s why=%s templates=%s note=no_grants error=%r", event, why, self._templates,
                          str(exc))
            self.blocked = str(exc)
            return
        if self.blocked is not None:
            log.warning("event=false_accept_goal_met_again why=%s templates=%s note=grants_resume", why,
                        self._templates)
        self.blocked = None
        _log_threshold(self.scorer, why)

    def _warn_doorless(self) -> None:
        for cid, door in self.camera_doors.items():
            if door not in self.rules.doors:
                log.error("event=camera_door_has_no_rules camera=%s door=%s note=never_grants fix='add the door "
                          "to doors: or set the camera's door'", cid, door)

    def on_result(self, result: FrameResult) -> None:
        """The inference stage's downstream: decide one frame's faces and hand each decision to ``sink``. A sink
        error is logged and never stops the decisions (the emitter does not publish what it could not audit)."""
        f = result.frame
        with self._lock:
            decisions = self.process(f.camera_id, result.dets, captured_at=f.captured_at,
                                     captured_wall=f.captured_wall)
            for d in decisions:
                if self.sink is None:
                    continue
                try:
                    self.sink(dataclasses.replace(d, inferred_mono=result.done_at))
                except OSError:
                    log.exception("event=audit_write_failed type=%s camera=%s note=not_published", d.type, d.camera)

    # ----------------------------------------------------------------------------------------------- scoring
    def frame_match(self, candidates: Sequence[Candidate]) -> tuple[Vote | None, float | None]:
        """One face's gallery answer → (its ``Vote`` or None, best score or None).

        Candidates are re-sorted best first (``Scorer.best_first``); the margin is the ``Scorer.gap`` to the best
        *other* identity (None when there is none). A non-finite score never matches.
        """
        cands = self.scorer.best_first(c for c in candidates if math.isfinite(float(c.score)))
        if not cands:
            return None, None
        best = cands[0]
        if self.blocked is not None:  # the false-accept goal is not met: nobody is matched
            return None, float(best.score)
        other = next((c for c in cands[1:] if c.identity_id != best.identity_id), None)
        score = float(best.score)
        margin = None if other is None else self.scorer.gap(score, other.score)
        ok = self.scorer.passes(score) and (margin is None or margin >= self.config.margin)
        return (Vote(best.identity_id, best.name, tuple(best.groups), score, margin) if ok else None), score

    # ----------------------------------------------------------------------------------------------- frames
    def process(
        self,
        camera: str,
        dets: Detections,
        *,
        captured_at: float,
        captured_wall: datetime,
        now: float | None = None,
    ) -> list[Decision]:
        """Feed one frame's faces; return the decisions it completes (usually none).

        ``dets`` needs ``data["embeddings"]`` (N×D float32) and, with liveness on, ``data["liveness"]`` (N float,
        higher = live; a missing array counts as not live). ``captured_at`` monotonic s, ``captured_wall`` aware
        UTC of the capture; ``now`` defaults to ``clock()``. Never raises for bad data or a failing search: it
        logs, counts in ``stats`` and returns no grant.
        """
        now = self.clock() if now is None else now
        self.stats["frames"] += 1
        if now - captured_at > self.config.max_frame_age_s:
            self.stats["stale_frames"] += 1
            log.debug("event=stale_frame camera=%s age_s=%.3f", camera, now - captured_at)
            return []
        door = self.camera_doors.get(camera)
        if door is None:
            self.stats["errors"] += 1
            log.error("event=decision_error camera=%s error=camera_has_no_door", camera)
            return []
        try:
            track_ids, states = self._observe(camera, dets, captured_at)
        except Exception:
            self.stats["errors"] += 1
            log.exception("event=decision_error camera=%s stage=observe", camera)
            return []
        out: list[Decision] = []
        for tid in dict.fromkeys(int(t) for t in track_ids):
            try:
                d = self._decide_track(camera, door, tid, states[tid], captured_at, captured_wall, now)
            except Exception:  # even the error path failed (e.g. the wall clock): emit nothing
                self.stats["errors"] += 1
                log.exception("event=decision_error camera=%s track=%d stage=emit", camera, tid)
                d = None
            if d is not None:
                out.append(d)
        return out

    def _decide_track(
        self, camera: str, door: str, tid: int, state: _TrackState, cap: float, wall: datetime, now: float
    ) -> Decision | None:
        try:
            d = self._decide(camera, door, tid, state, cap, wall, now)
        except Exception:
            self.stats["errors"] += 1
            log.exception("event=decision_error camera=%s track=%d stage=decide", camera, tid)
            d = self._make(DENY, camera, door, tid, cap, wall, reason="error")
        if d is None or not self._fresh_key(state, d, now):
            return None
        if d.type == GRANT:
            try:
                self.rules.record_grant(d.identity_id, door, now)
            except Exception:  # a grant the rules cannot remember would dodge cooldown/anti-passback
                self.stats["errors"] += 1
                log.exception("event=decision_error camera=%s track=%d stage=record_grant", camera, tid)
                return None
            state.granted_at = now
        self.stats[d.type] += 1
        log.info(
            "event=decision type=%s camera=%s door=%s track=%d identity=%s score=%s reason=%s",
            d.type, camera, door, tid, d.identity_id, d.score, d.reason,
        )
        return d

    def _observe(self, camera: str, dets: Detections, captured_at: float) -> tuple[np.ndarray, dict[int, _TrackState]]:
        tracker = self._trackers.get(camera)
        if tracker is None:
            tracker = self._trackers[camera] = FaceTracker(
                min_affinity=self.config.track_min_affinity, timeout_s=self.config.track_max_age_s
            )
            self._tracks[camera] = {}
        states = self._tracks[camera]
        ids = tracker.update(dets, captured_at)
        for gone in tracker.expired:
            states.pop(gone, None)
        if len(dets) == 0:
            return ids, states
        emb = dets.data.get("embeddings")
        if emb is None or len(emb) != len(dets):
            raise ValueError("Detections.data['embeddings'] (N×D float32) is missing")
        emb = np.asarray(emb, np.float32)
        answers = self.search(emb)
        if len(answers) != len(dets):
            raise ValueError(f"search returned {len(answers)} answers for {len(dets)} faces")
        live = dets.data.get("liveness") if self.liveness is not None else None
        n = self.config.n
        for i, tid in enumerate(ids.tolist()):
            state = states.get(tid)
            if state is None:
                state = states[tid] = _TrackState(first_seen=captured_at, obs=deque(maxlen=n))
            match, best = self.frame_match(answers[i])
            lv = None if live is None else float(live[i])
            if lv is not None and not math.isfinite(lv):
                lv = None
            state.obs.append(_Obs(captured_at, match, best, lv))
        return ids, states

    def _fresh_key(self, state: _TrackState, d: Decision, now: float) -> bool:
        key = (d.type, d.identity_id, d.reason)
        last = state.emitted.get(key)
        if last is not None and now - last < self.config.repeat_after_s:
            return False
        state.emitted[key] = now
        return True

    def _make(self, type_: str, camera: str, door: str, tid: int, cap: float, wall: datetime, **kw: Any) -> Decision:
        return Decision(
            type=type_, camera=camera, door=door, track_id=tid, captured_at=wall.astimezone(UTC),
            decided_at=self.wall_clock(), captured_mono=cap, **kw,
        )

    def _decide(
        self, camera: str, door: str, tid: int, st: _TrackState, cap: float, wall: datetime, now: float
    ) -> Decision | None:
        p = self.config
        if st.granted_at is not None and now - st.granted_at < max(p.repeat_after_s, self.rules.cooldown_s(door)):
            return None
        fresh = [o for o in st.obs if now - o.t <= p.max_frame_age_s]
        votes = Counter(o.match.identity_id for o in fresh if o.match is not None)
        ranked = votes.most_common()
        winner = None
        if ranked and ranked[0][1] >= p.k and (len(ranked) == 1 or ranked[1][1] < ranked[0][1]):
            winner = ranked[0][0]
        track_age = cap - st.first_seen
        if winner is None:
            if len(fresh) >= p.n or track_age >= p.unknown_after_s:
                best = self.scorer.best(o.best for o in fresh if o.best is not None)
                return self._make(UNKNOWN, camera, door, tid, cap, wall, score=best, frames_used=len(fresh))
            return None
        used = [o.match for o in fresh if o.match is not None and o.match.identity_id == winner]
        name, groups = used[-1].name, used[-1].groups
        margins = [v.margin for v in used if v.margin is not None]
        common = dict(
            identity_id=winner, identity_name=name, score=float(np.mean([v.score for v in used])),
            margin=min(margins) if margins else None, frames_used=len(used),
        )
        gate = self.liveness
        if gate is not None:
            lives = [o.live for o in fresh if o.live is not None][-gate.frames :]
            if st.spoof:
                return self._make(DENY, camera, door, tid, cap, wall, reason="liveness", **common)
            if len(lives) < gate.frames:
                if track_age >= p.unknown_after_s:
                    return self._make(DENY, camera, door, tid, cap, wall, reason="liveness", **common)
                return None
            if float(np.mean(lives)) < gate.threshold:
                st.spoof = True
                return self._make(DENY, camera, door, tid, cap, wall, reason="liveness", **common)
        decided_wall = self.wall_clock()
        reason = self.rules.check(identity_id=winner, groups=groups, door=door, wall=decided_wall, now=now)
        if reason is not None:
            return self._make(DENY, camera, door, tid, cap, wall, reason=reason, **common)
        return self._make(GRANT, camera, door, tid, cap, wall, **common)


def _resolve(manifest: PackManifest, decision: DecisionConfig, calibration: Calibration | None,
             templates: int | None) -> Scorer:
    """``Scorer.resolve`` for the ``decision:`` section (threshold, false_accept_rate, the k-of-n vote)."""
    return Scorer.resolve(manifest, decision.threshold, false_accept_rate=decision.false_accept_rate,
                          calibration=calibration, templates=templates, vote=(decision.k, decision.n))


def _log_threshold(scorer: Scorer, why: str) -> None:
    basis = scorer.basis
    fields = basis.log_fields() if basis is not None else "source=injected"
    log.info("event=threshold why=%s threshold=%.6g rule=%r %s", why, scorer.threshold, scorer.describe(), fields)
