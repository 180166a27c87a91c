"""No silent misses (issue 14, item 6): the gallery searches exactly (brute force over every live template) up to
``EXACT_SEARCH_MAX_TEMPLATES``, and above it re-scores hnswlib's candidates exactly. No models needed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from facegate.gallery import Gallery, PackBinding
from facegate.gallery.index import EXACT_SEARCH_MAX_TEMPLATES, GalleryIndex
from facegate.gallery.template_matrix import TemplateMatrix
from facegate.scoring import compare

METRICS = ["euclidean", "cosine"]


def _exact_top(vectors: np.ndarray, probes: np.ndarray, metric: str, alive: np.ndarray, fetch: int) -> list[set]:
    """Reference: the ``fetch`` best live rows per probe by ``scoring.compare`` (float64), as sets of row numbers."""
    scores = compare(probes, vectors, metric, np.float64)
    scores = np.where(alive[None, :], scores, np.inf if metric == "euclidean" else -np.inf)
    order = np.argsort(scores if metric == "euclidean" else -scores, axis=1, kind="stable")
    return [set(row[: min(fetch, int(alive.sum()))].tolist()) for row in order]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n", [1, 7, 127, 128, 129, 1000, 3000])
def test_template_matrix_nearest_is_exact(metric: str, n: int) -> None:
    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    matrix = TemplateMatrix(16, metric)
    tids = np.arange(n) * 3 + 2  # sparse ids, as SQLite's are after erasures
    matrix.add(tids, vectors)
    dead = rng.choice(n, n // 4, replace=False)
    matrix.remove(tids[dead])
    alive = np.ones(n, bool)
    alive[dead] = False
    probes = rng.standard_normal((70, 16)).astype(np.float32)  # > PROBE_CHUNK: two chunks
    for fetch in (1, 5, 40):
        want = _exact_top(vectors, probes, metric, alive, fetch)
        got = matrix.nearest(probes, fetch)
        for row, expected in zip(got, want, strict=True):
            assert set(((row - 2) // 3).tolist()) == expected
            scores = matrix.rescore(probes[0], row)
            assert np.all(np.isfinite(scores))


def test_template_matrix_compacts_and_keeps_answers() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((5000, 8)).astype(np.float32)
    matrix = TemplateMatrix(8, "euclidean")
    matrix.add(np.arange(5000), vectors)
    matrix.remove(np.arange(0, 4000))  # more dead than live rows: squeezed out
    assert matrix.rows == 1000 and matrix.dead == 0 and matrix.live == 1000
    tids, kept = matrix.snapshot()
    assert np.array_equal(tids, np.arange(4000, 5000)) and np.array_equal(kept, vectors[4000:])
    probe = vectors[4321:4322]
    assert matrix.nearest(probe, 1)[0].tolist() == [4321]
    with pytest.raises(KeyError):
        matrix.vectors(np.array([5]))


@pytest.mark.parametrize("metric", METRICS)
def test_both_paths_give_the_exact_scores_of_scoring_compare(metric: str) -> None:
    """The exact path and the hnswlib + re-rank path score a template identically: ``scoring.compare`` of the
    probe and the stored template (same float32 numbers, so a threshold decides the same way on either path)."""
    rng = np.random.default_rng(5)
    n_ids, per_id, dim = 400, 5, 32
    centres = rng.normal(0, 0.1, (n_ids, dim)).astype(np.float32)
    vecs = (centres.repeat(per_id, 0) + rng.normal(0, 0.02, (n_ids * per_id, dim))).astype(np.float32)
    index = GalleryIndex(dim, metric, capacity=len(vecs))
    index.add(np.arange(len(vecs)), np.arange(len(vecs)) // per_id, vecs)
    probes = centres[:60] + rng.normal(0, 0.02, (60, dim)).astype(np.float32)
    exact, _ = index.search(probes, k=5)
    index.exact_max = 0  # force the approximate path on the same index
    approx, _ = index.search(probes, k=5)
    stored = vecs / np.linalg.norm(vecs, axis=1, keepdims=True) if metric == "cosine" else vecs
    for probe, e_row, a_row in zip(probes, exact, approx, strict=True):
        assert len(e_row) == 5 and len({c.identity_id for c in e_row}) == 5
        want = compare(probe, stored[[c.template_id for c in e_row]], metric)[0]
        np.testing.assert_allclose([c.score for c in e_row], want, rtol=1e-6, atol=1e-6)
        # whatever the graph found carries the exact score of that template (BLAS may round the last bit
        # differently for another number of rows, hence the tolerance of a few float32 ulps)
        got = [c.score for c in a_row]
        np.testing.assert_allclose(got, compare(probe, stored[[c.template_id for c in a_row]], metric)[0],
                                   rtol=1e-6, atol=1e-6)
    # on this easy set the graph + re-rank finds the same best identity as brute force
    assert [r[0].identity_id for r in approx] == [r[0].identity_id for r in exact]


def test_gallery_reopened_from_its_saved_index_searches_exactly(tmp_path: Path) -> None:
    """A gallery whose hnswlib file is loaded (not rebuilt) fills the exact matrix from SQLite: every template is
    still found as its own best match, also after an erasure and a later enrolment."""
    pack = PackBinding("default", 64, "euclidean")
    rng = np.random.default_rng(9)
    vecs = rng.normal(0, 0.1, (60, 64)).astype(np.float32)
    with Gallery(tmp_path / "g") as g:
        for i in range(20):
            g.enrol(f"p{i}", vecs[3 * i : 3 * i + 3], pack)
        g.remove("p4")
    with Gallery(tmp_path / "g") as g:
        g.enrol("late", rng.normal(0, 0.1, (2, 64)).astype(np.float32), pack)
        found = g.search(vecs, k=1)
        for i, row in enumerate(found):
            if i // 3 == 4:
                assert row[0].name != "p4"
            else:
                assert row[0].name == f"p{i // 3}" and row[0].score == pytest.approx(0.0, abs=1e-3)


@pytest.mark.slow
def test_every_template_of_a_100k_gallery_is_its_own_best_match() -> None:
    """Issue 14: in a 100,000-template gallery an enrolled photo came back unknown because the approximate search
    missed its own template. At this size the default search is exact, so it cannot miss: all 100,000 templates
    (synthetic, L2-normalised, 5 per identity, the clustered worst case of bench/gallery_bench.py) are searched
    and each comes back as its own best match with similarity 1. 32-d rather than the packs' 128-d keeps the
    10¹⁰ comparisons near half a minute of CPU (the search code does not depend on the dimension; the daemon's
    per-frame cost at 128-d is in README's crossover table). The graph is built deliberately poor (M = 4,
    ef_construction = 8, seconds instead of minutes): the exact path must not depend on it."""
    n, per_id, dim = 100_000, 5, 32
    assert n <= EXACT_SEARCH_MAX_TEMPLATES
    rng = np.random.default_rng(14)
    centres = rng.normal(0, 0.1, (n // per_id, dim)).astype(np.float32)
    vecs = centres.repeat(per_id, 0) + rng.normal(0, 0.02, (n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    c0 = time.process_time()
    index = GalleryIndex(dim, "cosine", M=4, ef_construction=8, capacity=n)
    index.add(np.arange(n), np.arange(n) // per_id, vecs)
    misses = []
    for start in range(0, n, 4096):
        found, _ = index.search(vecs[start : start + 4096], k=1)
        misses += [start + i for i, row in enumerate(found) if row[0].template_id != start + i]
        assert all(row[0].score == pytest.approx(1.0, abs=1e-5) for row in found)
    assert misses == [], f"{len(misses)} templates not found as their own best match, e.g. {misses[:5]}"
    print(f"100,000 templates added and searched in {time.process_time() - c0:.1f} s of CPU")
