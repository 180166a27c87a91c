"""Alignment: dlib face chips bit-identical to dlib-bin's ``get_face_chip``; ArcFace similarity warp geometry."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import need_dlib, need_shared
from test_dlib_landmarks import hog_boxes, lfw_images

from facegate.packs.align import (
    ARCFACE_112_TEMPLATE,
    DLIB_5PT_TEMPLATE,
    arcface_align,
    arcface_transform,
    dlib_chip_transform,
    extract_dlib_chips,
    similarity_transform,
)
from facegate.packs.dlib_landmarks import default_model_path

CHIP_IMAGES = [
    ("single", "obama-1080p.jpg"),  # large face: pyramid
    ("edge_cases", "Tom_Cruise_avp_2014_4.jpg"),  # very large close-up: deeper pyramid
    ("single", "obama-240p.jpg"),  # small face: chip larger than the face
    ("single", "obama_small.jpg"),
    ("knn_examples", "test", "kit_with_rose.jpg"),
    ("multi", "2008_002079.jpg"),  # six small faces
]


@pytest.fixture(scope="module")
def dlib_ref():
    dlib = need_dlib()
    return dlib, dlib.shape_predictor(str(default_model_path()))


@pytest.fixture(scope="module")
def faces(dlib_ref) -> list[tuple[str, np.ndarray, list]]:
    """(name, BGR image, [dlib full_object_detection per HOG face]) for the chip images and 8 LFW images."""
    dlib, sp = dlib_ref
    paths = [need_shared("data", "enroll_examples", *parts) for parts in CHIP_IMAGES] + lfw_images(8)
    out = []
    for path in paths:
        image, boxes = hog_boxes(path)
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        out.append((path.name, image, [sp(rgb, dlib.rectangle(*map(int, b))) for b in boxes]))
    assert sum(len(shapes) for _, _, shapes in out) >= 20
    return out


def shape_points(shape) -> np.ndarray:
    return np.array([[p.x, p.y] for p in shape.parts()], np.float64)


def dlib_shape(dlib, points: np.ndarray):
    return dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), [dlib.point(int(x), int(y)) for x, y in points])


def assert_chips_equal(dlib, image: np.ndarray, points: np.ndarray, size: int, padding: float, what: str) -> None:
    rgb = np.ascontiguousarray(image[:, :, ::-1])
    ours = extract_dlib_chips(image, points, size=size, padding=padding)  # BGR in, BGR out
    assert ours.shape == (len(points), size, size, 3) and ours.dtype == np.uint8
    for i, p in enumerate(points):
        theirs = dlib.get_face_chip(rgb, dlib_shape(dlib, p), size=size, padding=padding)
        mine = ours[i, :, :, ::-1]
        if not np.array_equal(mine, theirs):
            diff = np.abs(mine.astype(int) - theirs)
            count, worst = np.count_nonzero(diff), diff.max()
            pytest.fail(f"{what} face {i} size {size} padding {padding}: {count} values differ, max {worst}")


def pyramid_scale(points: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Source px per chip px (about 2 or more means dlib samples from a pyramid level)."""
    m = dlib_chip_transform(points, size, padding)
    return np.hypot(m[:, 0, 0], m[:, 1, 0])


def test_chips_bit_identical_to_dlib_on_real_faces(dlib_ref, faces) -> None:
    dlib, _ = dlib_ref
    scales = []
    for name, image, shapes in faces:
        if not shapes:
            continue
        points = np.stack([shape_points(s) for s in shapes])
        assert_chips_equal(dlib, image, points, 150, 0.25, name)
        scales.extend(pyramid_scale(points))
    # The set must exercise direct sampling and the pyramid (used above ~1.99 source px per chip px at 150 px;
    # obama-1080p is at 1.98 here and needs it at the smaller chip sizes of the next test, Tom Cruise at 3.5).
    assert min(scales) < 1.0 and max(scales) > 3.0, scales


