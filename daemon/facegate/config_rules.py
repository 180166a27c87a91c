"""The config's cross-field rules, one function each: a problem message, or None. ``config.py``'s validators call
them on validated values, ``config_file.py`` on raw ones (so a section with a field error still gets its other
rules checked) and ``config_checks.py`` against the machine (``tz_problem``). Kept here so that each rule has one
home whichever of those asks."""

from __future__ import annotations

from collections.abc import Mapping


def threshold_or_rate_problem(threshold: float | None, false_accept_rate: float | None) -> str | None:
    """``decision.threshold`` and ``decision.false_accept_rate`` both set (they are two ways to choose one threshold:
    ``facegate/scoring.py`` ``Scorer.resolve``)."""
    if threshold is not None and false_accept_rate is not None:
        return ("set either threshold (a fixed comparison score) or false_accept_rate (a goal the threshold is "
                "derived from), not both")
    return None


def k_le_n_problem(k: int, n: int) -> str | None:
    """The voting rule's one check: k of the last n frames needs k ≤ n."""
    return f"k ({k}) must be ≤ n ({n})" if k > n else None


def lookalike_margin_problem(margin: float | None, lookalike_margin: float | None) -> str | None:
    """Lookalikes need at least the margin every identity needs: lookalike_margin ≥ margin (when both are set)."""
    if margin is not None and lookalike_margin is not None and lookalike_margin < margin:
        return (f"lookalike_margin ({lookalike_margin}) must be ≥ margin ({margin}): identities closer to each other "
                "than the threshold need at least the margin every identity needs")
    return None


def duplicate_ids_problem(what: str, ids: list[str]) -> str | None:
    """Camera and door ids name topics, events and log lines: each must be unique."""
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    return f"duplicate id(s) {', '.join(dupes)}" if dupes else None


def tz_problem(name: str) -> str | None:
    """Why ``name`` is not a time zone of this machine's tz database (reads it: an environment check), else None."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return f"unknown time zone {name!r} (not in the tz database)"
    return None


def passage_keys_problem(kids: Mapping[str, str], event_kid: str | None) -> str | None:
    """Why these doors' passage keys (door id → kid) cannot be trusted, else None: one is the daemon's event signing
    key (a grant event it signed would verify as that door's passage), or two doors share one key."""
    for door, kid in kids.items():
        if kid == event_kid:
            return (f"doors.{door}.passage_public_key: this is the daemon's own event signing key (kid {kid}); the "
                    f"door agent needs a key pair of its own (facegate keys generate --name door-{door})")
    shared = sorted({kid for kid in kids.values() if list(kids.values()).count(kid) > 1})
    if shared:
        doors = sorted(d for d, k in kids.items() if k in shared)
        return (f"doors {', '.join(doors)}: share one passage_public_key; each door agent needs a key pair of its own, "
                "or one agent could confirm passages at the other door")
    return None
