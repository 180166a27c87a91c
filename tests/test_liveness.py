"""Liveness (PAD) with the MiniFASNet pair: the crop against a transcription of upstream ``CropImage``, the fusion
against upstream ``test.py``, EXIF-rotated photos read upright, APCER/BPCER (ISO/IEC 30107-3) on
../shared/data/antispoof, bad manifests, and the ``facegate liveness`` command.

The antispoof set is small (21 photos: 8 bona fide, 13 attacks of which one is a deepfake, not a presentation
attack). Run ``pytest tests/test_liveness.py -s`` to print the per-image table behind README's figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_util import assert_user_error, run_cli
from conftest import need_shared

from facegate.detections import Detections
from facegate.errors import ModelError
from facegate.imaging import load_image
from facegate.packs.liveness import LivenessFusion, LivenessModel, crop_faces, minifasnet_crop_boxes
from facegate.packs.manifest import LivenessSpec, load_manifest, source_path
from facegate.packs.registry import detector_class

PACK = "retinaface-mobilefacenet"
DETECTOR_PACKS = ["retinaface-mobilefacenet", "yunet-mobilefacenet", "yunet-n-mobilefacenet", "scrfd-mobilefacenet"]
#: Attacks MiniFASNet accepts as live with every detector here (measured 2026-11-30; README "Liveness (PAD)"):
#: a monitor recapture at high resolution, a tiny recapture with no bezel, and a realistic full-face mask.
KNOWN_MISSED_ATTACKS = {"spoof/trueface_spoof.jpg", "spoof/nuhin13_fake_1.jpg", "spoof/disguise/doubango_disguise.jpg"}


def _reference_box(src_w, src_h, bbox, scale):
    """Upstream ``CropImage._get_new_box`` (minivision-ai/Silent-Face-Anti-Spoofing src/generate_patches.py)."""
    x, y, box_w, box_h = bbox
    scale = min((src_h - 1) / box_h, min((src_w - 1) / box_w, scale))
    new_width, new_height = box_w * scale, box_h * scale
    center_x, center_y = box_w / 2 + x, box_h / 2 + y
    left_top_x, left_top_y = center_x - new_width / 2, center_y - new_height / 2
    right_bottom_x, right_bottom_y = center_x + new_width / 2, center_y + new_height / 2
    if left_top_x < 0:
        right_bottom_x -= left_top_x
        left_top_x = 0
    if left_top_y < 0:
        right_bottom_y -= left_top_y
        left_top_y = 0
    if right_bottom_x > src_w - 1:
        left_top_x -= right_bottom_x - src_w + 1
        right_bottom_x = src_w - 1
    if right_bottom_y > src_h - 1:
        left_top_y -= right_bottom_y - src_h + 1
        right_bottom_y = src_h - 1
    return int(left_top_x), int(left_top_y), int(right_bottom_x), int(right_bottom_y)


def _model_paths(manifest) -> list[Path]:
    return [source_path(m.source, manifest.manifest_path) for m in manifest.liveness.models]


@pytest.fixture(scope="module")
def fusion() -> LivenessFusion:
    need_shared("models", "antispoof")
    manifest = load_manifest(PACK)
    return LivenessFusion(manifest.liveness, _model_paths(manifest), threads=1)


@pytest.fixture(scope="module")
def detectors():
    need_shared("models", "detection")
    out = {}
    for name in DETECTOR_PACKS:
        manifest = load_manifest(name)
        cls = detector_class(manifest.detector.kind)
        out[name] = cls(source_path(manifest.detector.source, manifest.manifest_path), manifest.detector, threads=1)
    return out


def test_crop_boxes_match_upstream_crop_image():
    rng = np.random.default_rng(7)
    for _ in range(300):
        width, height = int(rng.integers(60, 1500)), int(rng.integers(60, 1500))
        # Quarter-pixel coordinates, so that x2 − x1 gives back w exactly (no float rounding between the two forms).
        w, h = np.round(rng.uniform(5, width) * 4) / 4, np.round(rng.uniform(5, height) * 4) / 4
        x = np.round(rng.uniform(-w / 3, width - w / 2) * 4) / 4
        y = np.round(rng.uniform(-h / 3, height - h / 2) * 4) / 4
        for scale in (2.7, 4.0, 1.0):
            ours = minifasnet_crop_boxes(np.array([[x, y, x + w, y + h]]), width, height, scale)[0]
            assert tuple(ours.tolist()) == _reference_box(width, height, (x, y, w, h), scale)


def test_crop_is_resized_inclusive_range():
    image = np.arange(100 * 120 * 3, dtype=np.uint32).reshape(100, 120, 3).astype(np.uint8)
    box = np.array([[40.0, 30.0, 60.0, 50.0]])
    x1, y1, x2, y2 = minifasnet_crop_boxes(box, 120, 100, 2.0)[0]
    patch = crop_faces(image, box, 2.0, (x2 - x1 + 1, y2 - y1 + 1))[0]
    np.testing.assert_array_equal(patch, image[y1 : y2 + 1, x1 : x2 + 1])  # same size: resize is the identity


def test_fusion_is_the_mean_of_both_softmaxes(fusion):
    """Upstream test.py: prediction = softmax(V2) + softmax(V1SE); live score = prediction[1] / 2."""
    image = load_image(need_shared("data", "antispoof", "spoof", "silentface_image_F1.jpg"))
    dets = Detections(np.array([[110.0, 150.0, 300.0, 400.0], [10.0, 10.0, 200.0, 260.0]]), np.ones(2),
                      np.zeros((2, 5, 2)))
    expected = np.zeros(2)
    for model in fusion.models:
        x1, y1, x2, y2 = minifasnet_crop_boxes(dets.boxes, image.shape[1], image.shape[0], model.spec.crop_scale)[1]
        patch = cv2.resize(image[y1 : y2 + 1, x1 : x2 + 1], (80, 80)).transpose(2, 0, 1)[None].astype(np.float32)
        logits = model.session.run(None, {model.input_name: patch})[0][0]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        expected[1] += probs[1] / 2
        expected[0] += model.live_probability(image, dets[0])[0] / 2
    np.testing.assert_allclose(fusion.score(image, dets), expected, atol=1e-5)


def test_degenerate_box_fails_closed_and_no_face_gives_nothing(fusion):
    image = np.full((200, 200, 3), 128, np.uint8)
    dets = Detections(np.array([[50.0, 50.0, 50.0, 90.0]]), np.ones(1), np.zeros((1, 5, 2)))
    assert fusion.score(image, dets).tolist() == [0.0]
    assert fusion.score(image, Detections.empty()).shape == (0,)


@pytest.mark.parametrize("name", ["live/silentface_image_T1.jpg", "live/trueface_real.jpg"])
def test_exif_rotated_photos_are_read_upright(detectors, name):
    """T1 is stored 640×480 with EXIF Orientation=6 (upright 480 wide, 640 high); trueface_real is stored upside
    down with Orientation=3. Upright means the eyes lie above the mouth."""
    image = load_image(need_shared("data", "antispoof", name))
    if name.endswith("T1.jpg"):
        assert image.shape[:2] == (640, 480)
    dets = detectors[PACK].detect([image])[0]
    assert len(dets) == 1
    eyes_y, mouth_y = dets.landmarks[0, :2, 1].mean(), dets.landmarks[0, 3:, 1].mean()
    assert eyes_y < mouth_y


def _antispoof_images(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): load_image(p) for p in sorted(root.rglob("*"))
            if p.suffix.lower() in (".jpg", ".png")}


def _evaluate(detector, fusion, images: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Per image the presented face is the largest detected face; no face → the attack is not accepted (a door would
    not grant) and a bona fide photo is rejected. Returns live probability per image (None when no face)."""
    scores: dict[str, float | None] = {}
    for key, image in images.items():
        dets = detector.detect([image])[0]
        if not len(dets):
            scores[key] = None
            continue
        largest = int(np.argmax(dets.widths * (dets.boxes[:, 3] - dets.boxes[:, 1])))
        scores[key] = float(fusion.score(image, dets[largest])[0])
    return scores


