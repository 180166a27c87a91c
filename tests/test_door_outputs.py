"""Door outputs (facegate/door/outputs.py): the fail-secure pulse controller over the GPIO seam, a real local
Shelly Gen2 HTTP server, and a real command that records its calls.

GPIO: this machine has no GPIO chip and no gpio-sim kernel module, so ``GpioActuator`` is driven through a
recording fake of the ``OutputLine`` seam; the real ``GpiodLine`` is only checked to fail clearly without a chip.
"""

from __future__ import annotations

import importlib.util
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from facegate.door.outputs import (
    CommandActuator,
    GpioActuator,
    GpiodLine,
    OutputError,
    PulseController,
    ShellyActuator,
)

sys.path.insert(0, str(Path(__file__).parent))
from shelly_server import ShellyRelay  # noqa: E402


class RecordingLine:
    """Fake of the GPIO seam only: records every level written."""

    def __init__(self, fail_on: bool | None = None) -> None:
        self.levels: list[bool] = []
        self.closed = False
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def set(self, active: bool) -> None:
        with self.lock:
            if self.fail_on is not None and active == self.fail_on:
                raise OutputError("injected GPIO failure")
            self.levels.append(active)

    def close(self) -> None:
        self.closed = True

    @property
    def level(self) -> bool | None:
        with self.lock:
            return self.levels[-1] if self.levels else None


