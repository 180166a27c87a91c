"""Per-track k-of-n voting over 1:N gallery matches, liveness gating and access rules → door decisions.

For every frame of a camera, ``DecisionEngine.process`` tracks the faces (``FaceTracker``), asks the gallery for
each face's candidates, and records one observation per track. A track is then decided:

* **grant** when, among its last ``n`` frames that are younger than ``max_frame_age_s``, at least ``k`` matched the
  same identity (score passing the ``Scorer``'s threshold — ``facegate/scoring.py`` says which threshold applies —
  AND beating the best *other* identity of that frame by ``margin``, AND beating each of that identity's
  **lookalikes** by ``lookalike_margin``; a face narrower than the pack's ``recogniser.min_face_px`` never
  matches: it is tracked and reported but casts no vote),
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

**One grant per passage** (``runtime/presence.py``): an identity granted at a camera is not granted again, nor
denied, by a later track of that camera while its presence there continues (a matching face seen again within
``presence_gap_s``): a broken track is not a new passage.

**Lookalikes**: pairs of enrolled identities with any two templates closer than the threshold
(``gallery/lookalikes.py``, kept by ``runtime/matching.py``); a frame votes for one of them only when it beats the
other by ``lookalike_margin`` (larger than ``margin``). A lookalike missing from a face's candidates counts as
scoring like the last candidate (fail closed).

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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from facegate.config import DecisionConfig
from facegate.detections import Detections
from facegate.errors import FalseAcceptGoalError, UsageError
from facegate.imaging import face_crop
from facegate.runtime.health import SETTLE_S, Health
from facegate.runtime.presence import Presence
from facegate.runtime.reverify import ReverifyMixin
from facegate.runtime.rules import AccessRules, camera_doors
from facegate.runtime.track_state import Observation, TrackState, Vote
from facegate.runtime.tracking import FaceTracker
from facegate.scoring import Candidate, Margins, Scorer, liveness_threshold
from facegate.scoring import margins as resolve_margins

if TYPE_CHECKING:
    from facegate.calibration import Calibration
    from facegate.config import CameraConfig, Config, LivenessConfig
    from facegate.packs.manifest import PackManifest
    from facegate.pipeline import FacePipeline
    from facegate.runtime.inference import FrameResult

log = logging.getLogger(__name__)

GRANT, DENY, UNKNOWN = "grant", "deny", "unknown"


LookalikesFn = Callable[[Scorer], Mapping[Any, frozenset]]
"""``lookalikes(scorer) → identity id → the ids of its lookalikes`` under that scorer's threshold
(``LiveGallery.lookalikes``)."""

SearchFn = Callable[[np.ndarray], Sequence[Sequence[Candidate]]]
"""``search(embeddings N×D float32) → per face a list of ``scoring.Candidate``, best first`` (``Gallery.search``)."""


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


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DecisionEngine(ReverifyMixin):
    """Decisions for all cameras. Constructor (keyword only):

    * ``search``: ``SearchFn`` (the running daemon's: ``runtime/matching.py``);
    * ``scorer``: ``scoring.Scorer``, the metric and the threshold in force (``Scorer.resolve(manifest,
      decision.threshold)``: ``facegate/scoring.py`` says which threshold applies);
    * ``camera_doors``: camera id → door id (``runtime/rules.camera_doors``);
    * ``rules``: ``AccessRules``; ``config``: the ``decision:`` section; ``liveness``: ``LivenessGate`` or None;
    * ``sink``: called with every decision ``on_result`` makes (the emitter's ``emit``); None keeps them;
    * ``lookalikes``: ``LookalikesFn`` (``LiveGallery.lookalikes``) or None (no lookalike pairs known);
    * ``min_vote_face_px``: faces narrower than this (px, box width) cast no vote (the pack's
      ``recogniser.min_face_px``; 0 = every embedded face votes);
    * ``margins``: ``scoring.Margins`` in force (None: the config's, else the defaults; ``from_config`` uses the
      pack's when the config sets none);
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
        lookalikes: LookalikesFn | None = None,
        min_vote_face_px: int = 0,
        margins: Margins | None = None,
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
        self.lookalikes = lookalikes
        self.min_vote_face_px = int(min_vote_face_px)
        #: The margins in force (``scoring.margins``: the config's, else the pack's)
        self.margins = margins or resolve_margins(None, self.config.margin, self.config.lookalike_margin)
        self.wall_clock = wall_clock
        self.clock = clock
        self.health = health if health is not None else Health()
        self._trackers: dict[str, FaceTracker] = {}
        self._tracks: dict[str, dict[int, TrackState]] = {}
        self._presence = Presence(self.config.presence_gap_s)
        self._lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        #: Attach each decision's face crop (``Decision.face_crop``) in ``on_result``: snapshot retention only.
        self.keep_crops = False
        #: Why no face may vote (a false-accept goal the gallery outgrew), None normally: fail closed.
        self.blocked: str | None = None
        self._manifest: PackManifest | None = None
        self._calibration: Calibration | None = None
        self._templates: int | None = None

    @classmethod
    def from_config(cls, config: Config, *, pipeline: FacePipeline, search: SearchFn, rules: AccessRules,
                    cameras: Sequence[CameraConfig], sink: Callable[[Decision], Any] | None,
                    health: Health | None = None, lookalikes: LookalikesFn | None = None,
                    templates: int | None = None) -> DecisionEngine:
        """The engine of ``config``: ``decision:`` voting, the threshold (``Scorer.resolve`` with the pack's
        calibration and ``templates``, the live gallery's size), ``liveness:`` gating, each camera's door, the
        pack's minimum face size for a vote (``recogniser.min_face_px``) and the gallery's lookalike pairs
        (computed once here, so the first frame does not wait for them); failures reported to ``health``.

        Raises ``FalseAcceptGoalError`` when ``decision.false_accept_rate`` cannot be met with ``templates``, and
        ``ConfigError`` for a goal on a pack without calibration or a damaged calibration file."""
        from facegate.packs.manifest import pack_calibration

        calibration = pack_calibration(pipeline.manifest)
        scorer = _resolve(pipeline.manifest, config.decision, calibration, templates)
        engine = cls(search=search, scorer=scorer, camera_doors=camera_doors(config, cameras), rules=rules,
                     config=config.decision, liveness=LivenessGate.from_config(config.liveness, pipeline.manifest),
                     sink=sink, health=health, lookalikes=lookalikes,
                     min_vote_face_px=pipeline.manifest.recogniser.min_face_px,
                     margins=resolve_margins(pipeline.manifest, config.decision.margin,
                                             config.decision.lookalike_margin))
        engine._manifest, engine._calibration, engine._templates = pipeline.manifest, calibration, templates
        _log_threshold(scorer, "start")
        if lookalikes is not None:
            lookalikes(engine.scorer)
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
            self.margins = resolve_margins(manifest, config.decision.margin, config.decision.lookalike_margin)
            self._rescore("reload")
            self.camera_doors = camera_doors(config, cameras)
            self.min_vote_face_px = manifest.recogniser.min_face_px
            self._presence.gap_s = config.decision.presence_gap_s
        self._warn_doorless()

    def gallery_changed(self, templates: int) -> None:
        """The live gallery now holds ``templates`` templates (``LiveGallery.on_change``): derive the threshold
        again (it depends on the gallery's size when ``decision.false_accept_rate`` is set) and log it."""
        with self._lock:
            self._templates = templates
            self._rescore("gallery_changed")

    def gallery_replaced(self) -> None:
        """Another gallery was loaded whole (``LiveGallery.on_replace``): its identity ids name other people, so
        every track's votes and every passage are forgotten (the tracks start afresh). The doors' grant history
        (cooldown, anti-passback) is kept: forgetting it could only loosen them."""
        with self._lock:
            self._trackers.clear()
            self._tracks.clear()
            self._presence = Presence(self.config.presence_gap_s)
        log.info("event=decision_state_reset why=gallery_replaced")

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
            # degraded, not online: a door that denies everyone must say so (status topic, /health, console)
            self.health.problem("threshold", self.blocked)
            return
        if self.blocked is not None:
            log.warning("event=false_accept_goal_met_again why=%s templates=%s note=grants_resume", why,
                        self._templates)
            self.health.clear("threshold")
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
                crop = face_crop(f.image, d.box) if self.keep_crops and d.box is not None else None
                try:
                    self.sink(dataclasses.replace(d, inferred_mono=result.done_at, face_crop=crop))
                except OSError:
                    log.exception("event=audit_write_failed type=%s camera=%s note=not_published", d.type, d.camera)

    def _tracking(self, camera: str) -> tuple[FaceTracker, dict[int, TrackState]]:
        tracker = self._trackers.get(camera)
        if tracker is None:
            tracker = self._trackers[camera] = FaceTracker(
                min_affinity=self.config.track_min_affinity, timeout_s=self.config.track_max_age_s
            )
            self._tracks[camera] = {}
        return tracker, self._tracks[camera]

    # ----------------------------------------------------------------------------------------------- scoring
    def frame_match(self, candidates: Sequence[Candidate], partners: Mapping[Any, frozenset] | None = None
                    ) -> tuple[Vote | None, float | None]:
        """One face's gallery answer → (its ``Vote`` or None, best score or None).

        Candidates are re-sorted best first (``Scorer.best_first``); the margin is the ``Scorer.gap`` to the best
        *other* identity (None when there is none). A non-finite score never matches. ``partners`` (identity →
        its lookalikes): the best identity must also beat each of its lookalikes by ``lookalike_margin``; a
        lookalike absent from the candidates is taken to score like the last one (it cannot score better).
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
        ok = self.scorer.passes(score) and (margin is None or margin >= self.margins.margin)
        if ok and partners and partners.get(best.identity_id):
            found = {c.identity_id: c.score for c in cands[1:]}
            gaps = [self.scorer.gap(score, found.get(p, cands[-1].score)) for p in partners[best.identity_id]]
            if min(gaps) < self.margins.lookalike:
                ok = False
                self.stats["lookalike_margin_not_met"] += 1
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
        self, camera: str, door: str, tid: int, state: TrackState, cap: float, wall: datetime, now: float,
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
            self._presence.grant(camera, d.identity_id, cap)
        self._hold(door, state, d, box, cap, now)
        self.stats[d.type] += 1
        log.info(
            "event=decision type=%s camera=%s door=%s track=%d identity=%s score=%s reason=%s",
            d.type, camera, door, tid, d.identity_id, d.score, d.reason,
        )
        return d

    def _observe(
        self, camera: str, door: str, dets: Detections, captured_at: float, now: float,
    ) -> tuple[dict[int, TrackState], dict[int, np.ndarray]]:
        """Record one observation per embedded face; returns the camera's track states and the tracks to decide
        (track id → its box), in face order. Without ``data["track_ids"]`` (not planned) every face is tracked
        here and decided. Planned: faces ``plan`` left out add nothing; a re-verification that confirms its
        track's decision adds its observation but asks for no decision."""
        tracker, states = self._tracking(camera)
        self._presence.prune(camera, captured_at)
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
        partners = self.lookalikes(self.scorer) if self.lookalikes is not None else None
        widths = dets.widths
        n = self.config.n
        decide: dict[int, np.ndarray] = {}
        for j, i in enumerate(rows.tolist()):
            tid = int(ids[i])
            state = states.get(tid)
            if state is None:
                state = states[tid] = TrackState(first_seen=captured_at, obs=deque(maxlen=n))
            match, best = self.frame_match(answers[j], partners)
            if match is not None and not widths[i] >= self.min_vote_face_px:
                match = None  # smaller than the pack is calibrated for: tracked and reported, never a vote
                self.stats["small_face_frames"] += 1
            lv = None if live is None else float(live[i])
            if lv is not None and not math.isfinite(lv):
                lv = None
            state.obs.append(Observation(captured_at, match, best, lv))
            # decided states only exist for planned frames: unplanned callers embed and decide every face
            if given is None or not self._confirmed(camera, door, tid, state, match, best, dets.boxes[i],
                                                    captured_at, now):
                decide[tid] = dets.boxes[i]
        return states, decide

    def _winner(self, fresh: list[Observation]) -> Any:
        """The identity with at least ``k`` of the fresh votes and more than any other, else None."""
        ranked = Counter(o.match.identity_id for o in fresh if o.match is not None).most_common()
        if ranked and ranked[0][1] >= self.config.k and (len(ranked) == 1 or ranked[1][1] < ranked[0][1]):
            return ranked[0][0]
        return None

    def _fresh_key(self, state: TrackState, d: Decision, now: float) -> bool:
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
        self, camera: str, door: str, tid: int, st: TrackState, cap: float, wall: datetime, now: float
    ) -> Decision | None:
        p = self.config
        last = st.obs[-1] if st.obs else None
        if last is not None and last.t == cap and last.match is not None:  # this frame's face matches someone
            self._presence.seen(camera, last.match.identity_id, cap)  # a sighting (one grant per passage)
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
        if self._presence.granted(camera, winner, cap):
            # the same passage as an earlier grant at this camera (a broken track): no second grant, no deny; the
            # track is held as granted (``_rehold_grant``) like the track that was granted
            st.granted_at, st.granted_id = now, winner
            self.stats["same_passage"] += 1
            log.info("event=same_passage camera=%s door=%s track=%d identity=%s note=granted_once", camera, door,
                     tid, winner)
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
