"""What opens the lock, and the fail-secure pulse controller that drives it.

An ``Actuator`` has ``activate(hold_s)`` (unlock for about ``hold_s`` seconds; called again to extend) and
``release()`` (lock), both blocking and raising ``OutputError`` on failure:

* ``GpioActuator``: a relay on a GPIO line. The real libgpiod calls live in ``GpiodLine`` (the seam: three
  methods); tests drive ``GpioActuator`` with a recording fake of that seam because this machine has no GPIO chip
  and no gpio-sim module.
* ``ShellyActuator``: a relay speaking the Shelly Gen2 RPC API over HTTP: ``POST <url>/rpc`` with the JSON-RPC frame
  ``{"id", "src", "method": "Switch.Set", "params": {"id", "on", "toggle_after"}}`` (shelly-api-docs.shelly.cloud,
  gen2 ComponentsAndServices/Switch and General/RPCProtocol). ``toggle_after`` makes the relay switch itself back
  off after ``hold_s``: the one output that re-locks even when the agent is killed.
* ``CommandActuator``: an argv list run without a shell (``{hold_s}`` substituted), one for unlock, one for lock.

``PulseController`` owns one actuator in its own thread, so a slow relay never blocks the MQTT thread:
``pulse()`` asks for ``pulse_s`` seconds of open; a second pulse while open extends the deadline (never stacks),
capped at ``max_hold_s`` after the activation; the lock is released at start, at the deadline, at ``stop()`` and
after any failure (a failed release is retried every ``retry_release_s``).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from facegate.errors import FacegateError

if TYPE_CHECKING:
    from facegate.door.config import OutputSection

log = logging.getLogger(__name__)


class OutputError(FacegateError):
    """The lock output could not be switched (relay unreachable, command failed, GPIO line busy)."""


class Actuator(Protocol):
    def activate(self, hold_s: float) -> None: ...
    def release(self) -> None: ...
    def close(self) -> None: ...
    def describe(self) -> str: ...


# ------------------------------------------------------------------------------------------------------- GPIO
class OutputLine(Protocol):
    """The GPIO seam: one output line. ``set(True)`` = active (relay on), honouring active-low."""

    def set(self, active: bool) -> None: ...
    def close(self) -> None: ...


class GpiodLine:
    """One output line requested through libgpiod v2 (the ``gpiod`` package), initially inactive.

    Kept to the bare gpiod calls (``request_lines``, ``set_value``, ``release``) so the rest can be tested through
    the ``OutputLine`` seam. Raises ``OutputError`` naming the chip and line when the package is missing, the chip
    does not exist, or the line is taken.
    """

    def __init__(self, chip: str, line: int, *, active_low: bool = False, consumer: str = "facegate-door") -> None:
        try:
            import gpiod
            from gpiod.line import Direction, Value
        except ImportError as exc:
            raise OutputError("GPIO output needs the gpiod package (pip install 'facegate[door]')") from exc
        self._line, self._value = line, Value
        try:
            self._request = gpiod.request_lines(chip, consumer=consumer, config={line: gpiod.LineSettings(
                direction=Direction.OUTPUT, active_low=active_low, output_value=Value.INACTIVE)})
        except (OSError, ValueError) as exc:
            raise OutputError(f"GPIO {chip} line {line}: cannot request it as an output ({exc}); check the chip "
                              "path (gpiodetect), the line offset (gpioinfo) and that no other program holds it") \
                from exc

    def set(self, active: bool) -> None:
        try:
            self._request.set_value(self._line, self._value.ACTIVE if active else self._value.INACTIVE)
        except OSError as exc:
            raise OutputError(f"GPIO line {self._line}: {exc}") from exc

    def close(self) -> None:
        self._request.release()


class GpioActuator:
    """A relay on a GPIO line (``OutputLine``)."""

    def __init__(self, line: OutputLine, name: str = "gpio") -> None:
        self.line, self.name = line, name

    def activate(self, hold_s: float) -> None:
        self.line.set(True)

    def release(self) -> None:
        self.line.set(False)

    def close(self) -> None:
        self.line.close()

    def describe(self) -> str:
        return self.name


# ------------------------------------------------------------------------------------------------------- HTTP
class ShellyActuator:
    """A Shelly Gen2 relay: ``Switch.Set`` over ``POST <url>/rpc`` (see the module docstring)."""

    def __init__(self, url: str, switch_id: int = 0, *, timeout_s: float = 2.0) -> None:
        self.url = url.rstrip("/") + "/rpc"
        self.switch_id, self.timeout_s = int(switch_id), float(timeout_s)
        self._request_id = 0

    def _switch_set(self, on: bool, toggle_after: float | None) -> None:
        self._request_id += 1
        params: dict[str, object] = {"id": self.switch_id, "on": on}
        if toggle_after is not None:
            # never 0 (no flip-back timer at all, should the agent die now): at least 1 ms
            params["toggle_after"] = max(0.001, round(toggle_after, 3))
        frame = {"id": self._request_id, "src": "facegate-door", "method": "Switch.Set", "params": params}
        req = urllib.request.Request(self.url, data=json.dumps(frame).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 (configured relay URL)
                body = json.loads(resp.read(65536) or b"null")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise OutputError(f"relay {self.url}: Switch.Set on={on} failed ({exc})") from exc
        if not isinstance(body, dict) or "result" not in body:
            err = body.get("error") if isinstance(body, dict) else body
            raise OutputError(f"relay {self.url}: Switch.Set on={on} refused: {err!r}")

    def activate(self, hold_s: float) -> None:
        self._switch_set(True, hold_s)

    def release(self) -> None:
        self._switch_set(False, None)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"shelly {self.url} switch:{self.switch_id}"


# ---------------------------------------------------------------------------------------------------- command
class CommandActuator:
    """Runs ``activate_argv`` / ``release_argv`` (no shell; ``{hold_s}`` in an argument is replaced)."""

    def __init__(self, activate_argv: Sequence[str], release_argv: Sequence[str], *, timeout_s: float = 5.0) -> None:
        self.activate_argv, self.release_argv = list(activate_argv), list(release_argv)
        self.timeout_s = float(timeout_s)

    def _run(self, argv: list[str], hold_s: float) -> None:
        hold = f"{math.ceil(hold_s * 10) / 10:g}"  # tenths, rounded up: "3", "0.2"
        args = [a.replace("{hold_s}", hold) for a in argv]
        try:
            done = subprocess.run(args, timeout=self.timeout_s, capture_output=True, stdin=subprocess.DEVNULL,
                                  check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise OutputError(f"command {args[0]}: {exc}") from exc
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip()[-200:]
            raise OutputError(f"command {args[0]} exited with {done.returncode}: {err}")

    def activate(self, hold_s: float) -> None:
        self._run(self.activate_argv, hold_s)

    def release(self) -> None:
        self._run(self.release_argv, 0)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"command {self.activate_argv[0]}"


# ------------------------------------------------------------------------------------------------------- pulse
class PulseController:
    """Drives one ``Actuator`` fail-secure from its own thread (see the module docstring).

    ``on_change(active: bool)`` is called from the controller thread whenever the output really switched.
    ``stats``: activations, extensions, releases, errors. ``clock``: monotonic seconds (injectable for tests).
    """

    def __init__(self, actuator: Actuator, *, pulse_s: float, max_hold_s: float, retry_release_s: float = 2.0,
                 on_change: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < pulse_s <= max_hold_s:
            raise ValueError(f"need 0 < pulse_s ({pulse_s}) ≤ max_hold_s ({max_hold_s})")
        self.actuator = actuator
        self.pulse_s, self.max_hold_s, self.retry_release_s = float(pulse_s), float(max_hold_s), float(retry_release_s)
        self.on_change = on_change
        self.clock = clock
        self.stats = {"activations": 0, "extensions": 0, "releases": 0, "errors": 0}
        self._cond = threading.Condition()
        self._deadline: float | None = None  # wanted open until; None = wanted locked
        self._since: float | None = None     # when the current activation started
        self._resend = False                 # an extension to pass on to the actuator
        self._active = False                 # what the actuator was last told (True also while unsure)
        self._unsure = False                 # the last switch failed: the relay's real state is unknown
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        with self._cond:
            return self._active

    @property
    def deadline(self) -> float | None:
        """Until when (``clock`` seconds) the lock is wanted open; None when it is wanted locked."""
        with self._cond:
            return self._deadline

    @property
    def alive(self) -> bool:
        """The controller thread runs (False before ``start`` and after ``stop``)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Release the output (fail secure at start: whatever a killed predecessor left), then run the thread."""
        with self._cond:
            self._active = True  # unknown state counts as open until a release succeeded
        self._release()
        self._thread = threading.Thread(target=self._loop, name="door-output", daemon=True)
        self._thread.start()

    def pulse(self) -> bool:
        """Ask for the lock open ``pulse_s`` from now. Returns False when refused (stopping, or already open for
        ``max_hold_s``: the lock stays locked until released once)."""
        with self._cond:
            if self._stopping:
                return False
            now = self.clock()
            if self._deadline is None:
                self._since, self._deadline = now, now + self.pulse_s
            else:
                cap = (self._since or now) + self.max_hold_s
                if now >= cap:
                    return False
                self._deadline = min(max(self._deadline, now + self.pulse_s), cap)
                self._resend = True
            self._cond.notify_all()
            return True

    def release_now(self) -> None:
        """Drop any pending open (e.g. on an error elsewhere); the thread releases the output."""
        with self._cond:
            self._deadline = None
            self._cond.notify_all()

    def stop(self, timeout_s: float | None = None) -> None:
        """Release the output and stop the thread (SIGTERM, end of run). Waits for a switch in flight to end first
        (``timeout_s``, default the actuator's own ``timeout_s`` + 5 s): a release sent while an activation is
        still under way could be overtaken by it and leave the lock open (second attack)."""
        with self._cond:
            self._stopping = True
            self._deadline = None
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s if timeout_s is not None
                              else float(getattr(self.actuator, "timeout_s", 5.0)) + 5.0)
            if self._thread.is_alive():
                log.error("event=output_thread_stuck output=%r note=releasing_anyway", self.actuator.describe())
        self._release()  # once more from this thread: the last word to the relay is "locked"

    # -- controller thread --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = self.clock()
                want_open = self._deadline is not None and now < self._deadline
                if self._deadline is not None and not want_open:
                    self._deadline = self._since = None
                action = None
                # unsure (the relay failed to answer): a wanted opening is sent in full, not taken as done, and
                # a wanted release is retried every retry_release_s (found by attack: with the relay down, a
                # grant's pulse suspended the release retries and its opening was never attempted)
                if want_open and (not self._active or self._resend or self._unsure):
                    action = ("extend" if self._active and not self._unsure else "open", self._deadline - now)
                    self._resend = False
                elif not want_open and self._active:
                    action = ("release", 0.0)
                if action is None:
                    wait = (self._deadline - now) if want_open else None
                    self._cond.wait(wait)
                    continue
            if action[0] == "release":
                if not self._release():
                    with self._cond:  # a grant that came during the failed call is served now, not after the wait
                        self._cond.wait_for(lambda: self._deadline is not None or self._stopping,
                                            self.retry_release_s)
            else:
                self._open(action[0], action[1])

    def _open(self, kind: str, hold_s: float) -> None:
        try:
            self.actuator.activate(hold_s)
        except Exception as exc:  # any failure: give up this opening and make sure the lock is locked
            self.stats["errors"] += 1
            log.error("event=output_error action=activate output=%r error=%r", self.actuator.describe(), str(exc))
            with self._cond:
                self._deadline = self._since = None
                self._active = self._unsure = True  # unsure: the loop releases it
            return
        with self._cond:
            was = self._active and not self._unsure
            self._active, self._unsure = True, False
        self.stats["extensions" if kind == "extend" else "activations"] += 1
        log.info("event=output_%s output=%r hold_s=%.3f", "extended" if kind == "extend" else "activated",
                 self.actuator.describe(), hold_s)
        if not was and self.on_change:
            self.on_change(True)

    def _release(self) -> bool:
        try:
            self.actuator.release()
        except Exception as exc:
            self.stats["errors"] += 1
            log.error("event=output_error action=release output=%r error=%r", self.actuator.describe(), str(exc))
            with self._cond:
                self._unsure = True
            return False
        with self._cond:
            was = self._active
            self._active = self._unsure = False
        self.stats["releases"] += 1
        if was:
            log.info("event=output_released output=%r", self.actuator.describe())
            if self.on_change:
                self.on_change(False)
        return True


def build_actuator(output: OutputSection) -> Actuator:
    """The actuator for a validated ``output`` config section. Raises ``OutputError`` (GPIO chip/line problems)."""
    if output.gpio is not None:
        g = output.gpio
        return GpioActuator(GpiodLine(g.chip, g.line, active_low=g.active_low), name=f"gpio {g.chip}:{g.line}")
    if output.http is not None:
        return ShellyActuator(output.http.url, output.http.switch_id, timeout_s=output.http.timeout_s)
    assert output.command is not None  # OutputSection validates that exactly one is given
    return CommandActuator(output.command.activate, output.command.release, timeout_s=output.command.timeout_s)
