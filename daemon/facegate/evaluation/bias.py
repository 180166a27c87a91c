"""Bias view: the LFW and open-set reports split by a user-supplied grouping of identities.

Groups file (``--groups CSV``): UTF-8 CSV, one identity per line, ``identity,group`` — ``identity`` is the LFW
folder name (e.g. ``Aaron_Peirsol``), ``group`` any label. A first line ``identity,group`` is taken as a header.
Identities not listed are counted as unassigned and left out of every group. facegate ships no such file: group
labels (demographic or otherwise) must come from the user's own, documented source.

Per group, following NIST FRVT Part 3 (Demographic Effects, NISTIR 8280, 2019), impostor comparisons are
**within-group** (both identities in the group) — the comparisons whose false matches differ most by group; pairs
across groups are reported once, together. FMR and FNMR are given at the overall chosen threshold and at the
pack's threshold; a group with few comparisons has coarse rates (the counts are in the report to judge by).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from facegate import scoring
from facegate.errors import UsageError
from facegate.evaluation import metrics as m
from facegate.fileio import read_limited

#: Largest groups file read (bytes): one line per identity: LFW's 5,749 identities take 150 KB.
MAX_GROUPS_BYTES = 16 << 20


def load_groups(path: str | Path) -> dict[str, str]:
    """Read a groups CSV (see module docstring) → {identity: group}.

    Raises ``UsageError`` naming the file and line for a missing file, a line without exactly two non-empty fields,
    or an identity listed twice with different groups.
    """
    path = Path(path)
    try:
        text = read_limited(path, MAX_GROUPS_BYTES, "a groups file").decode("utf-8")  # bounded; never a device or FIFO
    except FileNotFoundError:
        raise UsageError(f"{path}: no such groups file; give a CSV of identity,group lines with --groups") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the groups file ({exc})") from None
    groups: dict[str, str] = {}
    for line_no, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not c.strip() for c in row):
            continue
        fields = [c.strip() for c in row]
        if line_no == 1 and [f.lower() for f in fields] == ["identity", "group"]:
            continue
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise UsageError(f"{path}:{line_no}: expected 'identity,group', got {','.join(row)!r}")
        identity, group = fields
        if groups.get(identity, group) != group:
            raise UsageError(f"{path}:{line_no}: {identity} is already in group {groups[identity]!r}")
        groups[identity] = group
    if not groups:
        raise UsageError(f"{path}: no identity,group lines")
    return groups


def _rates(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> dict:
    fmr = float(np.mean(impostor >= threshold)) if impostor.size else None
    fnmr = float(np.mean(genuine < threshold)) if genuine.size else None
    return {"fmr": fmr, "fnmr": fnmr}


def lfw_by_group(
    pairs: list, scores: np.ndarray, groups: dict[str, str], metric: str, chosen_native: float,
    pack_native: float | None,
) -> dict:
    """Per-group verification rates for LFW pairs (``lfw.Pair`` list, scores higher = more similar).

    Returns {"groups": {group: {genuine, impostor, at_chosen_threshold, at_pack_threshold}}, "cross_group":
    {...}, "unassigned_pairs": n}; thresholds are native units (``scoring.from_higher_better``).
    """
    g1 = np.array([groups.get(p.name1) for p in pairs], dtype=object)
    g2 = np.array([groups.get(p.name2) for p in pairs], dtype=object)
    same = np.array([p.same for p in pairs])
    assigned = (g1 != None) & (g2 != None)  # noqa: E711 (element-wise on an object array)
    thresholds = {"at_chosen_threshold": chosen_native}
    if pack_native is not None:
        thresholds["at_pack_threshold"] = pack_native
    out: dict = {"groups": {}, "unassigned_pairs": int(np.sum(~assigned))}
    for group in sorted(set(groups.values())):
        mask = assigned & (g1 == group) & (g2 == group)
        gen, imp = scores[mask & same], scores[mask & ~same]
        entry: dict = {"genuine": int(gen.size), "impostor": int(imp.size)}
        for key, t in thresholds.items():
            entry[key] = {"threshold": t, **_rates(gen, imp, scoring.to_higher_better(t, metric))}
        out["groups"][group] = entry
    cross = assigned & (g1 != g2) & ~same
    entry = {"impostor": int(np.sum(cross))}
    for key, t in thresholds.items():
        fmr = _rates(np.zeros(0), scores[cross], scoring.to_higher_better(t, metric))["fmr"]
        entry[key] = {"threshold": t, "fmr": fmr}
    out["cross_group"] = entry
    return out


def openset_by_group(
    split: dict, searches: m.Searches, groups: dict[str, str], metric: str, pack_native: float | None,
    fpir_native: float,
) -> dict:
    """Per-group open-set rates: rank-1 and FNIR of the group's mated searches, FPIR of its non-mated searches.

    ``split`` is ``openset.split_protocol``'s result (the order of ``searches``); thresholds in native units:
    the overall FPIR-0.3 % threshold and the pack's.
    """
    mated_groups = np.array([groups.get(name) for _, name, _ in split["mated"]], dtype=object)
    nonmated_groups = np.array([groups.get(name) for name, _ in split["nonmated"]], dtype=object)
    thresholds = {"at_fpir_0.003_threshold": fpir_native}
    if pack_native is not None:
        thresholds["at_pack_threshold"] = pack_native
    out: dict = {"groups": {}, "unassigned_searches": int(np.sum(mated_groups == None)  # noqa: E711
                                                           + np.sum(nonmated_groups == None))}  # noqa: E711
    for group in sorted(set(groups.values())):
        mm, nm = mated_groups == group, nonmated_groups == group
        entry: dict = {"mated": int(mm.sum()), "nonmated": int(nm.sum()),
                       "rank1": float(np.mean(searches.mate_is_top[mm])) if mm.any() else None}
        for key, t_native in thresholds.items():
            t = scoring.to_higher_better(t_native, metric)
            hit = searches.mate_is_top[mm] & (searches.mate_scores[mm] >= t)
            entry[key] = {
                "threshold": t_native,
                "fnir": float(1 - np.mean(hit)) if mm.any() else None,
                "fpir": float(np.mean(searches.nonmated_top[nm] >= t)) if nm.any() else None,
            }
        out["groups"][group] = entry
    return out
