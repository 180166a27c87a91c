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

Work once per face: ``plan`` (called by the inference stage before embedding, ``runtime/inference.py``) tracks a
frame's faces and says which need an embedding. A track that is decided — granted, denied for a reason other
than ``error``, or (with ``reverify_unknown``) unknown with every fresh frame's best score missing the threshold by
at least ``margin`` (a clear stranger; a near miss keeps voting on every frame), within that decision's repeat
window — is not embedded again on every frame: only every ``reverify_s`` seconds, or at once when its box jumped
(IoU with the box of its last check below ``reverify_iou``; a person walking up to the door makes their box grow).
Such a re-verification frame is compared with the decision: the same identity (for an unknown: again a clear
stranger; for a rules deny: also the same rules answer) keeps the track decided and decides nothing new; anything
else ends the decided state, and the track is embedded on every frame and voted on afresh (its
``unknown_after_s`` clock restarts). A face that was not embedded adds no observation and is never decided on, so
it can never produce a grant; when the decision's window ends the track is voted on afresh. ``reverify_s: 0``
embeds every face on every frame.

Fail closed: frames older than ``max_frame_age_s`` when they arrive are dropped whole (counted in
``stats["stale_frames"]``), observations that age past it are never used, a search error makes the frame count
for nothing, and any exception while deciding a track gives no grant. The voting follows frigate's per-track face
recognition (``frigate/data_processing/real_time/face.py``: minimum number of samples, a tie is no answer), with
the margin test of open-set identification (ISO/IEC 19795-1 "rank-1 with a margin" / FPIR control).

The voting settings are the validated ``decision:`` section (``facegate.config.DecisionConfig``) under their YAML
names; the threshold is the pack's measured operating point unless ``decision.threshold`` overrides it
(``DecisionEngine.from_config``). ``on_result`` is the inference stage's downstream: it decides each frame and hands
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
from facegate.errors import UsageError
from facegate.runtime.health import SETTLE_S, Health
from facegate.runtime.rules import AccessRules, camera_doors
from facegate.runtime.tracking import FaceTracker, box_iou
from facegate.scoring import Candidate, Scorer, liveness_threshold