def pad_metrics(scores: dict[str, float | None], threshold: float) -> dict[str, tuple[int, int]]:
    """ISO/IEC 30107-3 counts per group: (errors, presentations). BPCER errors are bona fide photos classified as
    attacks (no face counts as an error); APCER errors are attacks classified as bona fide, per PAI species."""
    groups: dict[str, list[bool]] = {}
    for key, score in scores.items():
        live = score is not None and score >= threshold
        if key.startswith("live/"):
            groups.setdefault("bpcer", []).append(not live)
        else:
            species = key.split("/")[1] if key.count("/") == 2 else "unspecified"
            groups.setdefault(f"apcer_{species}", []).append(live)
    return {k: (sum(v), len(v)) for k, v in groups.items()}


@pytest.fixture(scope="module")
def antispoof_scores(detectors, fusion):
    images = _antispoof_images(need_shared("data", "antispoof"))
    assert len(images) == 21
    return {name: _evaluate(det, fusion, images) for name, det in detectors.items()}


def test_apcer_bpcer_on_the_antispoof_set(antispoof_scores, fusion):
    """Bona fide photos all pass; of the 11 print/replay-type attacks at most the 2 known misses pass."""
    for name, scores in antispoof_scores.items():
        m = pad_metrics(scores, fusion.threshold)
        print(f"\n{name}: " + ", ".join(f"{k} {e}/{n}" for k, (e, n) in sorted(m.items())))
        for key, score in scores.items():
            print(f"   {key:45s} {'no face' if score is None else f'{score:.3f}'}")
        assert m["bpcer"] == (0, 8), (name, m)
        errors = m["apcer_unspecified"][0] + m["apcer_replay"][0]
        assert m["apcer_unspecified"][1] + m["apcer_replay"][1] == 11
        assert errors <= 2, (name, m)
        missed = {k for k, s in scores.items() if not k.startswith("live/") and s is not None and s >= 0.5}
        assert missed - {"spoof/deepfake/doubango_deepfake.jpg"} <= KNOWN_MISSED_ATTACKS, (name, missed)


