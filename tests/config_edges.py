"""Config values at the edges of a pydantic schema, for the property tests of the daemon's and the door agent's
config (tests/test_config_edges.py).

``mutation_points(Model)`` lists every setting (leaf field, nested sections and the first item of lists of
sections included) and every section, each with the values worth trying there: its bounds, just outside them,
wrong types, booleans for numbers and numbers for booleans, huge/negative/NaN/inf, odd text (empty, NUL, too long,
a device path). ``apply(base, path, value)`` writes one into a plain config dict; ``names_key`` says whether a
config issue names the key that was changed.
"""

from __future__ import annotations

import copy
import math
import re
import types
import typing
from datetime import time as dtime
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

Path_ = tuple[Any, ...]

#: Values every setting gets: wrong types, both booleans, nothing.
COMMON: list[Any] = [None, True, False, "", "text", [], {}, "a\x00b", 7, -1, 0.5]
NUMBERS: list[Any] = [0, 1, -1, 2**31, 2**63, 10**30, 1e12, -1e12, 1e308, -1e-300, math.nan, math.inf, -math.inf,
                      "1e12", "12", "0x10", 3.5]
TEXTS: list[Any] = ["x", " ", "/dev/zero", "../../etc/passwd", "é" * 300, "x" * 5000, "rtsp://", "a/b/c",
                    "#", "+/x", 12]


def _kinds(annotation: Any) -> set[Any]:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {("literal", v) for v in typing.get_args(annotation)}
    if origin in (typing.Union, types.UnionType):
        out: set[Any] = set()
        for arg in typing.get_args(annotation):
            out |= _kinds(arg)
        return out
    if origin is list:
        return {("list", typing.get_args(annotation)[0])}
    return {annotation}


