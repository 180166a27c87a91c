"""The built-in fused pack (dlib ResNet + MobileFaceNet, sum of calibrated LLRs) on real photos and through the
command line: its template is both models' embeddings side by side, genuine pairs outscore impostors, enrol and
identify work end to end, galleries of the old built-in pack get a clear error (and keep working with the dlib
pack), ``gallery list`` states the rate, and the daemon refuses a false-accept goal its gallery cannot meet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_util import assert_user_error, run_cli
from conftest import need_shared

from facegate.gallery import Gallery, PackBinding
from facegate.imaging import load_image
from facegate.packs.manifest import load_manifest, pack_calibration, source_path
from facegate.pipeline import FacePipeline
from facegate.scoring import Scorer

pytestmark = pytest.mark.slow

EX = "data/enroll_examples"
#: (identity, photo) of one-person photos; no two of one identity are the same picture.
PHOTOS = [
    ("biden", "knn_examples/train/biden/biden.jpg"), ("biden", "knn_examples/train/biden/biden2.jpg"),
    ("obama", "single/obama.jpg"), ("obama", "knn_examples/test/obama1.jpg"), ("obama", "single/obama3.jpg"),
    ("alex", "knn_examples/train/alex_lacamoire/img1.jpg"), ("alex", "knn_examples/test/alex_lacamoire1.jpg"),
    ("rose", "knn_examples/train/rose_leslie/img1.jpg"), ("rose", "knn_examples/train/rose_leslie/img2.jpg"),
    ("kit", "knn_examples/train/kit_harington/john2.jpeg"), ("kit", "knn_examples/test/johnsnow_test1.jpg"),
    ("cruise", "edge_cases/Tom_Cruise_avp_2014_4.jpg"), ("lin", "single/lin-manuel-miranda.png"),
]


@pytest.fixture(scope="module")
def fused() -> FacePipeline:
    return FacePipeline.load("default", threads=1, with_liveness=False)


def _largest(pipeline: FacePipeline, rel: str) -> np.ndarray:
    image = load_image(need_shared(EX, *rel.split("/")))
    dets = pipeline.detect([image])[0]
    return pipeline.embed(image, dets[[int(np.argmax(dets.widths))]])[0]


def test_the_template_is_both_models_side_by_side(fused):
    manifest = fused.manifest
    assert manifest.recogniser.kind == "fused" and fused.embedding_size == 256 and fused.metric == "fused"
    assert "Apache-2.0" in manifest.recogniser.licence and "CC0" in manifest.recogniser.licence
    # MobileFaceNet ships inside the package (daemon/facegate/weights/), verified by its sha256
    weights = source_path(manifest.recogniser.parts[1].source, manifest.manifest_path)
    assert weights.parent.name == "weights" and (weights.parent / "README.md").is_file()
    assert manifest.recogniser.parts[1].sha256 in (weights.parent / "README.md").read_text()
    dlib = FacePipeline.load("dlib", threads=1, with_liveness=False)
    mfn = FacePipeline.load("retinaface-mobilefacenet", threads=1, with_liveness=False)
    image = load_image(need_shared(EX, "knn_examples", "test", "kit_with_rose.jpg"))
    both = fused.analyse([image])[0].data["embeddings"]
    assert both.shape == (2, 256)
    # the dlib half is exactly the dlib pack's descriptor (itself exact against dlib: tests/test_dlib_resnet.py)
    np.testing.assert_array_equal(both[:, :128], dlib.analyse([image])[0].data["embeddings"])
    # the other half is MobileFaceNet with flip: the sum of the chip's and its mirror's unit embeddings, normalised
    chips = mfn.align(image, mfn.detect([image])[0])
    plain, mirrored = mfn.embed_chips(chips), mfn.embed_chips(np.ascontiguousarray(chips[:, :, ::-1]))
    flip = (plain + mirrored) / np.linalg.norm(plain + mirrored, axis=1, keepdims=True)
    np.testing.assert_allclose(both[:, 128:], flip, atol=1e-6)
    assert float(np.min(np.sum(plain * flip, axis=1))) > 0.9  # the mirror changes it, a little
    # the fused score is the sum of the two parts' LLRs
    parts = fused.scorer.fusion.parts
    d = np.linalg.norm(both[0, :128] - both[1, :128])
    c = float(both[0, 128:] @ both[1, 128:])
    expected = parts[0].intercept + parts[0].slope * d + parts[1].intercept + parts[1].slope * c
    assert fused.compare(both[:1], both[1:])[0, 0] == pytest.approx(expected, abs=1e-3)


def test_genuine_pairs_outscore_impostors_on_real_photos(fused):
    emb = np.stack([_largest(fused, rel) for _, rel in PHOTOS])
    who = np.array([w for w, _ in PHOTOS])
    scores = fused.compare(emb, emb)
    upper = np.triu(np.ones(scores.shape, bool), 1)
    same = who[:, None] == who[None, :]
    genuine, impostor = scores[upper & same], scores[upper & ~same]
    assert len(genuine) == 7 and len(impostor) == 71
    assert genuine.min() > impostor.max(), (genuine.min(), impostor.max())
    scorer = fused.scorer  # the pack's operating point
    assert scorer.passes_all(genuine).all() and not scorer.passes_all(impostor).any()


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fused") / "g"
    train = need_shared(EX, "knn_examples", "train")
    result = run_cli("enroll", "--gallery", str(folder), "--from-dir", str(train))
    assert result.code == 0, result.stderr
    assert result.json()["pack"] == "default" and result.json()["enrolled"] == 9
    return folder


def test_enrol_and_identify_with_the_fused_pack(gallery):
    listed = run_cli("gallery", "list", "--gallery", str(gallery))
    assert listed.code == 0, listed.stderr
    info = listed.json()
    assert (info["pack"], info["dim"], info["metric"], info["templates"]) == ("default", 256, "fused", 9)
    test = need_shared(EX, "knn_examples", "test")
    result = run_cli("identify", "--gallery", str(gallery), str(test / "obama1.jpg"), str(test / "kit_with_rose.jpg"),
                     str(test / "obama_and_biden.jpg"))
    assert result.code == 0, result.stderr
    rows = {Path(r["image"]).name: r for r in result.json()}
    assert rows["obama1.jpg"]["metric"] == "fused"
    assert [f["decision"] for f in rows["obama1.jpg"]["faces"]] == ["obama"]
    assert sorted(f["decision"] for f in rows["kit_with_rose.jpg"]["faces"]) == ["kit_harington", "rose_leslie"]
    # Biden and Obama recognised, the girl (never enrolled) unknown
    assert sorted(f["decision"] for f in rows["obama_and_biden.jpg"]["faces"]) == ["biden", "obama", "unknown"]


def test_gallery_list_states_the_rate_of_the_gallery(gallery):
    manifest = load_manifest("default")
    cal = pack_calibration(manifest)
    shown = run_cli("gallery", "list", "--gallery", str(gallery), "--threshold", "8.5").json()["security"]
    assert shown["threshold_source"] == "decision.threshold" and shown["threshold"] == 8.5
    assert shown["templates"] == 9 and shown["vote"] == {"k": 3, "n": 5}
    assert shown["per_comparison_fmr"] == pytest.approx(cal.fmr_at(8.5).fmr, rel=1e-3)
    expect = Scorer.resolve(manifest, 8.5, calibration=cal, templates=9, vote=(3, 5)).basis.attempt_rate
    assert shown["per_attempt_false_accept_rate_bound"] == pytest.approx(expect, rel=1e-3)
    goal = run_cli("gallery", "list", "--gallery", str(gallery), "--false-accept-rate", "1e-4").json()["security"]
    assert goal["goal_met"] and goal["threshold_source"] == "decision.false_accept_rate"
    assert goal["threshold"] == Scorer.resolve(manifest, false_accept_rate=1e-4, calibration=cal, templates=9,
                                               vote=(3, 5)).threshold
    assert goal["per_attempt_false_accept_rate_bound"] <= 1e-4
    default = run_cli("gallery", "list", "--gallery", str(gallery)).json()["security"]
    assert default["threshold_source"] == "operating_point" and default["per_comparison_fmr"] is not None
    unmet = run_cli("gallery", "list", "--gallery", str(gallery), "--false-accept-rate", "1e-12")
    assert unmet.code == 0 and unmet.json()["security"]["goal_met"] is False
    assert "a smaller gallery" in unmet.json()["security"]["error"]


def test_daemon_refuses_a_goal_its_gallery_cannot_meet(gallery, tmp_path):
    video = need_shared("data", "videos", "stage_clip_640x360.mp4")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"cameras": [{"id": "a", "file": str(video)}], "gallery": {"path": str(gallery)},
                                   "decision": {"false_accept_rate": 1e-12},
                                   "service": {"state_dir": str(tmp_path / "state")}}))
    result = run_cli("run", "--config", str(cfg), timeout=120)
    assert_user_error(result, "decision.false_accept_rate 1e-12 cannot be met", "with 9 templates",
                      "a smaller gallery", "a looser goal", "a stronger pack", code=2)


def test_a_gallery_of_the_old_default_pack_says_what_to_do(tmp_path):
    photo = need_shared(EX, "knn_examples", "train", "biden", "biden2.jpg")
    dlib = FacePipeline.load("dlib", threads=1, with_liveness=False)
    folder = tmp_path / "old"
    with Gallery(folder) as old:  # what facegate <= 0.1 wrote: pack "default", dlib's 128-d Euclidean templates
        old.enrol("biden", _largest(dlib, "knn_examples/train/biden/biden.jpg")[None],
                  PackBinding("default", 128, "euclidean"))
    result = run_cli("identify", "--gallery", str(folder), str(photo))
    assert_user_error(result, "previous built-in pack", "now called 'dlib'", "--pack dlib", "re-enrol", code=1)
    listed = run_cli("gallery", "list", "--gallery", str(folder))
    assert listed.code == 0 and "now called 'dlib'" in listed.json()["security"]["error"]
    kept = run_cli("identify", "--gallery", str(folder), "--pack", "dlib", str(photo))
    assert kept.code == 0, kept.stderr
    assert [f["decision"] for f in kept.json()[0]["faces"]] == ["biden"]
    assert "gallery_pack_renamed" in kept.stderr
    assert json.loads(run_cli("gallery", "list", "--gallery", str(folder)).stdout)["pack"] == "dlib"


def test_the_daemon_derives_its_threshold_from_the_live_gallery(fused, tmp_path, caplog):
    import logging

    from facegate.config import Config
    from facegate.gallery.enrol import Enroller, pack_binding
    from facegate.runtime.service import Service
    from facegate.runtime.stages import build_stages

    photos = need_shared(EX, "knn_examples")
    folder = tmp_path / "g"
    with Gallery(folder, pack=pack_binding(fused)) as gallery:
        assert Enroller(gallery, fused).enrol("biden", [photos / "train/biden/biden.jpg"])[0].status == "enrolled"
    config = Config.model_validate({
        "cameras": [{"id": "a", "file": str(need_shared("data", "videos", "stage_clip_640x360.mp4")), "door": "front"}],
        "doors": [{"id": "front"}], "gallery": {"path": str(folder), "refresh_s": 0},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "service": {"state_dir": str(tmp_path / "state"), "stdout_events": False},
        "decision": {"false_accept_rate": 1e-4}})
    opened: list = []
    with caplog.at_level(logging.INFO, logger="facegate"):
        stages = build_stages(config, [], opened)
    service = Service(config, stages=stages)
    try:
        engine = stages.engine
        first = engine.scorer
        assert first.basis.source == "decision.false_accept_rate" and first.basis.templates == 1
        assert first.basis.attempt_rate <= 1e-4 and "event=threshold why=start" in caplog.text
        with Gallery(folder, pack=pack_binding(fused)) as other:  # another process enrols two photos
            Enroller(other, fused).enrol("obama", [photos / "train/obama/obama.jpg", photos / "test/obama1.jpg"])
        with caplog.at_level(logging.INFO, logger="facegate"):
            assert stages.gallery.refresh()
        second = engine.scorer
        assert second.basis.templates == 3 and second.threshold >= first.threshold  # more templates: stricter
        assert "event=threshold why=gallery_changed" in caplog.text
        probe = _largest(fused, "knn_examples/train/biden/biden2.jpg")[None]
        (candidates,) = stages.gallery.search(probe)
        vote, _ = engine.frame_match(candidates)
        assert vote is not None and vote.name == "biden"
        with caplog.at_level(logging.INFO, logger="facegate"):
            engine.gallery_changed(10**9)  # far past what the calibration vouches for: fail closed
        assert engine.blocked and "event=false_accept_goal_unmet" in caplog.text
        # a door that now denies everyone says so: the daemon's health (status topic, /health) is degraded
        assert engine.health.snapshot()["parts"]["threshold"]["state"] == "degraded"
        vote, best = engine.frame_match(candidates)
        assert vote is None and best is not None
        engine.gallery_changed(3)
        assert engine.blocked is None and engine.frame_match(candidates)[0] is not None
        assert engine.health.state == "ok"
    finally:
        service.shutdown()
