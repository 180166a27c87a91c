"""Door contact / REX inputs and the door state machine (facegate/door/inputs.py); GPIO inputs through the seam."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime

import pytest

from facegate.door.inputs import DoorStateMachine, GpiodInput, InputError, InputPoller


def machine(**kw):
    states: list[str] = []
    passages: list[dict] = []
    m = DoorStateMachine("front", has_contact=True, held_open_s=kw.pop("held_open_s", 30.0),
                         passage_window_s=kw.pop("passage_window_s", 10.0), on_state=states.append,
                         on_passage=passages.append, wall_clock=lambda: datetime(2026, 6, 3, 7, 0, tzinfo=UTC))
    return m, states, passages


def test_grant_then_opening_is_one_passage_with_the_grant_event_id():
    m, states, passages = machine()
    m.granted("ev-1", 0.0)
    m.output_changed(True, 0.1)
    m.contact(True, 1.0)
    m.output_changed(False, 3.0)
    m.contact(False, 4.0)
    m.contact(True, 5.0)  # opened again without a new grant, output released: forced
    assert states == ["unlocked", "open", "locked", "forced"]
    assert len(passages) == 1
    assert passages[0]["event_id"] == "ev-1" and passages[0]["door"] == "front"
    assert passages[0]["opened_at"].endswith("Z") and passages[0]["granted_at"].endswith("Z")


def test_opening_without_grant_or_rex_is_forced_until_closed():
    m, states, passages = machine()
    m.contact(True, 0.0)
    assert m.state == "forced"
    m.tick(100.0)
    assert m.state == "forced"  # forced wins over held_open
    m.contact(False, 101.0)
    assert states == ["forced", "locked"] and passages == []


def test_rex_authorises_an_exit_without_a_passage():
    m, states, passages = machine()
    m.rex(0.0)
    m.contact(True, 2.0)
    assert m.state == "open" and passages == []
    m.contact(False, 3.0)
    m.rex(10.0)
    m.contact(True, 25.0)  # REX older than passage_window_s: forced
    assert m.state == "forced"


def test_held_open_and_stale_grants():
    m, states, passages = machine(held_open_s=5.0, passage_window_s=2.0)
    m.granted("ev-1", 0.0)
    m.tick(3.0)  # grant older than the window is forgotten
    m.contact(True, 3.5)
    assert m.state == "forced" and passages == []
    m.contact(False, 4.0)
    m.granted("ev-2", 10.0)
    m.contact(True, 11.0)
    m.tick(15.0)
    assert m.state == "open"
    m.tick(16.5)
    assert m.state == "held_open"
    assert [p["event_id"] for p in passages] == ["ev-2"]


class FakeInput:
    """Fake of the GPIO input seam only."""

    def __init__(self, value: bool = False) -> None:
        self.value, self.fail, self.closed = value, False, False

    def read(self) -> bool:
        if self.fail:
            raise OSError("line gone")
        return self.value

    def close(self) -> None:
        self.closed = True


def test_poller_debounces_and_keeps_the_last_value_on_read_errors():
    now = [0.0]
    line = FakeInput(False)
    seen: list[tuple[str, bool]] = []
    poller = InputPoller({"contact": line}, lambda n, v: seen.append((n, v)), debounce_s=0.05, clock=lambda: now[0])
    poller.values["contact"] = line.read()
    line.value = True  # a 20 ms bounce: ignored
    poller.poll_once()
    now[0] = 0.02
    line.value = False
    poller.poll_once()
    assert seen == []
    line.value = True
    for t in (0.1, 0.13, 0.16):
        now[0] = t
        poller.poll_once()
    assert seen == [("contact", True)]
    line.fail = True
    poller.poll_once()
    assert poller.values["contact"] is True and seen == [("contact", True)]
    poller.stop()
    assert line.closed


def test_real_gpiod_input_fails_clearly_without_a_chip(tmp_path):
    if importlib.util.find_spec("gpiod") is None:
        pytest.skip("needs the gpiod package (pip install -e .[dev])")
    with pytest.raises(InputError, match="line 27"):
        GpiodInput(str(tmp_path / "gpiochip-missing"), 27)