def _section(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the BaseModel an annotation holds, whether as a list) or (None, False)."""
    for kind in _kinds(annotation):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind, False
        if isinstance(kind, tuple) and kind[0] == "list" and isinstance(kind[1], type) and issubclass(
                kind[1], BaseModel):
            return kind[1], True
    return None, False


def _bounds(info: FieldInfo) -> list[float]:
    out = []
    for m in info.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            value = getattr(m, attr, None)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out.append(value)
    return out


def _lengths(info: FieldInfo) -> list[int]:
    return [v for m in info.metadata for v in (getattr(m, "min_length", None), getattr(m, "max_length", None))
            if isinstance(v, int)]


def edges(info: FieldInfo) -> list[Any]:
    """The values worth trying for one setting (see the module docstring)."""
    kinds = _kinds(info.annotation)
    out = list(COMMON)
    if kinds & {int, float} or any(isinstance(k, tuple) and k[0] == "literal" for k in kinds):
        out += NUMBERS
        for b in _bounds(info):
            is_int = int in kinds and float not in kinds
            step = 1 if is_int else max(abs(b) * 1e-9, 1e-12)
            out += [b, b - step, b + step]
            if is_int:
                out += [int(b), int(b) - 1, int(b) + 1]
    if bool in kinds:
        out += [0, 1, "yes", "true", "on", 2]
    if str in kinds:
        out += TEXTS
        for n in _lengths(info):
            out += ["x" * n, "x" * (n + 1), "x" * max(n - 1, 0)]
    for kind in kinds:
        if isinstance(kind, tuple) and kind[0] == "literal":
            out.append(kind[1])
        if isinstance(kind, tuple) and kind[0] == "list":
            out += [["x"], ["a\x00b"], [1], [None], ["x"] * 100, "x", [[]]]
            for n in _lengths(info):
                out += [["x"] * n, ["x"] * (n + 1)]
    if dtime in kinds:
        out += ["07:00", "24:00", "23:59:59", "25:00", "7:00:00.5", 420, "00:00"]
    seen: list[Any] = []
    for v in out:  # keep order, drop duplicates (1 == True etc. are kept apart by type)
        if not any(type(v) is type(s) and (v == s or (isinstance(v, float) and math.isnan(v) and math.isnan(s)))
                   for s in seen):
            seen.append(v)
    return seen


def inside_edges(info: FieldInfo) -> list[Any]:
    """The values of ``edges`` that the field's own constraints allow: each bound itself (and, for ``gt``/``lt``,
    the nearest value inside), both booleans, the literals, text at the longest allowed length. Most configs with
    one of these pass the check, so the property draws from them too, to run the daemon with them."""
    kinds = _kinds(info.annotation)
    out: list[Any] = []
    is_int = int in kinds and float not in kinds
    for m in info.metadata:
        for attr, inward in (("ge", 0), ("le", 0), ("gt", 1), ("lt", -1)):
            value = getattr(m, attr, None)
            if isinstance(value, int | float) and not isinstance(value, bool):
                step = 1 if is_int else max(abs(value) * 1e-9, 1e-12)
                out.append(value + inward * step)
    if bool in kinds:
        out += [True, False]
    out += [k[1] for k in kinds if isinstance(k, tuple) and k[0] == "literal"]
    if str in kinds:
        out += ["x" * n for m in info.metadata if isinstance(n := getattr(m, "max_length", None), int)]
    return out


def inside_points(model: type[BaseModel], prefix: Path_ = ()) -> list[tuple[Path_, Any]]:
    """(key path, value) for ``inside_edges`` of every setting under ``model``."""
    out: list[tuple[Path_, Any]] = []
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        inner, as_list = _section(info.annotation)
        if inner is None:
            out += [(path, v) for v in inside_edges(info)]
        else:
            out += inside_points(inner, (*path, 0) if as_list else path)
    return out


SECTION_EDGES: list[Any] = [None, 5, "x", True, [], {}, [5], ["x"]]


def mutation_points(model: type[BaseModel], prefix: Path_ = ()) -> list[tuple[Path_, list[Any]]]:
    """(key path, values) for every setting and section under ``model``; a list of sections is entered at
    index 0."""
    out: list[tuple[Path_, list[Any]]] = []
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        inner, as_list = _section(info.annotation)
        if inner is None:
            out.append((path, edges(info)))
            continue
        out.append((path, SECTION_EDGES))
        out += mutation_points(inner, (*path, 0) if as_list else path)
    return out


def apply(base: dict[str, Any], path: Path_, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with ``path`` set to ``value`` (missing sections are created as ``{}``; a list
    item that does not exist yet as a one-item list)."""
    out = copy.deepcopy(base)
    node: Any = out
    for part, nxt in zip(path[:-1], path[1:], strict=True):
        if isinstance(part, int):
            while len(node) <= part:
                node.append({})
            node = node[part]
            continue
        if not isinstance(node.get(part), dict | list):
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    last = path[-1]
    if isinstance(last, int):
        while len(node) <= last:
            node.append({})
    node[last] = value
    return out


def dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _norm(key: str) -> str:
    return re.sub(r"\[(\d+)\]", r".\1", key)


def names_key(issue_path: str, message: str, path: Path_) -> bool:
    """Whether an issue at ``issue_path`` (``cameras[0].url`` or ``cameras.0.url``) with ``message`` names the
    changed key ``path``: the same key, a key inside it (a section replaced by a wrong value), or one of its
    sections with the setting's name (or that of the section holding it) in the message (a rule spanning fields,
    reported at the section)."""
    key, where = _norm(dotted(path)), _norm(issue_path)
    if not where or where == "<top>":
        return False
    if where == key or where.startswith(key + "."):
        return True
    if not key.startswith(where + "."):
        return False
    below = [part for part in key[len(where) + 1:].split(".") if not part.isdigit()]
    return any(re.search(rf"\b{re.escape(part)}\b", message) for part in below)


def created_sections(base: dict[str, Any], path: Path_) -> list[str]:
    """The sections along ``path`` that ``apply`` had to create (absent from ``base``), as key paths: a required
    sibling they lack ("Field required") is a consequence of creating them, not of the value tried."""
    out, node = [], base
    for i, part in enumerate(path[:-1]):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            out.append(_norm(dotted(path[: i + 1])))
            node = None
    return out


def excused(issue_path: str, message: str, base: dict[str, Any], path: Path_) -> bool:
    """A "Field required" issue inside a section that ``apply`` created for ``path``."""
    where = _norm(issue_path)
    return "Field required" in message and any(where == c or where.startswith(c + ".")
                                               for c in created_sections(base, path))