def test_chips_other_sizes_and_paddings(dlib_ref, faces) -> None:
    dlib, _ = dlib_ref
    names = ("obama-1080p.jpg", "Tom_Cruise_avp_2014_4.jpg", "obama_small.jpg")
    chosen = [(n, im, s) for n, im, s in faces if n in names]
    assert len(chosen) == 3
    for name, image, shapes in chosen:
        points = np.stack([shape_points(s) for s in shapes])
        for size, padding in [(112, 0.1), (200, 0.4), (150, 0.0), (80, 0.33), (224, 0.25)]:
            assert_chips_equal(dlib, image, points, size, padding, name)


def test_chips_for_random_similarity_perturbations(dlib_ref, faces) -> None:
    """Chip scales 0.15–10 source px per chip px (pyramid depth 0–3), rotation ±70°, shifts that put some chips
    partly or wholly outside the image."""
    dlib, _ = dlib_ref
    rng = np.random.default_rng(11)
    for name, image, shapes in faces[:3]:
        base = shape_points(shapes[0])
        centre = base.mean(axis=0)
        base_scale = pyramid_scale(base[None])[0]
        height, width = image.shape[:2]
        variants = []
        for target in np.geomspace(0.15, 10, 14):
            angle = np.radians(rng.uniform(-70, 70))
            scale = target * np.exp(rng.uniform(-0.1, 0.1)) / base_scale
            rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            shift = rng.uniform(-0.6, 0.6, 2) * (width, height)
            variants.append(np.round((base - centre) @ rot.T + centre + shift))
        assert_chips_equal(dlib, image, np.stack(variants), 150, 0.25, f"{name} perturbed")
        assert pyramid_scale(np.stack(variants)).max() > 8  # two or more pyramid levels


def test_grey_chips_match_colour_chips(faces) -> None:
    name, image, shapes = faces[0]
    points = np.stack([shape_points(s) for s in shapes])
    grey = image[:, :, 1].copy()
    chips = extract_dlib_chips(grey, points)
    assert chips.shape == (len(points), 150, 150)
    np.testing.assert_array_equal(chips, extract_dlib_chips(np.dstack([grey] * 3), points)[..., 0])


def test_dlib_chip_transform_maps_template_to_landmarks() -> None:
    """For landmarks that are an exact similarity image of the chip template, the chip → image map sends the
    template points onto the landmarks. dlib centres the chip's pixel grid on the rectangle (pixel (size − 1)/2 ↔
    template coordinate size/2, so pixel u ↔ template u + 0.5) and steps (size·s − 1)/(size − 1) px, not s: the
    template point at pixel position (template − 0.5) lands within a fraction of a pixel."""
    chip_points = (0.25 + DLIB_5PT_TEMPLATE) / 1.5 * 150
    angle, scale, shift = np.radians(17.0), 1.7, np.array([412.0, 230.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = chip_points @ rot.T + shift
    m = dlib_chip_transform(landmarks[None])[0]
    mapped = (chip_points - 0.5) @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - landmarks).max() < 0.5
    np.testing.assert_allclose(np.degrees(np.arctan2(m[1, 0], m[0, 0])), 17.0, atol=1e-9)


def test_chip_arguments_are_checked() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    points = np.tile(DLIB_5PT_TEMPLATE * 50 + 25, (1, 1, 1))
    for bad in (points[0], points[:, :4], np.full((1, 5, 2), np.nan)):
        with pytest.raises(ValueError):
            extract_dlib_chips(image, bad)
    with pytest.raises(ValueError):
        extract_dlib_chips(image.astype(np.float32), points)
    with pytest.raises(ValueError):
        extract_dlib_chips(image, points, size=1)
    with pytest.raises(ValueError):
        extract_dlib_chips(image, points, padding=-0.1)
    assert extract_dlib_chips(image, points[:0]).shape == (0, 150, 150, 3)


# ----------------------------------------------------------------------------------------------------- ArcFace


def random_similarity(rng: np.random.Generator) -> np.ndarray:
    angle = np.radians(rng.uniform(-40, 40))
    scale = rng.uniform(0.5, 4)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([rot, rng.uniform(50, 400, (2, 1))])


def test_similarity_transform_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 100, (7, 2))
    m = random_similarity(rng)
    np.testing.assert_allclose(similarity_transform(src, src @ m[:, :2].T + m[:, 2]), m, atol=1e-9)
    batch = similarity_transform(np.stack([src, src]), np.stack([src, src * 2]))
    assert batch.shape == (2, 2, 3)
    np.testing.assert_allclose(batch[1, :, :2], 2 * np.eye(2), atol=1e-12)


