"""../shared/data/enroll_examples as a labelled face set for all-pairs and open-set evaluation across data sets.

The folder's README names who is in each photo; this module turns that into faces with an identity and a
**photo** (genuine pairs of two faces cut from the same photograph are left out: the letterboxed ``obama-*p.jpg``
ladder, the crops ``obama_partial_face*.jpg`` and ``two_people.jpg`` are the same pictures as ``obama.jpg``,
``obama3.jpg`` and ``biden.jpg``, and would make genuine pairs of near-identical images). Files with the same bytes
as another are used once.

* One-subject photos (``single/``, ``edge_cases/``, ``knn_examples/``): the largest detected face is the subject.
* Several people (``multi/two_people.jpg``, ``kit_with_rose.jpg``, ``obama_and_biden.jpg``, ``bald_guys.jpg``):
  each labelled face is the detection nearest to a point (px, full resolution) read off the photo: the README's
  left/right order for the first three; ``bald_guys.jpg`` is dlib's collage of Vin Diesel, Jason Statham, Bruce
  Willis and Dwayne Johnson, six tiles each (the README's visual grouping), each tile a photo of its own — bald
  men of similar age and build, the closest thing to lookalikes in the project's data.
* The PASCAL VOC group photos (``multi/20*.jpg``): every detected face is a different person (unnamed; no two
  faces of one person), useful as impostors from ordinary snapshots.
* Skipped: ``edge_cases/dogs.jpg`` and the scikit-image no-face images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facegate.errors import UsageError
from facegate.imaging import load_image

#: file → (identity, photo) of its one subject.
SUBJECTS: dict[str, tuple[str, str]] = {
    "single/alex-lacamoire.png": ("Alex_Lacamoire", "alex_still"),
    "single/lin-manuel-miranda.png": ("Lin-Manuel_Miranda", "lin_still"),
    "single/biden.jpg": ("Joe_Biden", "biden_official"),
    "single/obama.jpg": ("Barack_Obama", "obama_portrait"),
    "single/obama_small.jpg": ("Barack_Obama", "obama_portrait"),
    "single/obama-240p.jpg": ("Barack_Obama", "obama_portrait"),
    "single/obama-480p.jpg": ("Barack_Obama", "obama_portrait"),
    "single/obama-720p.jpg": ("Barack_Obama", "obama_portrait"),
    "single/obama-1080p.jpg": ("Barack_Obama", "obama_portrait"),
    "single/obama3.jpg": ("Barack_Obama", "obama_pink_tie"),
    "edge_cases/obama2.jpg": ("Barack_Obama", "obama_podium"),
    "edge_cases/32bit.png": ("Barack_Obama", "obama_podium"),
    "edge_cases/obama_partial_face.jpg": ("Barack_Obama", "obama_portrait"),
    "edge_cases/obama_partial_face2.jpg": ("Barack_Obama", "obama_portrait"),
    "edge_cases/Tom_Cruise_avp_2014_4.jpg": ("Tom_Cruise", "cruise_avp"),
    "knn_examples/test/alex_lacamoire1.jpg": ("Alex_Lacamoire", "alex_getty"),
    "knn_examples/test/johnsnow_test1.jpg": ("Kit_Harington", "kit_snow"),
    "knn_examples/test/obama1.jpg": ("Barack_Obama", "obama_briefing"),
    "knn_examples/train/alex_lacamoire/img1.jpg": ("Alex_Lacamoire", "alex_img1"),
    "knn_examples/train/biden/biden.jpg": ("Joe_Biden", "biden_official"),
    "knn_examples/train/biden/biden2.jpg": ("Joe_Biden", "biden_portrait"),
    "knn_examples/train/kit_harington/john1.jpeg": ("Kit_Harington", "kit_wide"),
    "knn_examples/train/kit_harington/john2.jpeg": ("Kit_Harington", "kit_hbo_still"),
    "knn_examples/train/obama/obama.jpg": ("Barack_Obama", "obama_portrait"),
    "knn_examples/train/obama/obama2.jpg": ("Barack_Obama", "obama_podium"),
    "knn_examples/train/rose_leslie/img1.jpg": ("Rose_Leslie", "rose_img1"),
    "knn_examples/train/rose_leslie/img2.jpg": ("Rose_Leslie", "rose_img2"),
}

_BALD = {"V": "Vin_Diesel", "S": "Jason_Statham", "B": "Bruce_Willis", "R": "Dwayne_Johnson"}
_BALD_TILES = [  # (x, y) px of each tile's face in the 1986×1545 collage, and who
    (646, 506, "V"), (147, 145, "V"), (150, 1372, "V"), (134, 459, "V"), (632, 178, "V"), (385, 288, "V"),
    (962, 482, "S"), (951, 173, "S"), (144, 766, "S"), (391, 97, "S"), (500, 912, "S"), (401, 511, "S"),
    (1148, 832, "B"), (856, 894, "B"), (852, 1312, "B"), (455, 1335, "B"), (120, 1048, "B"), (1185, 1139, "B"),
    (1161, 1384, "R"), (1599, 243, "R"), (1865, 1384, "R"), (1695, 748, "R"), (1880, 485, "R"), (1515, 1396, "R"),
]

#: file → faces as (x, y px, identity, photo).
GROUPS: dict[str, list[tuple[float, float, str, str]]] = {
    "multi/two_people.jpg": [(309, 126, "Barack_Obama", "obama_pink_tie"), (862, 153, "Joe_Biden", "biden_official")],
    "multi/kit_with_rose.jpg": [(117, 160, "Rose_Leslie", "kit_rose_hbo"), (303, 141, "Kit_Harington", "kit_rose_hbo")],
    "multi/obama_and_biden.jpg": [(843, 513, "Joe_Biden", "dnc_2008"), (1232, 475, "Barack_Obama", "dnc_2008"),
                                  (1701, 1139, "unknown_girl_dnc_2008", "dnc_2008")],
    "multi/bald_guys.jpg": [(x, y, _BALD[w], f"bald_tile_{i}") for i, (x, y, w) in enumerate(_BALD_TILES)],
}

#: PASCAL VOC group photos: every face detected is a different, unnamed person.
STRANGERS = ["multi/2007_007763.jpg", "multi/2008_001009.jpg", "multi/2008_001322.jpg", "multi/2008_002079.jpg",
             "multi/2008_002470.jpg", "multi/2008_002506.jpg", "multi/2008_004176.jpg", "multi/2008_007676.jpg",
             "multi/2009_004587.jpg"]


@dataclass
class LabelledFaces:
    """Faces of the set: ``embeddings`` N×D float32, ``identities`` N str, ``photos`` N str, ``files`` N str
    (relative paths), ``widths`` N float (box width px); ``missing``: labelled faces no detection matched."""

    embeddings: np.ndarray
    identities: np.ndarray
    photos: np.ndarray
    files: np.ndarray
    widths: np.ndarray
    missing: list[str]

    def same_photo(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Bool block: face ``rows[i]`` and face ``cols[j]`` come from one photograph."""
        return self.photos[rows][:, None] == self.photos[cols][None, :]

    def summary(self) -> dict:
        ids, counts = np.unique(self.identities, return_counts=True)
        return {"faces": int(len(self.identities)), "identities": int(len(ids)),
                "identities_with_2_or_more_faces": int(np.sum(counts >= 2)), "photos": int(len(set(self.photos))),
                "labelled_faces_not_detected": self.missing}


