"""``facegate eval calibrate``: measure a pack's impostor (and genuine) score distribution on every face data set
available and write its calibration file (``facegate/calibration.py`` describes the format and how it is read).

Data sets:

* ``lfw-view2-images``: the 7,701 distinct images that LFW View 2's ``pairs.txt`` names, every unordered pair
  compared (≈ 29.6 M impostor comparisons); one face per image as ``evaluation/embeddings_cache.py`` chooses it
  (centre-nearest, a fixed central box when nothing is detected — counted in the file); identities as LFW names
  them except the dozen people filed under two names (``evaluation/lfw_labels.py``, listed in the file);
* ``enroll-examples``: the labelled faces of ../shared/data/enroll_examples (``evaluation/enroll_set.py``), every
  pair compared except two faces cut from one photograph of one person.

The scores are the pack's own (``FacePipeline.scorer``: a distance, a cosine, or a fused pack's sum of LLRs), so a
calibration is tied to the pack's detector, landmarks, recogniser and fusion maps (``packs.manifest.score_digest``).
"""

from __future__ import annotations

import logging
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from facegate.calibration import Calibration, DatasetCurve, combine, dataset_curve
from facegate.evaluation import metrics as m
from facegate.evaluation.lfw import pair_files, parse_pairs, resolve_root
from facegate.evaluation.lfw_labels import IDENTITY_ALIASES, IMAGE_RELABELS, lfw_identity

log = logging.getLogger(__name__)

#: Points of each data set's curve go down to this FMR (loose thresholds, e.g. for a small weak data set).
MAX_FMR = 0.1


def lfw_curve(pipeline, root: str | Path, pairs_path: str | Path, cache=None, batch: int = 32,
              progress: bool = True) -> DatasetCurve:
    """All pairs of the LFW View 2 images (see module docstring) → the ``lfw-view2-images`` curve."""
    from facegate.evaluation.embeddings_cache import embed_files

    root = resolve_root(root)
    files, _ = pair_files(root, parse_pairs(pairs_path))
    labels = np.array([lfw_identity(f) for f in files])  # LFW's labels with its known errors corrected
    embedded = embed_files(pipeline, files, cache=cache, batch=batch, progress=progress)
    scorer = pipeline.scorer
    result = m.all_pairs(embedded.embeddings, labels, scorer, fars=(MAX_FMR,))
    native = scorer.from_higher_better
    info = {"images": len(files), "identities": int(len(set(labels))), "root": str(root),
            "no_face_detected": embedded.fallback_count, "protocol": "every unordered pair of the images LFW View 2 "
            "pairs.txt names; genuine = same identity, with evaluation/lfw_labels.py's corrections",
            "label_corrections": {"identity_aliases": IDENTITY_ALIASES, "image_relabels": IMAGE_RELABELS}}
    return dataset_curve("lfw-view2-images", scorer.metric, native(result.genuine), native(result.impostor_top),
                         result.impostor_count, MAX_FMR, info)


def enroll_curve(pipeline, root: str | Path) -> DatasetCurve:
    """All pairs of the labelled enroll_examples faces (two faces of one photo of one person excluded)."""
    from facegate.evaluation.enroll_set import load_enroll_examples

    faces = load_enroll_examples(pipeline, root)
    scorer = pipeline.scorer
    scores = scorer.compare(faces.embeddings, faces.embeddings, np.float64)
    n = len(faces.identities)
    upper = np.triu(np.ones((n, n), bool), 1)
    same = faces.identities[:, None] == faces.identities[None, :]
    same_photo = faces.same_photo(np.arange(n), np.arange(n))
    genuine = scores[upper & same & ~same_photo]
    impostor = scores[upper & ~same]
    info = {**faces.summary(), "root": str(root), "protocol": "every unordered pair of the labelled faces "
            "(evaluation/enroll_set.py); genuine pairs from one photograph left out"}
    return dataset_curve("enroll-examples", scorer.metric, genuine, impostor, int(impostor.size), MAX_FMR, info)


def calibrate(pipeline, lfw_root: str | Path | None, lfw_pairs: str | Path | None, enroll_root: str | Path | None,
              cache=None, batch: int = 32, progress: bool = True, command: str | None = None) -> Calibration:
    """Measure ``pipeline``'s pack on the data sets given (at least one) and return its ``Calibration``
    (``created`` now, UTC; ``code`` the command line). Raises ``UsageError`` for missing data."""
    from facegate.errors import UsageError
    from facegate.packs.manifest import score_digest

    curves = []
    if lfw_root is not None:
        if lfw_pairs is None:
            raise UsageError("--lfw-pairs: give LFW's pairs.txt with --lfw")
        curves.append(lfw_curve(pipeline, lfw_root, lfw_pairs, cache, batch, progress))
    if enroll_root is not None:
        curves.append(enroll_curve(pipeline, enroll_root))
    if not curves:
        raise UsageError("give at least one data set: --lfw DIR --lfw-pairs FILE and/or --enroll-examples DIR")
    code = command or "facegate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = pipeline.manifest
    cal = combine(manifest.name, pipeline.scorer.metric, score_digest(manifest), curves, created, code)
    for d in curves:
        log.info("event=calibration_dataset name=%s impostor_pairs=%d genuine_pairs=%d points=%d", d.name,
                 d.impostor_pairs, d.genuine_pairs, len(d.thresholds))
    return cal