def test_similarity_transform_never_reflects() -> None:
    src = ARCFACE_112_TEMPLATE
    mirrored = src * [-1, 1]
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((5, 2)), src)  # all source points coincide
    with pytest.raises(ValueError):
        similarity_transform(src, src[:4])


def test_arcface_landmarks_land_on_the_template() -> None:
    rng = np.random.default_rng(5)
    for size, template in [
        (112, ARCFACE_112_TEMPLATE),
        (224, ARCFACE_112_TEMPLATE * 2),
        (128, ARCFACE_112_TEMPLATE * (128 / 128) + [8.0, 0.0]),
    ]:
        forward = np.stack([random_similarity(rng) for _ in range(6)])  # template → image
        landmarks = np.einsum("nij,kj->nki", forward[:, :, :2], template) + forward[:, None, :, 2]
        landmarks = landmarks + rng.normal(0, 0.3, landmarks.shape)  # detector noise
        m = arcface_transform(landmarks, size)
        aligned = np.einsum("nij,nkj->nki", m[:, :, :2], landmarks) + m[:, None, :, 2]
        assert np.abs(aligned - template).max() < 1.0, size


def test_arcface_align_puts_marked_points_on_the_template() -> None:
    """Bright dots drawn at the landmarks of a synthetic image end up at the template points of the crop."""
    rng = np.random.default_rng(9)
    forward = random_similarity(rng)
    forward[:, :2] *= 3.0 / np.sqrt(abs(np.linalg.det(forward[:, :2])))  # face 3× the crop size
    landmarks = ARCFACE_112_TEMPLATE @ forward[:, :2].T + forward[:, 2]
    image = np.zeros((800, 800, 3), np.uint8)
    yy, xx = np.mgrid[:800, :800]
    for k, (x, y) in enumerate(landmarks):
        image[(xx - x) ** 2 + (yy - y) ** 2 <= 16] = (40 * (k + 1), 255, 0)
    crop = arcface_align(image, landmarks[None])[0]
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for k, (tx, ty) in enumerate(ARCFACE_112_TEMPLATE):
        window = np.zeros(crop.shape[:2], bool)
        window[int(ty) - 4 : int(ty) + 5, int(tx) - 4 : int(tx) + 5] = True
        weight = crop[..., 1].astype(float) * window
        cy = (weight * np.arange(112)[:, None]).sum() / weight.sum()
        cx = (weight * np.arange(112)[None, :]).sum() / weight.sum()
        assert np.hypot(cx - tx, cy - ty) < 1.0, (k, cx, cy, tx, ty)
    assert crop[0, 0].tolist() == [0, 0, 0]


def test_arcface_bad_shapes_raise_value_error() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    good = ARCFACE_112_TEMPLATE[None]
    for bad in (ARCFACE_112_TEMPLATE, good[:, :4], np.zeros((1, 5, 3)), np.full((1, 5, 2), np.inf)):
        with pytest.raises(ValueError):
            arcface_align(image, bad)
    with pytest.raises(ValueError):
        arcface_align(image.astype(np.float64), good)
    with pytest.raises(ValueError):
        arcface_align(image, good, size=100)
    assert arcface_align(image, good[:0]).shape == (0, 112, 112, 3)
