"""The exact search of fused galleries (``gallery/exact.py``): every template scored with the pack's fused rule, the
best template per identity, best first; removal, names, an empty gallery and a missing scorer; and a ``Gallery`` of
a fused pack on disk, reopened (the index is rebuilt from SQLite)."""

from __future__ import annotations

import numpy as np
import pytest

from facegate.errors import GalleryError
from facegate.gallery import Gallery, PackBinding
from facegate.gallery.exact import ExactIndex
from facegate.scoring import Fusion, FusionPart, Scorer

FUSION = Fusion((FusionPart(128, "euclidean", 10.0, -20.0), FusionPart(128, "cosine", -4.0, 15.0)))
SCORER = Scorer("fused", 3.0, FUSION)
PACK = PackBinding("fused-test", 256, "fused")


def _templates(rng: np.random.Generator, n: int) -> np.ndarray:
    dlib = rng.normal(0, 0.09, (n, 128)).astype(np.float32)
    mfn = rng.normal(0, 1, (n, 128)).astype(np.float32)
    mfn /= np.linalg.norm(mfn, axis=1, keepdims=True)
    return np.concatenate([dlib, mfn], axis=1)


def test_search_is_exact_best_template_per_identity():
    rng = np.random.default_rng(7)
    vecs = _templates(rng, 600)
    owners = np.repeat(np.arange(200), 3)  # 3 templates per identity
    index = ExactIndex(256, "fused", SCORER)
    index.add(np.arange(600), owners, vecs, names={i: (f"p{i}", ("staff",)) for i in range(200)})
    probes = vecs[[5, 77, 301]] + rng.normal(0, 0.01, (3, 256)).astype(np.float32)
    found, version = index.search(probes, k=4)
    assert version == index.version and [len(f) for f in found] == [4, 4, 4]
    scores = SCORER.compare(probes, vecs)
    for row, cands in zip(scores, found, strict=True):
        best_per_identity = {}
        for t, s in enumerate(row):
            best_per_identity[owners[t]] = max(best_per_identity.get(owners[t], -np.inf), s)
        expect = sorted(best_per_identity.items(), key=lambda kv: -kv[1])[:4]
        assert [c.identity_id for c in cands] == [i for i, _ in expect]
        assert [c.score for c in cands] == pytest.approx([s for _, s in expect], abs=1e-4)
        assert all(owners[c.template_id] == c.identity_id for c in cands)
    assert found[0][0].name == "p1" and found[0][0].groups == ("staff",)  # template 5 belongs to identity 1
    index.remove(np.array([3, 4, 5]), identity_id=1)
    again, _ = index.search(probes[:1], k=4)
    assert 1 not in [c.identity_id for c in again[0]] and index.count == 597


def test_empty_missing_scorer_and_bad_k():
    index = ExactIndex(256, "fused")
    assert index.search(np.zeros((2, 256), np.float32))[0] == [[], []]
    index.add(np.array([1]), 1, _templates(np.random.default_rng(0), 1))
    with pytest.raises(GalleryError, match="needs the pack's scorer"):
        index.search(np.zeros((1, 256), np.float32))
    with pytest.raises(GalleryError, match="expects 128-d"):
        index.use_scorer(Scorer("fused", 0.0, Fusion((FusionPart(64, "euclidean", 0, -1),
                                                      FusionPart(64, "cosine", 0, 1)))))
    index.use_scorer(SCORER)
    with pytest.raises(GalleryError, match="k=0"):
        index.search(np.zeros((1, 256), np.float32), k=0)


def test_a_fused_gallery_on_disk_is_searched_with_the_scorer_after_reopening(tmp_path):
    rng = np.random.default_rng(3)
    vecs = _templates(rng, 6)
    with Gallery(tmp_path / "g", scorer=SCORER) as gallery:
        for i in range(3):
            gallery.enrol(f"person{i}", vecs[2 * i : 2 * i + 2], PACK)
        (cands,) = gallery.search(vecs[2:3], k=2)
        own = float(SCORER.compare(vecs[2], vecs[2])[0, 0])
        assert cands[0].name == "person1" and cands[0].score == pytest.approx(own)
    with Gallery(tmp_path / "g") as reopened:  # no scorer yet: listing works, searching says what it needs
        assert reopened.stats()["metric"] == "fused" and reopened.stats()["templates"] == 6
        with pytest.raises(GalleryError, match="needs the pack's scorer"):
            reopened.search(vecs[:1])
        reopened.use_scorer(SCORER)
        assert reopened.search(vecs[4:5], k=1)[0][0].name == "person2"
        reopened.remove("person2")
        assert reopened.search(vecs[4:5], k=1)[0][0].name != "person2"
    with pytest.raises(GalleryError, match="fused-test .*not other"), Gallery(tmp_path / "g",
                                                                             PackBinding("other", 256, "fused")):
        pass
