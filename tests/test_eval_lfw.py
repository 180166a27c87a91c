"""End to end on a slice of ../shared LFW with the built-in pack: View 2 accuracy, open-set, cache, CLI, bias view.

Floors. dlib's published LFW accuracy for this embedder is 99.38 % (0.6 errors expected per 100 pairs). The slice
below has 80 pairs (2 folds × 20 matched + 20 mismatched, the first of each fold); with a per-pair error rate near
0.6 % the chance of 4 or more errors is about 0.2 % (Poisson, λ ≈ 0.5), so a 95 % floor (≤ 4 errors of 80) does
not flake even with the noisier threshold of a 2-fold split, while the failures this test is for (wrong colour
order, misaligned chips, a box convention the shape predictor was not trained on, a broken ONNX conversion) cost
10–40 points. The open-set slice (the first 30 identities by name: 13 enrolled, 32 mated and 17 non-mated searches)
needs rank-1 ≥ 90 % (≤ 3 misses) on the same reasoning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from facegate.evaluation.embeddings_cache import EmbeddingCache
from facegate.evaluation.lfw import evaluate_lfw
from facegate.evaluation.openset import evaluate_openset
from tests.cli_util import run_cli
from tests.conftest import need_shared

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def lfw_dir() -> Path:
    return need_shared("data", "lfw")


@pytest.fixture(scope="module")
def pipeline():
    from facegate.pipeline import FacePipeline

    return FacePipeline.load("dlib", with_liveness=False)  # Euclidean units in the checks below


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evalcache") / "embeddings.sqlite"


def test_lfw_slice_accuracy_floor_and_cache(pipeline, lfw_dir, cache_path, tmp_path, caplog) -> None:
    cache = EmbeddingCache(cache_path)
    kwargs = dict(limit_folds=2, max_pairs_per_fold=20, progress=False)
    report = evaluate_lfw(pipeline, lfw_dir, lfw_dir / "pairs.txt", cache=cache, out_dir=tmp_path, **kwargs)
    assert report["pairs"] == {"genuine": 40, "impostor": 40, "folds": 2}
    assert report["protocol"].startswith("LFW View 2 (2-fold") and "SUBSET" in report["protocol"]
    assert report["accuracy"]["mean"] >= 0.95, report["accuracy"]
    assert report["auc"] >= 0.98
    assert 0.0 <= report["eer"]["rate"] <= 0.05
    # The best-accuracy distance sits where dlib's space separates people (its own recommendation is 0.6).
    assert 0.4 <= report["threshold"]["value"] <= 0.8
    assert report["images"]["images"] > 100
    assert report["images"]["no_face_detected"] <= 2  # RetinaFace finds nearly every funnelled LFW face
    assert (tmp_path / "lfw_roc.png").read_bytes()[:8] == PNG
    assert json.loads((tmp_path / "lfw_report.json").read_text())["accuracy"] == report["accuracy"]
    # Second run: every embedding comes from the cache, so nothing is detected or embedded again.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="facegate.evaluation.embeddings_cache"):
        again = evaluate_lfw(pipeline, lfw_dir, lfw_dir / "pairs.txt", cache=cache, **kwargs)
    assert "event=eval_cache_reuse table=embeddings" in caplog.text
    assert f"cached={report['images']['images']} to_embed=0" in caplog.text
    assert again["accuracy"] == report["accuracy"] and again["auc"] == report["auc"]
    rows = cache.db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    assert rows == report["images"]["images"]
    # A cached embedding that no longer matches what the pipeline computes (here: corrupted on purpose, as a
    # changed alignment would) fails the canary check, so a new generation is computed instead of reusing it.
    (fingerprint,) = cache.db.execute("SELECT DISTINCT fingerprint FROM embeddings").fetchone()
    cache.db.execute("UPDATE embeddings SET embedding = ? WHERE fingerprint = ?", (bytes(128 * 4), fingerprint))
    cache.db.commit()
    third = evaluate_lfw(pipeline, lfw_dir, lfw_dir / "pairs.txt", cache=cache, **kwargs)
    assert third["accuracy"] == report["accuracy"]
    generations = {f for (f,) in cache.db.execute("SELECT DISTINCT fingerprint FROM embeddings")}
    assert generations == {fingerprint, fingerprint[:-1] + "1"}
    cache.close()


def test_openset_slice(pipeline, lfw_dir, cache_path, tmp_path) -> None:
    cache = EmbeddingCache(cache_path)
    report = evaluate_openset(pipeline, lfw_dir, cache=cache, max_identities=30, out_dir=tmp_path, progress=False)
    cache.close()
    assert report["identities"] == {"gallery": 13, "nonmated": 17}
    assert report["searches"] == {"mated": 32, "nonmated": 17}
    assert report["rank1"] >= 0.9
    point = report["fnir_at_fpir"]["0.01"]
    assert point["fpir"] == 0.0  # 17 non-mated searches: FPIR ≤ 1 % allows none
    assert 0.0 <= point["fnir"] <= 1.0 and point["threshold"] > 0
    pairs = report["all_pairs_1to1"]
    assert pairs["impostor"] == 62 * 61 // 2 - pairs["genuine"]
    assert (tmp_path / "openset_det.png").read_bytes()[:8] == PNG
    # Bias view on the same (now cached) embeddings, synthetic groups by first letter.
    groups = tmp_path / "groups.csv"
    names = sorted(p.name for p in (lfw_dir / "lfw-deepfunneled").iterdir())[:30]
    groups.write_text("".join(f"{n},{'A-Ad' if n < 'Ad' else 'Ad-Z'}\n" for n in names))
    cache = EmbeddingCache(cache_path)
    grouped = evaluate_openset(pipeline, lfw_dir, cache=cache, max_identities=30, groups_csv=groups, progress=False)
    cache.close()
    by_group = grouped["by_group"]["groups"]
    assert sum(g["mated"] for g in by_group.values()) == 32 and sum(g["nonmated"] for g in by_group.values()) == 17
    assert grouped["by_group"]["unassigned_searches"] == 0


def test_cli_lfw_with_groups(lfw_dir, cache_path, tmp_path) -> None:
    groups = tmp_path / "groups.csv"
    # Synthetic grouping by first letter — not demographic labels (facegate ships none; see bias.py).
    from facegate.evaluation.lfw import parse_pairs

    names = sorted({n for p in parse_pairs(lfw_dir / "pairs.txt")[:10] + parse_pairs(lfw_dir / "pairs.txt")[300:310]
                    for n in (p.name1, p.name2)})
    groups.write_text("identity,group\n" + "".join(f"{n},{'A-M' if n[0] <= 'M' else 'N-Z'}\n" for n in names))
    result = run_cli("eval", "lfw", "--root", str(lfw_dir), "--pairs", str(lfw_dir / "pairs.txt"),
                     "--limit-folds", "2", "--max-pairs-per-fold", "5", "--out", str(tmp_path / "out"),
                     "--cache", str(cache_path), "--groups", str(groups), "--no-progress")
    assert result.code == 0, result.stderr
    report = result.json()
    by_group = report["by_group"]["groups"]
    assert set(by_group) <= {"A-M", "N-Z"} and by_group
    for entry in by_group.values():
        assert set(entry) >= {"genuine", "impostor", "at_chosen_threshold", "at_pack_threshold"}
    assert (tmp_path / "out" / "lfw_report.json").is_file()