@pytest.mark.parametrize("attack", sorted(KNOWN_MISSED_ATTACKS))
def test_known_missed_attacks_are_reported_not_hidden(antispoof_scores, fusion, attack):
    """Strict expected failure: these attacks pass as live today with every detector (README says so). If that
    changes, this test fails so that KNOWN_MISSED_ATTACKS and README's table are updated."""
    scores = [s[attack] for s in antispoof_scores.values()]
    if all(s is not None and s >= fusion.threshold for s in scores):
        pytest.xfail(f"{attack}: MiniFASNet scores it live ({', '.join(f'{s:.2f}' for s in scores)}); see README")
    pytest.fail(f"{attack} is no longer accepted by every detector (scores {scores}); update KNOWN_MISSED_ATTACKS "
                "and README 'Liveness (PAD)'")


def test_liveness_entry_pointing_at_a_detector_fails_at_load_naming_the_file():
    need_shared("models", "detection")
    wrong = need_shared("models", "detection", "retinaface_mv1_0.25.onnx")
    spec = LivenessSpec.model_validate(
        {"models": [{"source": {"file": str(wrong)}, "sha256": "0" * 64, "crop_scale": 2.7}]}
    )
    with pytest.raises(ModelError) as err:
        LivenessFusion(spec, [wrong])
    assert "liveness model" in str(err.value) and "retinaface_mv1_0.25.onnx" in str(err.value)
    assert "3 outputs" in str(err.value)


def test_liveness_input_size_and_model_count_mismatch(fusion):
    spec = fusion.spec
    path = _model_paths(load_manifest(PACK))[0]
    bad = spec.models[0].model_copy(update={"input_size": (112, 112)})
    with pytest.raises(ModelError, match=r"2.7_80x80_MiniFASNetV2.onnx.*height 80, the manifest expects 112"):
        LivenessModel(path, bad)
    with pytest.raises(ModelError, match="lists 2 models but 1 files"):
        LivenessFusion(spec, [path])


def test_cli_prints_live_and_spoof(tmp_path):
    live = need_shared("data", "antispoof", "live", "silentface_image_T1.jpg")
    spoof = need_shared("data", "antispoof", "spoof", "silentface_image_F2.jpg")
    result = run_cli("liveness", str(live), str(spoof), env={"FACEGATE_CACHE_DIR": str(tmp_path)})
    assert result.code == 0, result.stderr
    out = result.json()
    assert [len(item["faces"]) for item in out] == [1, 1]
    assert out[0]["faces"][0]["decision"] == "live" and out[0]["faces"][0]["live_score"] > 0.9
    assert out[1]["faces"][0]["decision"] == "spoof" and out[1]["faces"][0]["live_score"] < 0.1
    assert out[0]["width"] == 480 and out[0]["height"] == 640  # EXIF applied
    assert out[0]["pack"] == PACK and out[0]["threshold"] == 0.5
    json.dumps(out)


def test_cli_errors(tmp_path):
    live = need_shared("data", "antispoof", "live", "silentface_image_T1.jpg")
    env = {"FACEGATE_CACHE_DIR": str(tmp_path)}
    assert_user_error(run_cli("liveness", str(live), "--pack", "default", env=env), "no liveness block", code=2)
    assert_user_error(run_cli("liveness", str(live), "--threshold", "2", env=env), "--threshold", code=2)
    assert_user_error(run_cli("liveness", str(tmp_path / "absent.jpg"), env=env), "absent.jpg", code=1)