if TYPE_CHECKING:
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
    inference finished (for latency measurements). ``box`` is the track's face in that frame (x1, y1, x2, y2 px;
    None when the track had no face in it); ``face_crop`` its BGR uint8 crop, set only while the engine's
    ``keep_crops`` is on (snapshot retention, ``runtime/snapshots.py``), never part of the signed payload."""

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
    box: tuple[float, float, float, float] | None = None
    face_crop: np.ndarray | None = field(default=None, repr=False, compare=False)


class _Obs(NamedTuple):
    t: float  # monotonic capture time
    match: Vote | None  # when the frame matched
    best: float | None  # best score of the frame (any identity), for unknown events
    live: float | None


#: Deny reasons that come from the door's rules and can change while a track stands there (time, cooldown).
_RULE_REASONS = frozenset({"not_in_group", "outside_schedule", "cooldown", "anti_passback", "unknown_door"})


@dataclass
class _Hold:
    """A decided track: its faces are embedded only for re-verification until ``until`` (capture time, s)."""

    type: str
    identity_id: Any
    groups: tuple[str, ...]
    reason: str | None
    until: float
    checked_at: float  # capture time of the last frame that confirmed it
    box: np.ndarray  # that frame's box, 4 float32 px


@dataclass
class _TrackState:
    first_seen: float
    obs: deque = field(default_factory=deque)
    emitted: dict = field(default_factory=dict)  # (type, identity, reason) → monotonic s
    granted_at: float | None = None
    granted_id: Any = None
    spoof: bool = False
    attempt_since: float | None = None  # capture time the current vote started (first_seen, or a decided state's end)
    hold: _Hold | None = None

    def __post_init__(self) -> None:
        if self.attempt_since is None:
            self.attempt_since = self.first_seen

    def restart(self, cap: float) -> None:
        """End the decided state: embed every frame again and vote afresh from ``cap``."""
        self.hold = None
        self.attempt_since = cap


#: Context kept around a face box on each side for a snapshot, as a fraction of the box's size.
CROP_MARGIN = 0.25


def face_crop(image: np.ndarray, box: Sequence[float], margin: float = CROP_MARGIN) -> np.ndarray | None:
    """A copy of ``box`` (x1, y1, x2, y2 px) of a BGR uint8 H×W×3 ``image``, widened by ``margin`` of its size on
    each side and clipped to the image; None when nothing of it lies inside the image."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    a, b = max(0, int(x1 - mx)), max(0, int(y1 - my))
    c, d = min(w, int(math.ceil(x2 + mx))), min(h, int(math.ceil(y2 + my)))
    if c - a < 2 or d - b < 2:
        return None
    return image[b:d, a:c].copy()


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
    * ``wall_clock``: returns the aware UTC now (tests inject one); ``clock``: monotonic seconds;
    * ``health``: where a frame that cannot be observed (tracking or gallery search failing) is reported, once per
      episode (part ``decision:<camera>``; a private registry when None), instead of a traceback per frame.
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
        health: Health | None = None,
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
        self.health = health if health is not None else Health()
        self._trackers: dict[str, FaceTracker] = {}
        self._tracks: dict[str, dict[int, _TrackState]] = {}
        self._lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        #: Attach each decision's face crop (``Decision.face_crop``) in ``on_result``: snapshot retention only.
        self.keep_crops = False

    @classmethod
    def from_config(cls, config: Config, *, pipeline: FacePipeline, search: SearchFn, rules: AccessRules,
                    cameras: Sequence[CameraConfig], sink: Callable[[Decision], Any] | None,
                    health: Health | None = None) -> DecisionEngine:
        """The engine of ``config``: ``decision:`` voting, the threshold (``decision.threshold``, else the pack's
        operating point), ``liveness:`` gating, each camera's door; failures reported to ``health``."""
        engine = cls(search=search, scorer=Scorer.resolve(pipeline.manifest, config.decision.threshold),
                     camera_doors=camera_doors(config, cameras), rules=rules, config=config.decision,
                     liveness=LivenessGate.from_config(config.liveness, pipeline.manifest), sink=sink,
                     health=health)
        engine._warn_doorless()
        return engine

    def reconfigure(self, config: Config, cameras: Sequence[CameraConfig], manifest: PackManifest) -> None:
        """SIGHUP: new voting settings, threshold (``decision.threshold`` or ``manifest``'s operating point) and
        camera→door map take effect at the next frame; tracks and their votes are kept (liveness settings need a
        restart: the models are loaded at start)."""
        with self._lock:
            self.config = config.decision
            self.scorer = Scorer.resolve(manifest, config.decision.threshold)
            self.camera_doors = camera_doors(config, cameras)
        self._warn_doorless()

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
                crop = face_crop(f.image, d.box) if self.keep_crops and d.box is not None else None
                try:
                    self.sink(dataclasses.replace(d, inferred_mono=result.done_at, face_crop=crop))
                except OSError:
                    log.exception("event=audit_write_failed type=%s camera=%s note=not_published", d.type, d.camera)

    # ----------------------------------------------------------------------------------------------- tracking
    def plan(self, camera: str, dets: Detections, captured_at: float) -> tuple[np.ndarray, np.ndarray]:
        """Track one frame's faces before they are embedded (the inference stage's ``TrackPlanner``).

        ``dets``: the frame's faces (boxes, landmarks; no embeddings needed), ``captured_at`` monotonic s. Returns
        (N int64 track ids, N bool: embed this face). A face is left out only when its track is decided and not
        due for re-verification (module docstring). Pass the ids and the mask on to ``process`` as
        ``data["track_ids"]`` and ``data["embedded"]`` (the inference stage does).
        """
        with self._lock:
            tracker, states = self._tracking(camera)
            ids = tracker.update(dets, captured_at)
            for gone in tracker.expired:
                states.pop(gone, None)
            embed = np.ones(len(dets), bool)
            for i, tid in enumerate(ids.tolist()):
                st = states.get(tid)
                if st is not None and st.hold is not None and not self._due(st.hold, dets.boxes[i], captured_at):
                    embed[i] = False
            self.stats["faces_not_embedded"] += int((~embed).sum())
            return ids, embed

    def _due(self, hold: _Hold, box: np.ndarray, cap: float) -> bool:
        """A decided track's face needs an embedding: its window ended, its check is due, or its box jumped."""
        p = self.config
        if p.reverify_s <= 0 or cap >= hold.until or cap - hold.checked_at >= p.reverify_s:
            return True
        return float(box_iou(hold.box, box)[0, 0]) < p.reverify_iou

    def _tracking(self, camera: str) -> tuple[FaceTracker, dict[int, _TrackState]]:
        tracker = self._trackers.get(camera)
        if tracker is None:
            tracker = self._trackers[camera] = FaceTracker(
                min_affinity=self.config.track_min_affinity, timeout_s=self.config.track_max_age_s
            )
            self._tracks[camera] = {}
        return tracker, self._tracks[camera]

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
        higher = live; a missing array counts as not live). After ``plan``, also ``data["track_ids"]`` (N int64)
        and ``data["embedded"]`` (N bool; the embeddings of other faces are not read). ``captured_at`` monotonic s,
        ``captured_wall`` aware UTC of the capture; ``now`` defaults to ``clock()``. Never raises for bad data or a
        failing search: it logs, counts in ``stats`` and returns no grant.
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
            states, observed = self._observe(camera, door, dets, captured_at, now)
        except Exception as exc:  # e.g. a search that raises on every frame: one line per episode, not a traceback
            self.stats["errors"] += 1
            part = f"decision:{camera}"
            if not self.health.degraded(part):
                log.debug("event=decision_error camera=%s stage=observe", camera, exc_info=exc)
            self.health.problem(part, f"{type(exc).__name__}: {exc}")
            return []
        self.health.clear(f"decision:{camera}", settle_s=SETTLE_S)
        out: list[Decision] = []
        for tid, box in observed.items():
            try:
                d = self._decide_track(camera, door, tid, states[tid], captured_at, captured_wall, now, box)
            except Exception:  # even the error path failed (e.g. the wall clock): emit nothing
                self.stats["errors"] += 1
                log.exception("event=decision_error camera=%s track=%d stage=emit", camera, tid)
                d = None
            if d is not None:
                face_box = None if box is None else tuple(float(v) for v in np.asarray(box)[:4])
                out.append(dataclasses.replace(d, box=face_box))
        return out

    def _decide_track(
        self, camera: str, door: str, tid: int, state: _TrackState, cap: float, wall: datetime, now: float,
        box: np.ndarray,
    ) -> Decision | None:
        try:
            d = self._decide(camera, door, tid, state, cap, wall, now)
        except Exception:
            self.stats["errors"] += 1
            log.exception("event=decision_error camera=%s track=%d stage=decide", camera, tid)
            d = self._make(DENY, camera, door, tid, cap, wall, reason="error")
        if d is None:
            self._rehold_grant(door, state, box, cap, now)
            return None
        if not self._fresh_key(state, d, now):
            self._hold(door, state, d, box, cap, now)  # the same decision again: the track is still decided
            return None
        if d.type == GRANT:
            try:
                self.rules.record_grant(d.identity_id, door, now)
            except Exception:  # a grant the rules cannot remember would dodge cooldown/anti-passback
                self.stats["errors"] += 1
                log.exception("event=decision_error camera=%s track=%d stage=record_grant", camera, tid)
                return None
            state.granted_at = now
            state.granted_id = d.identity_id
        self._hold(door, state, d, box, cap, now)
        self.stats[d.type] += 1
        log.info(
            "event=decision type=%s camera=%s door=%s track=%d identity=%s score=%s reason=%s",
            d.type, camera, door, tid, d.identity_id, d.score, d.reason,
        )
        return d

    def _observe(
        self, camera: str, door: str, dets: Detections, captured_at: float, now: float,
    ) -> tuple[dict[int, _TrackState], dict[int, np.ndarray]]:
        """Record one observation per embedded face; returns the camera's track states and the tracks to decide
        (track id → its box), in face order. Without ``data["track_ids"]`` (not planned) every face is tracked
        here and decided. Planned: faces ``plan`` left out add nothing; a re-verification that confirms its
        track's decision adds its observation but asks for no decision."""
        tracker, states = self._tracking(camera)
        given = dets.data.get("track_ids")
        if given is None:  # not planned: track here
            ids = tracker.update(dets, captured_at)
            for gone in tracker.expired:
                states.pop(gone, None)
            embedded = np.ones(len(dets), bool)
        else:
            ids = np.asarray(given, np.int64)
            embedded = np.asarray(dets.data.get("embedded", np.ones(len(dets), bool)), bool)
            if ids.shape != (len(dets),) or embedded.shape != (len(dets),):
                raise ValueError("Detections.data['track_ids'] and ['embedded'] need one entry per face")
        rows = np.flatnonzero(embedded)
        if len(rows) == 0:
            return states, {}
        emb = dets.data.get("embeddings")
        if emb is None or len(emb) != len(dets):
            raise ValueError("Detections.data['embeddings'] (N×D float32) is missing")
        emb = np.asarray(emb, np.float32)[rows]
        answers = self.search(emb)
        if len(answers) != len(rows):
            raise ValueError(f"search returned {len(answers)} answers for {len(rows)} faces")
        live = dets.data.get("liveness") if self.liveness is not None else None
        n = self.config.n
        decide: dict[int, np.ndarray] = {}
        for j, i in enumerate(rows.tolist()):
            tid = int(ids[i])
            state = states.get(tid)
            if state is None:
                state = states[tid] = _TrackState(first_seen=captured_at, obs=deque(maxlen=n))
            match, best = self.frame_match(answers[j])
            lv = None if live is None else float(live[i])
            if lv is not None and not math.isfinite(lv):
                lv = None
            state.obs.append(_Obs(captured_at, match, best, lv))
            # decided states only exist for planned frames: unplanned callers embed and decide every face
            if given is None or not self._confirmed(camera, door, tid, state, match, best, dets.boxes[i],
                                                    captured_at, now):
                decide[tid] = dets.boxes[i]
        return states, decide

    # ----------------------------------------------------------------------------------------------- decided
    def _stranger(self, best: float | None) -> bool:
        """A face's best comparison score misses the threshold by at least ``margin`` (or there was none): clearly
        nobody enrolled, not a near miss that the next frame may turn into a match."""
        return best is None or not math.isfinite(best) or \
            self.scorer.gap(self.scorer.threshold, best) >= self.config.margin

    def _confirmed(self, camera: str, door: str, tid: int, st: _TrackState, match: Vote | None, best: float | None,
                   box: np.ndarray, cap: float, now: float) -> bool:
        """A decided track's new observation: True when it confirms the decision (nothing new to decide); else
        the decided state ends (False: decide as usual)."""
        hold = st.hold
        if hold is None:
            return False
        if cap >= hold.until:  # the decision's window is over: vote afresh
            st.restart(cap)
            return False
        # for an unknown, a match or a near miss may be the start of a grant: vote on every frame again
        agrees = (match is None and self._stranger(best)) if hold.type == UNKNOWN else (
            match is not None and match.identity_id == hold.identity_id)
        if agrees and hold.type == DENY and hold.reason in _RULE_REASONS:
            # the door's answer can change while the person stands there (schedule, cooldown)
            agrees = self.rules.check(identity_id=hold.identity_id, groups=hold.groups, door=door,
                                      wall=self.wall_clock(), now=now) == hold.reason
        if agrees:
            hold.checked_at, hold.box = cap, np.array(box, np.float32)
            self.stats["reverified"] += 1
            return True
        st.restart(cap)
        self.stats["reverify_failed"] += 1
        log.info("event=reverify_failed camera=%s track=%d decided=%s identity=%s now=%s", camera, tid, hold.type,
                 hold.identity_id, None if match is None else match.identity_id)
        return False

    def _hold(self, door: str, st: _TrackState, d: Decision, box: np.ndarray, cap: float, now: float) -> None:
        """Mark a track decided by ``d`` (a grant, a deny other than ``error``, with ``reverify_unknown`` an unknown
        whose fresh frames all missed the threshold by at least ``margin``) until its repeat window ends."""
        p = self.config
        if p.reverify_s <= 0 or d.reason == "error":
            return
        if d.type == UNKNOWN and not (p.reverify_unknown and all(
                self._stranger(o.best) for o in st.obs if now - o.t <= p.max_frame_age_s)):
            return  # only a clear stranger is left alone: near misses keep voting on every frame
        if d.type == GRANT:
            left = max(p.repeat_after_s, self.rules.cooldown_s(door))
        else:
            last = st.emitted.get((d.type, d.identity_id, d.reason), now)
            left = last + p.repeat_after_s - now
        groups = next((o.match.groups for o in reversed(st.obs)
                       if o.match is not None and o.match.identity_id == d.identity_id), ())
        if left > 0:
            st.hold = _Hold(d.type, d.identity_id, groups, d.reason, cap + left, cap, np.array(box, np.float32))

    def _rehold_grant(self, door: str, st: _TrackState, box: np.ndarray, cap: float, now: float) -> None:
        """A granted track whose re-verification failed is decided again, without a new event, once its votes
        name the granted identity again within the grant's window."""
        if st.hold is not None or st.granted_at is None or self.config.reverify_s <= 0:
            return
        left = st.granted_at + max(self.config.repeat_after_s, self.rules.cooldown_s(door)) - now
        fresh = [o for o in st.obs if now - o.t <= self.config.max_frame_age_s]
        if left > 0 and self._winner(fresh) == st.granted_id:
            groups = next(o.match.groups for o in reversed(fresh)
                          if o.match is not None and o.match.identity_id == st.granted_id)
            st.hold = _Hold(GRANT, st.granted_id, groups, None, cap + left, cap, np.array(box, np.float32))

    def _winner(self, fresh: list[_Obs]) -> Any:
        """The identity with at least ``k`` of the fresh votes and more than any other, else None."""
        ranked = Counter(o.match.identity_id for o in fresh if o.match is not None).most_common()
        if ranked and ranked[0][1] >= self.config.k and (len(ranked) == 1 or ranked[1][1] < ranked[0][1]):
            return ranked[0][0]
        return None

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
        winner = self._winner(fresh)
        track_age = cap - st.attempt_since
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
