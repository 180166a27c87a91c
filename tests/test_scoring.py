"""facegate.scoring: the one rule for comparison scores and thresholds, and the threshold fallbacks.

Unit tests of ``Scorer`` for both metrics (inclusive threshold, NaN never passes, gap sign, best-first order,
``compare`` against a direct numpy reference); the gallery's search, the decision engine and the evaluation
reports accepting the very same score at the threshold; and the liveness threshold coming from the pack unless
the config (daemon) or ``--threshold`` (``facegate liveness``) overrides it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_util import run_cli
from conftest import REPO, need_shared

from facegate.config import Config, DecisionConfig, DoorConfig
from facegate.detections import Detections
from facegate.errors import UsageError
from facegate.evaluation import lfw, openset
from facegate.evaluation import metrics as m
from facegate.gallery import Gallery, PackBinding
from facegate.packs.manifest import load_manifest
from facegate.runtime.decision import DecisionEngine
from facegate.runtime.rules import AccessRules
from facegate.scoring import Candidate, Scorer, compare, compare_pairs, liveness_threshold, to_higher_better

NAN = float("nan")
LIVENESS_PACK = "retinaface-mobilefacenet"


# ------------------------------------------------------------------------------------------- the Scorer itself


def test_euclidean_passes_at_or_below_the_threshold_and_nan_never_passes():
    s = Scorer("euclidean", 0.6)
    assert s.lower_is_better
    assert s.passes(0.6) and s.passes(0.0) and not s.passes(np.nextafter(0.6, 1.0))
    assert not s.passes(NAN) and not s.passes(float("inf"))
    np.testing.assert_array_equal(s.passes_all([0.59, 0.6, 0.61, NAN]), [True, True, False, False])
    assert s.passes_all(np.zeros((2, 3))).shape == (2, 3)


def test_cosine_passes_at_or_above_the_threshold_and_nan_never_passes():
    s = Scorer("cosine", 0.3215)
    assert not s.lower_is_better
    assert s.passes(0.3215) and s.passes(1.0) and not s.passes(np.nextafter(0.3215, 0.0))
    assert not s.passes(NAN) and not s.passes(float("-inf"))
    np.testing.assert_array_equal(s.passes_all([0.9, 0.3215, 0.1, NAN]), [True, True, False, False])


def test_better_and_gap_point_the_right_way_for_both_metrics():
    d, c = Scorer("euclidean", 0.6), Scorer("cosine", 0.3)
    assert d.better(0.2, 0.5) and not d.better(0.5, 0.2) and not d.better(0.4, 0.4)
    assert c.better(0.5, 0.2) and not c.better(0.2, 0.5) and not c.better(0.4, 0.4)
    assert not d.better(NAN, 0.5) and not d.better(0.5, NAN) and not c.better(NAN, 0.5)
    assert d.gap(0.2, 0.5) == pytest.approx(0.3) and d.gap(0.5, 0.2) == pytest.approx(-0.3)
    assert c.gap(0.5, 0.2) == pytest.approx(0.3) and c.gap(0.2, 0.5) == pytest.approx(-0.3)
    assert d.gap(0.4, 0.4) == 0.0 == c.gap(0.4, 0.4)
    assert np.isnan(d.gap(NAN, 0.1))


def test_best_first_best_and_sort_key():
    items = [Candidate(i, f"n{i}", (), score) for i, score in enumerate([0.5, NAN, 0.2, 0.9, 0.2])]
    assert [c.identity_id for c in Scorer("euclidean", 0.6).best_first(items)] == [2, 4, 0, 3, 1]  # stable, NaN last
    assert [c.identity_id for c in Scorer("cosine", 0.3).best_first(items)] == [3, 0, 2, 4, 1]
    assert Scorer("euclidean", 0.6).best_first([(1, 0.4), (2, 0.1)], score=lambda t: t[1]) == [(2, 0.1), (1, 0.4)]
    assert Scorer("euclidean", 0.6).best([0.5, NAN, 0.2]) == 0.2
    assert Scorer("cosine", 0.3).best([0.5, NAN, 0.2]) == 0.5
    assert Scorer("cosine", 0.3).best([NAN]) is None and Scorer("cosine", 0.3).best([]) is None
    assert sorted([0.1, 0.7, 0.4], key=Scorer("cosine", 0.3).sort_key) == [0.7, 0.4, 0.1]


def test_compare_matches_a_direct_numpy_reference():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(5, 16)).astype(np.float32)
    b = rng.normal(size=(7, 16)).astype(np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref_d = np.linalg.norm(a64[:, None, :] - b64[None, :, :], axis=-1)
    ref_c = (a64 @ b64.T) / np.outer(np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1))
    for metric, ref in (("euclidean", ref_d), ("cosine", ref_c)):
        got = Scorer(metric, 0.5).compare(a, b)
        assert got.shape == (5, 7) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(compare(a, b, metric, np.float64), ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(compare_pairs(a, b[:5], metric), np.diag(ref[:, :5]), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(compare(a[0], b, metric)[0], ref[0], rtol=1e-5, atol=1e-5)  # 1-D = one row
    assert compare_pairs(a, a, "euclidean").tolist() == [0.0] * 5  # identical rows: exactly 0
    assert compare(np.zeros((1, 4)), np.ones((1, 4)), "cosine")[0, 0] == 0.0  # zero vector: 0, not NaN
    with pytest.raises(ValueError, match="unknown metric"):
        compare(a, b, "distance")


def test_higher_better_conversion_keeps_the_threshold_test_exact():
    d = Scorer("euclidean", 0.6)
    assert d.to_higher_better(0.6) == -0.6 and d.from_higher_better(-0.6) == 0.6
    assert Scorer("cosine", 0.3).to_higher_better(0.3) == 0.3
    np.testing.assert_array_equal(to_higher_better([0.1, 0.2], "euclidean"), [-0.1, -0.2])
    scores = np.array([0.5, 0.6, np.nextafter(0.6, 1.0), 0.7])
    # "accept when score >= T" in higher-better units is exactly Scorer.passes in native units
    np.testing.assert_array_equal(d.to_higher_better(scores) >= d.to_higher_better(d.threshold), d.passes_all(scores))


def test_validation_and_resolution_from_manifests():
    with pytest.raises(UsageError, match="metric 'similarity'"):
        Scorer("similarity", 0.3)  # type: ignore[arg-type]
    for bad in (NAN, float("inf"), "x", None):
        with pytest.raises(UsageError, match="finite number"):
            Scorer("cosine", bad)  # type: ignore[arg-type]
    dlib = load_manifest("dlib")
    assert Scorer.resolve(dlib) == Scorer("euclidean", dlib.operating_point.threshold)
    assert Scorer.resolve(dlib, None).threshold == dlib.operating_point.threshold  # config says nothing
    assert Scorer.resolve(dlib, 0.47) == Scorer("euclidean", 0.47)  # decision.threshold overrides
    arc = load_manifest(LIVENESS_PACK)
    assert Scorer.resolve(arc) == Scorer("cosine", arc.operating_point.threshold)
    assert Scorer.resolve(arc).describe() == f"cosine similarity >= {arc.operating_point.threshold:g}"
    assert Candidate(3, "Ada", ("staff",), 0.1234567, 9).to_json() == {
        "identity": "Ada", "identity_id": 3, "score": 0.12346, "template_id": 9, "groups": ["staff"]}


# ------------------------------------------------------------- gallery, decision and evaluation agree at T


def _face(emb: np.ndarray) -> Detections:
    box = np.array([[100, 100, 220, 240]], np.float32)
    lm = np.array([[[140, 160], [180, 160], [160, 185], [145, 210], [175, 210]]], np.float32)
    return Detections(box, np.array([0.99], np.float32), lm, {"embeddings": emb[None].astype(np.float32)})


def _decide(search, scorer: Scorer) -> list[tuple[str, object, float | None]]:
    t0 = datetime(2026, 6, 3, 12, 0, tzinfo=UTC)
    engine = DecisionEngine(search=search, scorer=scorer, camera_doors={"cam1": "front"},
                            rules=AccessRules([DoorConfig(id="front", allowed_groups=["staff"], cooldown_s=0)]),
                            config=DecisionConfig(k=1, n=1, margin=0.0),
                            wall_clock=lambda: t0, clock=lambda: 100.0)
    emb = np.eye(8, dtype=np.float32)[0] + 0.3 * np.eye(8, dtype=np.float32)[3]
    out = engine.process("cam1", _face(emb), captured_at=100.0, captured_wall=t0 - timedelta(seconds=0.02))
    return [(d.type, d.identity_id, d.score) for d in out]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_a_score_exactly_at_the_threshold_passes_in_gallery_decision_and_evaluation(tmp_path: Path, metric: str):
    e = np.eye(8, dtype=np.float32)
    probe, other = e[0] + 0.3 * e[3], e[5]
    with Gallery(tmp_path / "g") as gallery:
        gallery.enrol("alice", e[:1], PackBinding(f"test-{metric}", 8, metric), groups=["staff"])
        (found,) = gallery.search(probe, k=1)
        (cand,) = found
        assert isinstance(cand, Candidate) and cand.name == "alice" and cand.template_id is not None
        score = cand.score
        worse = gallery.search(other, k=1)[0][0].score
        at = Scorer(metric, score)  # the threshold is exactly the gallery's score
        toward_better = -np.inf if metric == "euclidean" else np.inf
        stricter = Scorer(metric, float(np.nextafter(score, toward_better)))
        assert at.passes(score) and not stricter.passes(score) and not at.passes(worse)

        # the decision engine takes the gallery's search as it is (no adapter) and applies the same rule
        ((kind, who, decided),) = _decide(gallery.search, at)
        assert (kind, who, decided) == ("grant", cand.identity_id, score)
        assert [d[0] for d in _decide(gallery.search, stricter)] == ["unknown"]

    # evaluation: thresholds in the pack's units are converted by scoring and accept the same score
    hb = at.to_higher_better
    assert m.rates_at([hb(score)], [hb(worse)], hb(at.threshold)) == (0.0, 0.0)
    assert m.rates_at([hb(score)], [hb(worse)], hb(stricter.threshold)) == (0.0, 1.0)
    scores = hb(np.array([score, score, worse, worse]))
    same, folds = np.array([True, True, False, False]), np.array([0, 1, 0, 1])
    report = lfw.verification_report(scores, same, folds, metric, at.threshold)
    assert (report["pack_threshold"]["fmr"], report["pack_threshold"]["fnmr"]) == (0.0, 0.0)
    report = lfw.verification_report(scores, same, folds, metric, stricter.threshold)
    assert report["pack_threshold"]["fnmr"] == 1.0
    searches = m.Searches(hb(np.array([score])), np.array([True]), hb(np.array([worse])), hb(np.array([worse])))
    assert openset.openset_report(searches, metric, at.threshold)["pack_threshold"]["fnir"] == 0.0
    assert openset.openset_report(searches, metric, stricter.threshold)["pack_threshold"]["fnir"] == 1.0


# ------------------------------------------------------------------------------------ liveness threshold


def _pack_copy(tmp_path: Path, liveness_threshold_value: float | None) -> Path:
    """``models/retinaface-mobilefacenet.yaml`` with absolute model paths and its own liveness threshold (None:
    the key left out)."""
    src = REPO / "models" / f"{LIVENESS_PACK}.yaml"
    raw = yaml.safe_load(src.read_text())

    def absolute(node):
        if isinstance(node, dict):
            if isinstance(node.get("file"), str):
                node["file"] = str((src.parent / node["file"]).resolve())
            for value in node.values():
                absolute(value)
        elif isinstance(node, list):
            for value in node:
                absolute(value)

    absolute(raw)
    raw["name"] = "pad-test"
    raw["liveness"].pop("threshold", None)
    if liveness_threshold_value is not None:
        raw["liveness"]["threshold"] = liveness_threshold_value
    path = tmp_path / "pad-test.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_liveness_threshold_is_the_packs_unless_overridden(tmp_path: Path):
    assert Config().liveness.threshold is None  # the config says nothing by default
    shipped = load_manifest(LIVENESS_PACK)
    assert liveness_threshold(shipped, Config().liveness.threshold) == shipped.liveness.threshold == 0.5
    assert liveness_threshold(load_manifest(_pack_copy(tmp_path, 0.7))) == 0.7
    assert liveness_threshold(load_manifest(_pack_copy(tmp_path, 0.7)), 0.2) == 0.2
    assert liveness_threshold(load_manifest(_pack_copy(tmp_path, None))) == 0.5  # the manifest's default
    config = Config.model_validate({"liveness": {"enabled": True, "threshold": 0.8}})
    assert liveness_threshold(shipped, config.liveness.threshold) == 0.8
    with pytest.raises(UsageError, match="no liveness block"):
        liveness_threshold(load_manifest("default"))
    with pytest.raises(UsageError, match="between 0 and 1"):
        liveness_threshold(shipped, 1.5)


def test_daemon_policy_takes_the_packs_liveness_threshold_unless_the_config_sets_one(tmp_path: Path, monkeypatch):
    from facegate.config import CameraConfig
    from facegate.runtime.service import Service

    need_shared("models", "antispoof", "2.7_80x80_MiniFASNetV2.onnx")
    video = need_shared("data", "videos", "stage_clip_640x360.mp4")
    monkeypatch.setenv("FACEGATE_CACHE_DIR", str(tmp_path / "cache"))
    pack = _pack_copy(tmp_path, 0.25)

    def built(**sections) -> DecisionEngine:
        config = Config.model_validate({
            "pack": str(pack), "gallery": {"path": str(tmp_path / "gallery")},
            "service": {"state_dir": str(tmp_path / "state"), "stdout_events": False}, **sections})
        service = Service(config, extra_cameras=[CameraConfig(id="cam1", file=str(video))])
        try:
            return service.build().engine
        finally:
            service.shutdown()

    plain = built(liveness={"enabled": True})
    assert plain.liveness.threshold == 0.25  # the pack's
    assert plain.scorer == Scorer.resolve(load_manifest(pack))  # and the pack's operating point
    tuned = built(liveness={"enabled": True, "threshold": 0.8}, decision={"threshold": 0.4})
    assert tuned.liveness.threshold == 0.8
    assert tuned.scorer == Scorer("cosine", 0.4)
    assert built().liveness is None  # liveness off


def test_facegate_liveness_takes_the_packs_threshold_unless_given_one(tmp_path: Path):
    need_shared("models", "antispoof", "2.7_80x80_MiniFASNetV2.onnx")
    spoof = need_shared("data", "antispoof", "spoof", "silentface_image_F2.jpg")  # live score < 0.1
    env = {"FACEGATE_CACHE_DIR": str(tmp_path / "cache")}
    pack = _pack_copy(tmp_path, 0.0)  # a pack that calls every face live
    result = run_cli("liveness", str(spoof), "--pack", str(pack), env=env)
    assert result.code == 0, result.stderr
    (image,) = json.loads(result.stdout)
    assert image["threshold"] == 0.0 and [f["decision"] for f in image["faces"]] == ["live"]
    assert image["faces"][0]["live_score"] < 0.1
    result = run_cli("liveness", str(spoof), "--pack", str(pack), "--threshold", "0.5", env=env)
    assert result.code == 0, result.stderr
    (image,) = json.loads(result.stdout)
    assert image["threshold"] == 0.5 and [f["decision"] for f in image["faces"]] == ["spoof"]


def test_margins_are_the_packs_unless_the_config_sets_them():
    from facegate.scoring import DEFAULT_LOOKALIKE_MARGIN, DEFAULT_MARGIN, margins

    fused, dlib = load_manifest("default"), load_manifest("dlib")
    assert margins(fused) == (1.3, 2.7)  # LLR units: 0.05 of a distance would be no margin at all
    assert margins(dlib) == (DEFAULT_MARGIN, DEFAULT_LOOKALIKE_MARGIN)
    assert margins(fused, 0.5) == (0.5, 2.7) and margins(fused, 3.0) == (3.0, 3.0)  # never below the margin
    assert margins(dlib, None, 0.2) == (DEFAULT_MARGIN, 0.2)
