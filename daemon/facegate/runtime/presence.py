"""Who is in front of each camera now: one grant per passage.

A **passage** is one continuous presence of an identity in front of one camera: it starts when the identity is
first seen there and lasts while it is seen again within ``gap_s`` seconds (``decision.presence_gap_s``), whatever
happens to the tracks meanwhile. Face tracks break for ordinary reasons — a hand or a microphone in front of the
face, a turned head, a missed detection — and before this module each new track of the same person was a new grant
(issue 14: the quick start granted one person 15 times in 65 s; with a 5 s cooldown a new track was denied, then
granted 2 s later). The decision engine asks ``granted`` before deciding a track: a passage that was already
granted gets no second grant and no deny.

"Seen" means: a frame in which one of the camera's faces matched the identity (it voted for it: threshold,
margins and face size, as ``runtime/decision.py`` counts votes). Track continuity alone does not count: a tracker
can carry a track from one face to another (measured on the stage clip: at the cut to the audience the granted
performer's track continued on a spectator's face), which would stretch a passage over someone else's presence.
Times are monotonic capture seconds. Not thread-safe: the decision engine calls it under its lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class _Passage:
    start: float
    last_seen: float
    granted: bool = False


class Presence:
    """Per camera, per identity: the current passage (see the module docstring). ``gap_s`` > 0 seconds."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = float(gap_s)
        self._by_camera: dict[str, dict[Any, _Passage]] = {}

    def seen(self, camera: str, identity_id: Any, t: float) -> None:
        """``identity_id`` was seen at ``camera`` at monotonic ``t``: continue its passage, or start a new one when
        it was last seen more than ``gap_s`` ago (or never)."""
        passages = self._by_camera.setdefault(camera, {})
        p = passages.get(identity_id)
        if p is None or t - p.last_seen > self.gap_s:
            passages[identity_id] = _Passage(t, t)
        elif t > p.last_seen:
            p.last_seen = t

    def grant(self, camera: str, identity_id: Any, t: float) -> None:
        """A grant was issued for ``identity_id`` at ``camera`` at ``t``: its passage is granted."""
        self.seen(camera, identity_id, t)
        self._by_camera[camera][identity_id].granted = True

    def granted(self, camera: str, identity_id: Any, t: float) -> bool:
        """True when ``identity_id``'s current passage at ``camera`` (seen within ``gap_s`` before ``t``) was
        already granted."""
        p = self._by_camera.get(camera, {}).get(identity_id)
        return p is not None and p.granted and t - p.last_seen <= self.gap_s

    def prune(self, camera: str, t: float) -> None:
        """Forget passages of ``camera`` that ended (not seen for more than ``gap_s`` before ``t``)."""
        passages = self._by_camera.get(camera)
        if passages:
            for key in [k for k, p in passages.items() if t - p.last_seen > self.gap_s]:
                del passages[key]
