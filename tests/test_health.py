"""The health registry: one line when an episode starts and one when it ends, counts, reminders at most once a
minute, a JSON-able snapshot, and listeners told of every change (a failing listener never stops the reporter)."""

from __future__ import annotations

import json
import logging
import threading

from facegate.runtime.health import REMIND_S, RENOTIFY_S, SETTLE_S, Health


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _events(caplog, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"event={event} " in r.getMessage()]


def test_one_line_per_episode_with_its_count_and_duration(caplog):
    clock = Clock()
    health = Health(clock=clock)
    assert health.state == "ok" and not health.clear("gallery")  # clearing a healthy part says nothing
    with caplog.at_level(logging.INFO, logger="facegate"):
        for _ in range(5):
            health.problem("inference", "RuntimeError: bad shape")
            clock.t += 1.0
        assert health.state == "degraded" and health.degraded("inference")
        assert health.failing_for("inference") == 5.0
        assert health.clear("inference")
    (started,) = _events(caplog, "degraded")
    (ended,) = _events(caplog, "recovered")
    assert "part=inference" in started and "effect=no_decisions" in started and "bad shape" in started
    assert "after_s=5.00" in ended and "count=5" in ended
    assert health.state == "ok" and health.failing_for("inference") == 0.0


def test_reminders_at_most_once_per_period(caplog):
    clock = Clock()
    health = Health(clock=clock)
    with caplog.at_level(logging.WARNING, logger="facegate"):
        health.problem("audit", "disk full")
        for _ in range(int(3 * REMIND_S)):
            clock.t += 1.0
            health.problem("audit", "disk full")
    assert len(_events(caplog, "degraded")) == 1
    assert 2 <= len(_events(caplog, "still_degraded")) <= 3


def test_snapshot_is_json_and_lists_every_part():
    health = Health()
    health.problem("mqtt", "broker 127.0.0.1:1883 disconnected", count=2)
    snap = json.loads(json.dumps(health.snapshot()))
    assert snap["state"] == "degraded"
    assert set(snap["parts"]) == {"gallery", "audit", "inference", "mqtt", "cameras"}
    assert snap["parts"]["mqtt"]["state"] == "degraded" and snap["parts"]["mqtt"]["count"] == 2
    assert snap["parts"]["mqtt"]["since"].endswith("Z") and snap["parts"]["gallery"]["reason"] is None
    health.problem("door-sensor", "new part")  # a part nobody registered is added on first report
    assert "door-sensor" in health.snapshot()["parts"]


def test_listeners_hear_changes_not_repeats_and_a_failing_one_is_contained(caplog):
    clock = Clock()
    health = Health(clock=clock)
    heard: list[str] = []
    health.subscribe(lambda: heard.append(health.snapshot()["state"]))
    health.subscribe(lambda: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="facegate"):
        health.problem("gallery", "missing")
        health.problem("gallery", "missing")  # the same: no news
        health.problem("gallery", "another reason")  # within RENOTIFY_S: not passed on yet
        clock.t += RENOTIFY_S
        health.problem("gallery", "a third reason")
        health.clear("gallery")
    assert heard == ["degraded", "degraded", "ok"]
    assert len(_events(caplog, "health_listener_failed")) == 3


def test_thread_safe_counts():
    health = Health()
    threads = [threading.Thread(target=lambda: [health.problem("inference", "x") for _ in range(500)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert health.snapshot()["parts"]["inference"]["count"] == 2000


def test_a_flapping_part_is_one_episode_until_it_settles(caplog):
    clock = Clock()
    health = Health(clock=clock)
    with caplog.at_level(logging.INFO, logger="facegate"):
        for _ in range(50):  # a model failing on every other batch
            health.problem("inference", "RuntimeError: shape")
            clock.t += 0.05
            assert not health.clear("inference", settle_s=SETTLE_S)
            clock.t += 0.05
        clock.t += SETTLE_S
        assert health.clear("inference", settle_s=SETTLE_S)
    assert len(_events(caplog, "degraded")) == 1 and len(_events(caplog, "recovered")) == 1
    assert "count=50" in _events(caplog, "recovered")[0]
