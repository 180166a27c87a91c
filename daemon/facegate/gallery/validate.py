"""Checks on identity names and access groups, shared by the CLI, enrolment and import.

A name or group is shown on terminals, in logs and in MQTT events, so it must not carry characters that move the
cursor, break lines or reorder text: Unicode categories Cc (C0/C1 controls: ``\\n``, ``\\t``, ESC …), Cs (lone
surrogates, which Python makes from undecodable command-line bytes and SQLite cannot store), Zl/Zp (line and
paragraph separators) and the bidirectional embeddings/overrides/isolates U+202A–U+202E, U+2066–U+2069 (the
"Trojan Source" characters, CVE-2021-42574). Other format characters (Cf) such as the zero-width non-joiner stay
allowed: scripts such as Persian need them in ordinary names.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_CHARS = 200
MAX_GROUP_CHARS = 64
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def _bad_chars(text: str) -> list[str]:
    return [c for c in text if c in _BIDI or unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")]


def name_problem(name: object) -> str | None:
    """Why ``name`` (before stripping) is not a valid identity name, or None. Messages show names with ``repr``
    so that nothing raw reaches the terminal."""
    if not isinstance(name, str):
        return f"identity name {name!r} is not a string"
    stripped = name.strip()
    if not stripped:
        return f"identity name {name!r} is empty"
    if len(stripped) > MAX_NAME_CHARS:
        return f"identity name {stripped[:40]!r}… has {len(stripped)} characters (at most {MAX_NAME_CHARS})"
    bad = _bad_chars(stripped)
    if bad:
        return (f"identity name {stripped!r} contains control or text-direction characters "
                f"{''.join(sorted(set(bad)))!r}; use printable characters only")
    return None


def group_problem(group: object) -> str | None:
    """Why ``group`` is not a valid access-group name (non-empty, ≤ 64 characters, no control characters)."""
    if not isinstance(group, str):
        return f"group {group!r} is not a string"
    if not group.strip():
        return f"group {group!r} is empty"
    if len(group) > MAX_GROUP_CHARS:
        return f"group {group[:40]!r}… has {len(group)} characters (at most {MAX_GROUP_CHARS})"
    bad = _bad_chars(group)
    if bad:
        return (f"group {group!r} contains control or text-direction characters {''.join(sorted(set(bad)))!r}; "
                "use printable characters only")
    return None


def groups_problem(groups: object) -> str | None:
    """``group_problem`` of the first bad entry of a list of groups, or why it is not a list."""
    if not isinstance(groups, list | tuple):
        return f"groups {groups!r} is not a list"
    for group in groups:
        problem = group_problem(group)
        if problem:
            return problem
    return None
