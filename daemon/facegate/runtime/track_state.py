"""What the decision stage keeps per track: its observations (one per embedded frame), its votes, whether it is
decided and held (``runtime/reverify.py``), and when it was granted (``runtime/decision.py``)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np


class Vote(NamedTuple):
    """One frame's match for a track: the identity it voted for, its comparison score and its ``margin`` over the
    best other identity of that frame (None when the gallery had no other identity)."""

    identity_id: Any
    name: str
    groups: tuple[str, ...]
    score: float
    margin: float | None


class Observation(NamedTuple):
    """One embedded frame of a track: capture time (monotonic s), its vote (None: no match), the frame's best
    score (any identity; for unknown events) and its live score (None without liveness)."""

    t: float  # monotonic capture time
    match: Vote | None  # when the frame matched
    best: float | None  # best score of the frame (any identity), for unknown events
    live: float | None


#: Deny reasons that come from the door's rules and can change while a track stands there (time, cooldown).
RULE_REASONS = frozenset({"not_in_group", "outside_schedule", "cooldown", "anti_passback", "unknown_door"})


@dataclass
class Hold:
    """A decided track: its faces are embedded only for re-verification until ``until`` (capture time, s)."""

    type: str
    identity_id: Any
    groups: tuple[str, ...]
    reason: str | None
    until: float
    checked_at: float  # capture time of the last frame that confirmed it
    box: np.ndarray  # that frame's box, 4 float32 px


@dataclass
class TrackState:
    """One track's decision state (module docstring); ``obs`` holds the last ``n`` observations."""

    first_seen: float
    obs: deque = field(default_factory=deque)
    emitted: dict = field(default_factory=dict)  # (type, identity, reason) → monotonic s
    granted_at: float | None = None
    granted_id: Any = None
    spoof: bool = False
    attempt_since: float | None = None  # capture time the current vote started (first_seen, or a decided state's end)
    hold: Hold | None = None

    def __post_init__(self) -> None:
        if self.attempt_since is None:
            self.attempt_since = self.first_seen

    def restart(self, cap: float) -> None:
        """End the decided state: embed every frame again and vote afresh from ``cap``."""
        self.hold = None
        self.attempt_since = cap
