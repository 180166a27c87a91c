"""A pack's calibration: its impostor score distribution (false match rate as a function of the threshold) measured
from all-pairs comparisons on every face data set available, and the genuine distribution beside it.

The file (``models/<pack>.calibration.json``, named with its sha256 by the manifest's ``calibration:`` block) is
written by ``facegate eval calibrate`` and read here. For each data set it holds:

* ``impostor_pairs``/``genuine_pairs``: how many cross-identity and same-identity comparisons were made;
* ``points``: thresholds t (the pack's native score units) with ``impostors``, the number of impostor comparisons a
  threshold of t accepts, taken at impostor order statistics spaced 20 per decade of rank from the single highest
  impostor score (rank 1) down to a false match rate of ``max_fmr``; so FMR(t) = impostors / impostor_pairs exactly
  at each point;
* ``genuine_quantiles``: the genuine scores at 401 evenly spaced ranks (FNMR at any threshold by interpolation).

Reading the curve is conservative: between two points, FMR(t) is bounded by the looser point's count (the count can
only fall as the threshold tightens); above a data set's highest impostor score it measured none. Data sets are
combined by **taking the stricter**: FMR(t) = the largest of the data sets' estimates at t, so a data set on which
strangers score higher (photos unlike LFW's press photos) raises the threshold. The curve is trusted down to
``floor`` = ``MIN_IMPOSTORS`` / the largest impostor count: a rate below it was not measured (a threshold above the
few highest impostors says nothing about how rare such impostors are), so a goal that needs a smaller per-comparison
rate is refused and a stricter fixed threshold is reported as "≤ floor".

Thresholds in this module are native units: a Euclidean distance (accept when ≤ t) or a similarity / fused LLR
(accept when ≥ t); internally they are turned into "higher = more alike" as ``facegate.scoring`` does.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facegate.errors import ConfigError
from facegate.fileio import read_limited

FORMAT = "facegate-calibration"
VERSION = 1
#: The curve is trusted down to this many impostor comparisons at or above the threshold (the "rule of three": with
#: no impostor above t in I comparisons the 95 % upper bound of the FMR is ≈ 3/I; Hanley & Lippman-Hand, JAMA 249,
#: 1983). Below it a single stray impostor decides the threshold.
MIN_IMPOSTORS = 3
#: Points per decade of impostor rank on a data set's curve.
POINTS_PER_DECADE = 20
#: Genuine scores kept per data set (evenly spaced ranks, both ends included).
GENUINE_QUANTILES = 401
#: The shipped calibrations are under 200 KiB; a file larger than this is not one.
MAX_CALIBRATION_BYTES = 16 * 2**20
_SIGNS = {"euclidean": -1.0, "cosine": 1.0, "fused": 1.0}


def _sign(metric: str) -> float:
    if metric not in _SIGNS:
        raise ConfigError(f"calibration: metric {metric!r} is not one of {', '.join(_SIGNS)}")
    return _SIGNS[metric]


@dataclass(frozen=True)
class DatasetCurve:
    """One data set's measurement (see the module docstring). ``thresholds`` native units, ordered strictest first;
    ``impostors`` the impostor comparisons each accepts (non-decreasing); ``genuine`` sorted genuine scores at
    evenly spaced ranks (native units); ``info``: where the data came from (images, identities, root…)."""

    name: str
    impostor_pairs: int
    genuine_pairs: int
    thresholds: np.ndarray
    impostors: np.ndarray
    genuine: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def fmr_bound(self, hb: float, sign: float) -> float:
        """Upper bound of this data set's FMR at the "higher = more alike" threshold ``hb``: 0 above its highest
        impostor, 1.0 when looser than its last point (not measured there)."""
        t = sign * self.thresholds  # descending
        if hb > t[0]:
            return 0.0
        j = int(np.searchsorted(-t, -hb, side="left"))  # first point with t[j] <= hb
        if j >= len(t):
            return 1.0
        return float(self.impostors[j]) / self.impostor_pairs

    def fnmr(self, hb: float, sign: float) -> float:
        """FNMR at ``hb`` from the genuine quantiles (linear between them; 0 below the lowest, 1 above the
        highest)."""
        g = np.sort(sign * self.genuine)
        ranks = np.linspace(0.0, 1.0, len(g))
        if hb <= g[0]:
            return 0.0
        if hb > g[-1]:
            return 1.0
        return float(np.interp(hb, g, ranks))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, **self.info, "impostor_pairs": self.impostor_pairs,
            "genuine_pairs": self.genuine_pairs,
            "points": [{"threshold": round(float(t), 7), "impostors": int(c)}
                       for t, c in zip(self.thresholds, self.impostors, strict=True)],
            "genuine_quantiles": [round(float(g), 7) for g in self.genuine],
        }


@dataclass(frozen=True)
class FmrEstimate:
    """The combined false match rate at a threshold: ``fmr`` (conservative), the data set that gave it (the
    stricter one), and ``at_floor`` when the measurement stops there (the true rate is ``≤ fmr``)."""

    fmr: float
    dataset: str | None
    at_floor: bool


@dataclass(frozen=True)
class Calibration:
    """A pack's calibration (see the module docstring); ``load`` reads and checks a file."""

    pack: str
    metric: str
    score_digest: str
    datasets: tuple[DatasetCurve, ...]
    created: str = ""
    code: str = ""
    sha256: str = ""

    @property
    def sign(self) -> float:
        return _sign(self.metric)

    @property
    def floor(self) -> float:
        """The smallest per-comparison FMR the calibration vouches for: ``MIN_IMPOSTORS`` / the largest impostor
        count."""
        return MIN_IMPOSTORS / max(d.impostor_pairs for d in self.datasets)

    def fmr_at(self, threshold: float) -> FmrEstimate:
        """The combined (stricter) FMR at a native ``threshold``; ``floor`` with ``at_floor`` when below it."""
        hb = self.sign * float(threshold)
        values = [(d.fmr_bound(hb, self.sign), d.impostor_pairs, d.name) for d in self.datasets]
        worst, _, name = max(values)  # ties (e.g. all 0): the data set with the most comparisons
        if worst < self.floor:
            return FmrEstimate(self.floor, name, True)
        return FmrEstimate(worst, name, False)

    def threshold_for(self, fmr: float) -> float | None:
        """The loosest native threshold whose combined FMR is ≤ ``fmr``; None when ``fmr`` < ``floor`` (not
        measured that far). Candidates are every data set's points and the point just above each data set's
        highest impostor."""
        if not fmr >= self.floor:  # also refuses NaN
            return None
        cands = set()
        for d in self.datasets:
            hb = self.sign * d.thresholds
            cands.update(float(x) for x in hb)
            cands.add(float(np.nextafter(hb[0], np.inf)))
        ok = [h for h in sorted(cands) if max(d.fmr_bound(h, self.sign) for d in self.datasets) <= fmr]
        return None if not ok else self.sign * ok[0]

    def fnmr_at(self, threshold: float) -> dict[str, float]:
        """Each data set's FNMR at a native ``threshold`` (from its genuine quantiles), by data set name."""
        hb = self.sign * float(threshold)
        return {d.name: round(d.fnmr(hb, self.sign), 5) for d in self.datasets}

    def describe(self) -> dict[str, Any]:
        """For logs and ``facegate gallery list``: the file's sha256, date, code and each data set's counts."""
        return {
            "sha256": self.sha256, "created": self.created, "code": self.code, "floor": self.floor,
            "datasets": [{"name": d.name, "impostor_pairs": d.impostor_pairs, "genuine_pairs": d.genuine_pairs}
                         for d in self.datasets],
        }

    # ---------------------------------------------------------------------------------------------- file
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "pack": self.pack, "metric": self.metric,
            "accept": "score <= threshold" if self.sign < 0 else "score >= threshold",
            "score_digest": self.score_digest, "created": self.created, "code": self.code,
            "rule": "combined FMR(t) = max over data sets; trusted down to floor = "
                    f"{MIN_IMPOSTORS} / the largest impostor count",
            "datasets": [d.to_json() for d in self.datasets],
        }

    def dumps(self) -> bytes:
        """The file's bytes (UTF-8 JSON, keys in a fixed order, newline at the end)."""
        return (json.dumps(self.to_json(), indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: Any, where: str, sha256: str = "") -> Calibration:
        """Parse a calibration document; raises ``ConfigError`` naming ``where`` and the bad field."""
        try:
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, this facegate reads {VERSION}")
            metric = str(data["metric"])
            datasets = tuple(_dataset(d, _sign(metric)) for d in data["datasets"])
            if not datasets:
                raise ValueError("no data sets")
            return cls(str(data["pack"]), metric, str(data["score_digest"]), datasets, str(data.get("created", "")),
                       str(data.get("code", "")), sha256)
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ConfigError(f"{where}: invalid calibration file ({exc}); regenerate it with `facegate eval "
                              "calibrate`") from None

    @classmethod
    def load(cls, path: str | Path, sha256: str | None = None, score_digest: str | None = None,
             pack: str | None = None) -> Calibration:
        """Read and check a calibration file: its sha256 must be ``sha256`` (the manifest's), its scores those of
        ``score_digest`` (``packs.manifest.score_digest``) and its pack ``pack``, when given. Raises
        ``ConfigError`` naming the file and what to do."""
        path = Path(path)
        try:  # a regular file of bounded size only: never a device or a FIFO (fileio.read_limited)
            raw = read_limited(path, MAX_CALIBRATION_BYTES, "a calibration file")
        except OSError as exc:  # InputRefused included
            raise ConfigError(f"{path}: cannot read the pack's calibration file ({exc.strerror or exc}); reinstall "
                              "facegate or fix the manifest's calibration.file") from None
        got = hashlib.sha256(raw).hexdigest()
        if sha256 is not None and got != sha256:
            raise ConfigError(f"{path}: sha256 {got} differs from the manifest's calibration.sha256 {sha256}; the "
                              "file is damaged or was regenerated without updating the manifest")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: invalid calibration file (not JSON: {exc})") from None
        cal = cls.from_json(data, str(path), got)
        if pack is not None and cal.pack != pack:
            raise ConfigError(f"{path}: calibration of pack {cal.pack!r}, not {pack!r}; fix the manifest's "
                              "calibration.file")
        if score_digest is not None and cal.score_digest != score_digest:
            raise ConfigError(f"{path}: this calibration was measured for other scores than pack {cal.pack!r} now "
                              "makes (its detector, landmarks, recogniser or fusion changed); re-run `facegate eval "
                              f"calibrate --pack {cal.pack}` and update the manifest")
        return cal


def _dataset(d: dict[str, Any], sign: float) -> DatasetCurve:
    """One data set of a calibration document, checked: a curve out of order or pair counts the data set cannot
    have would give a threshold that accepts far more than the rate it claims (found by a tampered file), so both
    are refused. Raises ``ValueError``/``KeyError``/``TypeError`` naming the data set."""
    points = d["points"]
    thresholds = np.array([float(p["threshold"]) for p in points], np.float64)
    impostors = np.array([int(p["impostors"]) for p in points], np.int64)
    genuine = np.array([float(g) for g in d["genuine_quantiles"]], np.float64)
    pairs, gen_pairs = int(d["impostor_pairs"]), int(d["genuine_pairs"])
    if not len(points) or pairs < 1 or not np.all(np.isfinite(thresholds)) or not np.all(np.isfinite(genuine)):
        raise ValueError(f"data set {d.get('name')!r}: empty or non-finite points")
    if np.any(np.diff(impostors) < 0) or impostors[0] < 1 or impostors[-1] > pairs:
        raise ValueError(f"data set {d.get('name')!r}: impostor counts must rise from ≥ 1 to ≤ impostor_pairs")
    if np.any(np.diff(sign * thresholds) >= 0):
        raise ValueError(f"data set {d.get('name')!r}: thresholds must run from the strictest to the loosest, each "
                         "point looser than the one before")
    if gen_pairs < 0 or pairs + gen_pairs > _max_pairs(d):
        raise ValueError(f"data set {d.get('name')!r}: {pairs} impostor + {gen_pairs} genuine pairs are more than "
                         f"its faces allow ({_max_pairs(d)})")
    info = {k: v for k, v in d.items() if k not in ("name", "points", "genuine_quantiles", "impostor_pairs",
                                                     "genuine_pairs")}
    return DatasetCurve(str(d["name"]), pairs, gen_pairs, thresholds, impostors, genuine, info)


#: Pair counts above this are not a measurement (a million faces give 5e11 pairs).
MAX_PAIRS = 10**12


def _max_pairs(d: dict[str, Any]) -> int:
    """The most comparisons a data set can hold: every unordered pair of its ``images`` (or ``faces``) when it says
    how many, else ``MAX_PAIRS``."""
    n = d.get("images", d.get("faces"))
    if type(n) is int and 0 <= n <= 2 * 10**6:
        return min(MAX_PAIRS, n * (n - 1) // 2)
    return MAX_PAIRS


def dataset_curve(
    name: str, metric: str, genuine: np.ndarray, impostor_top: np.ndarray, impostor_pairs: int,
    max_fmr: float = 0.1, info: dict[str, Any] | None = None,
) -> DatasetCurve:
    """Build one data set's curve from its scores in **native** units: every genuine score (G floats) and the
    highest impostor scores ``impostor_top`` (any order; at least the ⌊max_fmr · impostor_pairs⌋ + 1 best of the
    ``impostor_pairs`` comparisons). Points sit at impostor ranks 1, then ``POINTS_PER_DECADE`` per decade up to
    ``max_fmr`` of the pairs; a rank whose tie group runs past the kept scores is dropped."""
    sign = _sign(metric)
    top = np.sort(sign * np.asarray(impostor_top, np.float64))[::-1]  # "higher = more alike", descending
    last = max(1, min(len(top), int(math.floor(max_fmr * impostor_pairs))))
    ranks = np.unique(np.round(np.logspace(0, math.log10(last), 1 + int(POINTS_PER_DECADE * math.log10(last) + 1e-9)
                                           if last > 1 else 1)).astype(np.int64))
    thresholds, counts = [], []
    for r in ranks:
        t = top[r - 1]
        count = int(np.searchsorted(-top, -t, side="right"))  # impostors scoring >= t among the kept ones
        if count >= len(top) and len(top) < impostor_pairs:
            continue  # the tie group may continue below what was kept
        if counts and count == counts[-1]:
            continue
        thresholds.append(sign * t)
        counts.append(count)
    gen = np.sort(np.asarray(genuine, np.float64))
    picks = np.round(np.linspace(0, len(gen) - 1, min(GENUINE_QUANTILES, len(gen)))).astype(np.int64)
    return DatasetCurve(name, int(impostor_pairs), int(len(gen)), np.asarray(thresholds), np.asarray(counts),
                        gen[picks], dict(info or {}))


def combine(pack: str, metric: str, score_digest: str, datasets: Sequence[DatasetCurve], created: str,
            code: str) -> Calibration:
    """A calibration of the given data sets (combined by the stricter rule of the module docstring)."""
    return Calibration(pack, metric, score_digest, tuple(datasets), created, code)
