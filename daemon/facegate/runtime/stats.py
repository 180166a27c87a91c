"""Decision statistics: a sink of the emitter that counts decisions by type and keeps the latest latencies.

Latency per decision (s, monotonic): capture of the deciding frame → inference done (``Decision.inferred_mono``), and
capture → this sink (after the audit record is durable and the MQTT sink has queued it: the daemon's own share of
the capture → door latency). The last ``keep`` decisions are kept; ``summary`` gives p50/p99 in ms for the
``event=stats`` log line.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facegate.runtime.events import SignedEvent


def percentile_ms(values: list[float], q: float) -> str:
    """The ``q`` quantile (0..1, nearest rank of the sorted values) of seconds as whole ms; "-" when empty."""
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.0f}"


class DecisionStats:
    """Sink: decision counts and the latest latencies. Thread-safe. ``clock`` monotonic seconds (tests inject)."""

    name = "stats"
    critical = False

    def __init__(self, keep: int = 1000, clock: Any = time.monotonic) -> None:
        self.counts: dict[str, int] = {"grant": 0, "deny": 0, "unknown": 0}
        self.latencies: collections.deque[tuple[float, float]] = collections.deque(maxlen=keep)
        self._clock = clock
        self._lock = threading.Lock()

    def emit(self, event: SignedEvent) -> None:
        d = event.decision
        now = self._clock()
        with self._lock:
            self.counts[d.type] = self.counts.get(d.type, 0) + 1
            if d.captured_mono is not None:
                inferred = d.inferred_mono if d.inferred_mono is not None else now
                self.latencies.append((inferred - d.captured_mono, now - d.captured_mono))

    def summary(self) -> dict[str, Any]:
        """Counts and p50/p99 latencies (ms, strings for the log line)."""
        with self._lock:
            lat = list(self.latencies)
            counts = dict(self.counts)
        inferred = [a for a, _ in lat]
        emitted = [b for _, b in lat]
        return {"decisions": counts,
                "latency_ms_inferred_p50": percentile_ms(inferred, 0.5),
                "latency_ms_inferred_p99": percentile_ms(inferred, 0.99),
                "latency_ms_emitted_p50": percentile_ms(emitted, 0.5),
                "latency_ms_emitted_p99": percentile_ms(emitted, 0.99)}
