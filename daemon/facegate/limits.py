"""Bounds shared by the daemon's config, the door agent's config and the command line.

Every number a user can give ends up in a library that has its own limits: a C ``int`` of milliseconds inside
OpenCV, MQTT's 16-bit keep-alive, ``datetime``'s year 9999, ``threading``'s ``TIMEOUT_MAX``, a deque's
``Py_ssize_t`` length. A value outside them must be refused where it is read, with the key or option named, not
crash a thread hours later. This module holds what both config models and the CLI use:

* ``StrictSection``: the base of every config section (``extra="forbid"``, frozen, no inf/NaN), whose guard
  refuses a boolean where a number belongs (``port: true``: pydantic's lax mode reads it as 1), a number or a word
  where a boolean belongs (``loop: 1``, ``loop: "no"``) and a NUL character in any text (the OS refuses it in a
  path, MQTT in a string);
* ``MAX_WAIT_S``: the longest wait any timeout, backoff or interval may ask of ``threading``/``time``;
* ``thread_count_problem``: the one thread-count check of every command and of the daemon (1 … the CPUs this
  process may run on).
"""

from __future__ import annotations

import os
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

#: Longest timeout, backoff or interval (seconds) a config may give: one day. ``threading`` waits raise
#: OverflowError above ``threading.TIMEOUT_MAX`` (≈ 292 years on Linux) and OpenCV's timeouts are C ints of
#: milliseconds (≤ 24.8 days); a day is beyond any sensible timeout and inside both.
MAX_WAIT_S = 86_400.0


def _leaf_types(annotation: Any) -> set[Any]:
    """The plain types an annotation accepts (``int | None`` → {int, NoneType}; ``Literal[1, 2]`` → {int})."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {type(v) for v in typing.get_args(annotation)}
    if origin in (typing.Union, types.UnionType):
        out: set[Any] = set()
        for arg in typing.get_args(annotation):
            out |= _leaf_types(arg)
        return out
    if typing.get_origin(annotation) is typing.Annotated:
        return _leaf_types(typing.get_args(annotation)[0])
    return {annotation}


def scalar_problem(annotation: Any, value: Any) -> str | None:
    """Why ``value`` does not fit a field typed ``annotation`` in ways pydantic's lax mode would let through, else
    None: a boolean for a number, anything but true/false for a boolean, a NUL character in text (also inside a
    list of strings)."""
    kinds = _leaf_types(annotation)
    numeric = bool(kinds & {int, float}) and bool not in kinds
    if isinstance(value, bool) and numeric:
        return "a number is needed here, not true/false"
    if bool in kinds and value is not None and not isinstance(value, bool):
        return "true or false is needed here"
    texts = value if isinstance(value, list) else [value]
    if any(isinstance(t, str) and "\x00" in t for t in texts):
        return "text must not contain a NUL character"
    return None


class StrictSection(BaseModel):
    """Base of every config section: unknown keys are errors, values are frozen, inf/NaN are refused (.inf as a
    timeout overflows threading's waits, NaN compares false everywhere), and ``scalar_problem`` is checked before
    pydantic converts anything."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and (problem := scalar_problem(field.annotation, value)):
            raise ValueError(problem)
        return value


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


#: Largest thread count a config file may name on any machine (the per-machine limit is ``usable_cpus``).
MAX_THREADS = 256


def thread_count_problem(value: object) -> str | None:
    """Why ``value`` is not a usable ONNX Runtime intra-op thread count here, else None: it must be a whole number
    from 1 to ``usable_cpus()``. The intra-op threads spin while they wait for work, so more threads than CPUs only
    slows inference down (measured on 2 CPUs: one image took 4 s with 1 thread, 21 s with 256, and
    ``--threads 100000`` ran for minutes before this bound)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{value!r} is not a whole number"
    if value < 1:
        return f"{value} must be at least 1"
    cpus = usable_cpus()
    if value > cpus:
        return (f"{value} is more than the {cpus} CPU(s) this process may use; more threads than CPUs only slow "
                f"ONNX Runtime down: give 1 to {cpus}")
    return None


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot name a broker, else None: an IP address, or a DNS name whose labels IDNA can encode
    (RFC 1035: at most 63 characters each, none empty). paho resolves the name on its network thread, where an
    unencodable one raised ``UnicodeError`` and killed that thread."""
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    try:
        host.encode("idna")
    except UnicodeError as exc:
        return f"{host!r} is not a host name or IP address ({exc}; each dot-separated label holds 1-63 characters)"
    return None