def wait_until(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


@pytest.fixture
def relay():
    server = ShellyRelay().start()
    yield server
    server.stop()


def test_pulse_releases_at_start_opens_once_and_releases_after_pulse():
    line = RecordingLine()
    changes: list[bool] = []
    ctl = PulseController(GpioActuator(line), pulse_s=0.3, max_hold_s=1.0, on_change=changes.append)
    ctl.start()
    assert line.levels == [False]  # released at start, before anything else
    assert ctl.pulse()
    assert wait_until(lambda: line.level is True)
    assert wait_until(lambda: line.level is False)
    # on_change reports the start release too (the state "locked" is published at once), then open, then locked
    assert line.levels == [False, True, False] and changes == [False, True, False]
    ctl.stop()
    assert line.level is False and not ctl.alive


def test_second_grant_extends_instead_of_stacking_and_max_hold_caps():
    now = [100.0]
    ctl = PulseController(GpioActuator(RecordingLine()), pulse_s=1.0, max_hold_s=2.0, clock=lambda: now[0])
    assert ctl.pulse() and ctl.deadline == 101.0
    now[0] = 100.5
    assert ctl.pulse() and ctl.deadline == 101.5  # extended to 1 s from the second grant, not 2 s in total
    now[0] = 100.6
    assert ctl.pulse() and ctl.deadline == 101.6
    now[0] = 101.8
    assert ctl.pulse() and ctl.deadline == 102.0  # capped at max_hold_s after the opening
    now[0] = 102.0
    assert not ctl.pulse()  # open for max_hold_s already: no endless holding by a stream of grants
    ctl.release_now()
    assert ctl.deadline is None and ctl.pulse() and ctl.deadline == 103.0  # a new opening after a release


def test_extensions_reach_the_output_as_one_activation():
    line = RecordingLine()
    ctl = PulseController(GpioActuator(line), pulse_s=0.4, max_hold_s=2.0)
    ctl.start()
    ctl.pulse()
    assert wait_until(lambda: line.level is True)
    ctl.pulse()
    assert wait_until(lambda: line.level is False, 5)
    assert ctl.stats["activations"] == 1 and ctl.stats["extensions"] == 1
    assert line.levels == [False, True, True, False]  # the extension re-asserts the level, never a gap
    ctl.stop()


def test_a_failing_activation_ends_locked():
    line = RecordingLine(fail_on=True)
    ctl = PulseController(GpioActuator(line), pulse_s=0.3, max_hold_s=1.0)
    ctl.start()
    ctl.pulse()
    assert wait_until(lambda: ctl.stats["errors"] == 1)
    assert wait_until(lambda: not ctl.active)
    assert True not in line.levels and line.level is False
    ctl.stop()


def test_a_failing_release_is_retried():
    class Flaky(RecordingLine):
        def __init__(self) -> None:
            super().__init__()
            self.refusals = 2

        def set(self, active: bool) -> None:
            if not active and self.refusals > 0:
                self.refusals -= 1
                raise OutputError("relay busy")
            super().set(active)

    line = Flaky()
    ctl = PulseController(GpioActuator(line), pulse_s=0.2, max_hold_s=1.0, retry_release_s=0.1)
    ctl.start()  # first release fails: the controller counts the output as possibly open and keeps trying
    assert wait_until(lambda: line.level is False, 3)
    assert ctl.stats["errors"] == 2 and not ctl.active
    ctl.stop()


def test_with_the_relay_down_a_grant_is_still_tried_and_the_release_keeps_being_retried():
    """Attack finding: with the output unreachable (its state unknown), a grant's pulse was taken as already open:
    the opening was never attempted and the release retries stopped until the pulse's deadline."""
    class Down(RecordingLine):
        def __init__(self) -> None:
            super().__init__()
            self.up = False
            self.attempts: list[bool] = []

        def set(self, active: bool) -> None:
            self.attempts.append(active)
            if not self.up:
                raise OutputError("relay unreachable")
            super().set(active)

    line = Down()
    ctl = PulseController(GpioActuator(line), pulse_s=1.0, max_hold_s=2.0, retry_release_s=0.05)
    ctl.start()
    assert wait_until(lambda: line.attempts.count(False) >= 2)
    ctl.pulse()  # a valid grant while the relay is down: tried (and fails), never reported as switched
    assert wait_until(lambda: True in line.attempts)
    tried = line.attempts.count(False)
    assert wait_until(lambda: line.attempts.count(False) >= tried + 2)  # release retries go on meanwhile
    assert line.levels == [] and ctl.active  # nothing switched; counted as possibly open until a release works
    line.up = True
    assert wait_until(lambda: line.level is False and not ctl.active)
    ctl.stop()


def test_stop_waits_for_an_activation_in_flight_before_the_last_release():
    """Second attack: stop() waited a fixed 10 s, so a release could be sent while a slower activation (a command
    output may take 60 s) was still under way, which then landed and left the lock open. stop() now waits the
    actuator's own timeout_s + 5 s; here: the last word is the release, after the activation returned."""
    class Slow(RecordingLine):
        timeout_s = 1.0

        def set(self, active: bool) -> None:
            if active:
                time.sleep(0.6)
            super().set(active)

    line = Slow()
    ctl = PulseController(GpioActuator(line), pulse_s=2.0, max_hold_s=3.0)
    ctl.actuator.timeout_s = 1.0  # what stop() waits for (+ 5 s)
    ctl.start()
    ctl.pulse()
    time.sleep(0.2)  # the activation is under way
    ctl.stop()
    assert line.levels[-1] is False and True in line.levels


def test_a_grant_during_a_failing_release_is_served_without_waiting_out_the_retry():
    class Busy(RecordingLine):
        def __init__(self) -> None:
            super().__init__()
            self.refusals = 1

        def set(self, active: bool) -> None:
            if not active and self.refusals > 0:
                self.refusals -= 1
                time.sleep(0.3)  # a slow, failing release: the grant arrives meanwhile
                raise OutputError("relay busy")
            super().set(active)

    line = Busy()
    line.refusals = 0
    ctl = PulseController(GpioActuator(line), pulse_s=0.2, max_hold_s=1.0, retry_release_s=30.0)
    ctl.start()
    line.refusals = 1  # the release that ends the first pulse is slow and fails
    ctl.pulse()
    assert wait_until(lambda: line.levels.count(True) == 1)
    time.sleep(0.3)  # the pulse ended: its release is under way
    ctl.pulse()  # a second grant while that release fails
    assert wait_until(lambda: line.levels.count(True) == 2, 3), "the grant waited for the 30 s release retry"
    ctl.stop()
    assert line.level is False


def test_real_gpiod_line_fails_clearly_without_a_chip(tmp_path):
    if importlib.util.find_spec("gpiod") is None:
        pytest.skip("needs the gpiod package (pip install -e .[dev])")
    with pytest.raises(OutputError, match="gpiochip-missing line 17"):
        GpiodLine(str(tmp_path / "gpiochip-missing"), 17)


# -------------------------------------------------------------------------------------------------- Shelly
def test_shelly_switch_set_with_toggle_after(relay):
    act = ShellyActuator(relay.url, 0, timeout_s=2)
    act.activate(0.3)
    assert relay.output[0] is True
    assert relay.calls[-1][1:] == ("Switch.Set", {"id": 0, "on": True, "toggle_after": 0.3})
    assert wait_until(lambda: relay.output[0] is False, 3)  # the relay switched itself back (toggle_after)
    act.activate(5)
    act.release()
    assert relay.output[0] is False and relay.calls[-1][2] == {"id": 0, "on": False}


def test_shelly_errors_are_output_errors(relay):
    with pytest.raises(OutputError, match=r"Argument 'id'"):
        ShellyActuator(relay.url, 3).activate(1)  # the device has switch:0 only
    relay.fail = True
    with pytest.raises(OutputError, match="Switch.Set on=True failed"):
        ShellyActuator(relay.url).activate(1)
    relay.stop()
    with pytest.raises(OutputError):
        ShellyActuator(relay.url, timeout_s=0.5).release()


def test_controller_with_shelly_one_actuation_per_grant(relay):
    ctl = PulseController(ShellyActuator(relay.url), pulse_s=0.3, max_hold_s=1.0)
    ctl.start()
    ctl.pulse()
    assert wait_until(lambda: len(relay.ons()) == 1)
    assert wait_until(lambda: not ctl.active)
    ctl.stop()
    assert len(relay.ons()) == 1 and relay.output[0] is False
    assert relay.calls[0][2] == {"id": 0, "on": False}  # released at start


# ------------------------------------------------------------------------------------------------- command
def recorder(tmp_path: Path) -> Path:
    script = tmp_path / "lockctl"
    script.write_text(f"#!{sys.executable}\nimport sys\n"
                      f"open({str(tmp_path / 'calls.txt')!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
                      "sys.exit(3 if 'fail' in sys.argv else 0)\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_command_actuator_runs_argv_without_a_shell(tmp_path):
    script = recorder(tmp_path)
    act = CommandActuator([str(script), "open", "{hold_s}", "$(touch pwned)"], [str(script), "close"])
    ctl = PulseController(act, pulse_s=0.2, max_hold_s=1.0)
    ctl.start()
    ctl.pulse()
    calls = tmp_path / "calls.txt"
    assert wait_until(lambda: calls.exists() and calls.read_text().count("close") >= 2)
    ctl.stop()
    lines = calls.read_text().splitlines()
    assert lines[0] == "close" and lines[1] == "open 0.2 $(touch pwned)" and lines[2] == "close"
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_command_failures_are_output_errors(tmp_path):
    script = recorder(tmp_path)
    with pytest.raises(OutputError, match="exited with 3"):
        CommandActuator([str(script), "fail"], [str(script), "close"]).activate(1)
    with pytest.raises(OutputError, match="no-such-lock-tool"):
        CommandActuator([str(tmp_path / "no-such-lock-tool")], [str(script)]).activate(1)
