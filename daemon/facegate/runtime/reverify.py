"""Work once per face, not once per frame: which faces of a frame need an embedding (``plan``, before the
inference stage embeds), and keeping a decided track decided while re-verification frames agree with it.

See ``runtime/decision.py``'s module docstring ("Work once per face") for the rules; this is the part of the
decision engine that implements them, as a mixin of ``DecisionEngine`` (it reads the engine's ``config``,
``scorer``, ``rules``, ``stats`` and tracks). Fail closed: a face that is not embedded adds no observation and is
never decided on, so it can never produce a grant.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from facegate.runtime.track_state import RULE_REASONS, Hold, TrackState, Vote
from facegate.runtime.tracking import box_iou

if TYPE_CHECKING:
    from facegate.detections import Detections

log = logging.getLogger(__name__)

GRANT, DENY, UNKNOWN = "grant", "deny", "unknown"


class ReverifyMixin:
    """``DecisionEngine``'s re-verification methods (see the module docstring)."""

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

    def _due(self, hold: Hold, box: np.ndarray, cap: float) -> bool:
        """A decided track's face needs an embedding: its window ended, its check is due, or its box jumped."""
        p = self.config
        if p.reverify_s <= 0 or cap >= hold.until or cap - hold.checked_at >= p.reverify_s:
            return True
        return float(box_iou(hold.box, box)[0, 0]) < p.reverify_iou

    # ----------------------------------------------------------------------------------------------- decided
    def _stranger(self, best: float | None) -> bool:
        """A face's best comparison score misses the threshold by at least ``margin`` (or there was none): clearly
        nobody enrolled, not a near miss that the next frame may turn into a match."""
        return best is None or not math.isfinite(best) or \
            self.scorer.gap(self.scorer.threshold, best) >= self.margins.margin

    def _confirmed(self, camera: str, door: str, tid: int, st: TrackState, match: Vote | None, best: float | None,
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
        if agrees and hold.type == DENY and hold.reason in RULE_REASONS:
            # the door's answer can change while the person stands there (schedule, cooldown)
            agrees = self.rules.check(identity_id=hold.identity_id, groups=hold.groups, door=door,
                                      wall=self.wall_clock(), now=now) == hold.reason
        if agrees:
            if match is not None:  # a held track's check that matches is a sighting too (one grant per passage)
                self._presence.seen(camera, match.identity_id, cap)
            hold.checked_at, hold.box = cap, np.array(box, np.float32)
            self.stats["reverified"] += 1
            return True
        st.restart(cap)
        self.stats["reverify_failed"] += 1
        log.info("event=reverify_failed camera=%s track=%d decided=%s identity=%s now=%s", camera, tid, hold.type,
                 hold.identity_id, None if match is None else match.identity_id)
        return False

    def _hold(self, door: str, st: TrackState, d: Any, box: np.ndarray, cap: float, now: float) -> None:
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
            st.hold = Hold(d.type, d.identity_id, groups, d.reason, cap + left, cap, np.array(box, np.float32))

    def _rehold_grant(self, door: str, st: TrackState, box: np.ndarray, cap: float, now: float) -> None:
        """A granted track whose re-verification failed is decided again, without a new event, once its votes
        name the granted identity again within the grant's window."""
        if st.hold is not None or st.granted_at is None or self.config.reverify_s <= 0:
            return
        left = st.granted_at + max(self.config.repeat_after_s, self.rules.cooldown_s(door)) - now
        fresh = [o for o in st.obs if now - o.t <= self.config.max_frame_age_s]
        if left > 0 and self._winner(fresh) == st.granted_id:
            groups = next(o.match.groups for o in reversed(fresh)
                          if o.match is not None and o.match.identity_id == st.granted_id)
            st.hold = Hold(GRANT, st.granted_id, groups, None, cap + left, cap, np.array(box, np.float32))