def _nearest(dets, x: float, y: float, used: set[int]) -> int:
    """Index of the unused detection whose box centre is nearest (x, y) and within one box width; -1 if none."""
    best, best_d = -1, np.inf
    for i, b in enumerate(dets.boxes):
        if i in used:
            continue
        d = float(np.hypot((b[0] + b[2]) / 2 - x, (b[1] + b[3]) / 2 - y))
        if d < best_d and d <= (b[2] - b[0]):
            best, best_d = i, d
    return best


def load_enroll_examples(pipeline, root: str | Path) -> LabelledFaces:
    """Detect and embed the labelled faces of ``root`` (../shared/data/enroll_examples) with ``pipeline`` (a
    ``FacePipeline``). Raises ``UsageError`` when the folder or a listed file is missing."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder; give ../shared/data/enroll_examples")
    seen: set[str] = set()
    rows: list[tuple[np.ndarray, str, str, str, float]] = []
    missing: list[str] = []
    for rel in [*SUBJECTS, *GROUPS, *STRANGERS]:
        path = root / rel
        if not path.is_file():
            raise UsageError(f"{path}: missing from the enroll_examples folder")
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if sha in seen:
            continue  # the same bytes under another name
        seen.add(sha)
        image = load_image(path)
        dets = pipeline.detect([image])[0]
        if rel in SUBJECTS:
            wanted = [(None, None, *SUBJECTS[rel])]
        elif rel in GROUPS:
            wanted = GROUPS[rel]
        else:
            wanted = [(None, None, f"{Path(rel).stem}#{i}", Path(rel).stem) for i in range(len(dets))]
        picks, used = [], set()
        for k, (x, y, ident, photo) in enumerate(wanted):
            if x is None:
                i = k if rel in STRANGERS else (int(np.argmax(dets.widths)) if len(dets) else -1)
            else:
                i = _nearest(dets, x, y, used)
            if i < 0:
                missing.append(f"{rel}:{ident}")
                continue
            used.add(i)
            picks.append((i, ident, photo))
        if not picks:
            continue
        emb = pipeline.embed(image, dets[np.array([i for i, _, _ in picks])])
        for (i, ident, photo), e in zip(picks, emb, strict=True):
            rows.append((e, ident, photo, rel, float(dets.widths[i])))
    return LabelledFaces(np.stack([r[0] for r in rows]).astype(np.float32), np.array([r[1] for r in rows]),
                         np.array([r[2] for r in rows]), np.array([r[3] for r in rows]),
                         np.array([r[4] for r in rows]), missing)
