"""Test-time augmentation ("jitter") for the dlib face recogniser: the descriptor averaged over perturbed chips.

dlib's ``compute_face_descriptor(img, shape, num_jitters)`` (dlib/tools/python/src/face_recognition.cpp) with
``num_jitters > 1`` runs that many copies of the 150×150 face chip through the network and returns the **mean**
descriptor (not re-normalised). Each copy comes from ``jitter_image`` (dlib/image_transforms/interpolation.h,
dlib 20.0.1; ../shared/notes/dlib-models.md §2.5):

* ``rect`` = the chip rectangle shrunk by 3 px: (3, 3)–(146, 146), 144 px wide and high;
* translation (dx, dy) = uniform(−0.02, 0.02) × 144 px per axis, made whole pixels by dlib's ``point``
  conversion, floor(v + 0.5);
* object height ``h`` = uniform(0.97, 0.99999); crop side ``box = long(144 / h)`` px (truncated: 144…148);
* crop rectangle = ``centered_rect(centre(rect) + (dx, dy), box, box)`` with dlib's integer ``centre`` (75, 75);
* rotation = uniform(−3°, 3°) about the crop centre;
* the crop is resampled back to 150×150 by ``extract_image_chip`` (bilinear, black outside);
* with probability 0.5 the copy is mirrored left-right.

dlib's example program (examples/dnn_face_recognition_ex.cpp) attributes its published 99.38 % LFW accuracy to
averaging 100 such copies (99.13 % without).

**Differences from dlib, on purpose:**

1. *Reproducible randomness.* dlib draws from a ``dlib::rand`` member of the model object, so a descriptor depends on
   every earlier call; its sequence cannot be reproduced here. facegate draws the perturbations once per call from
   ``numpy.random.default_rng(seed)`` (``JITTER_SEED`` unless given) and applies the **same** perturbations to every
   face, so a face's jittered descriptor depends only on the image, ``count`` and ``seed`` — not on batch
   composition or call order — which an embedding cache and a comparison of two templates both need. Drawing
   row by row also makes the copies for ``count = n`` a prefix of those for any larger count.
2. *The plain chip and its mirror are always included*: copy 0 is the un-jittered chip (bit-identical to
   ``extract_dlib_chips``), copy 1 its left-right mirror, copies 2… the random ones. So ``count = 2`` is the cheap
   chip + mirror average, and a jittered descriptor never loses the plain view.
3. *One resampling, not two.* dlib samples the chip from the image and then resamples the chip. facegate composes
   the jitter into the chip's rectangle (source-image centre, side and angle) and extracts each copy straight from
   the image with the same chip extractor (``packs/align.py``, dlib's ``extract_image_chip`` incl. its pyramid and
   truncation), so copies are not blurred twice. Against dlib re-sampling the chip with the same rectangles the
   copies differ by ≈ 0.6 grey levels on average (tests/test_jitter.py).

Measured agreement: from the same 5 landmarks, facegate's 30-copy mean descriptor lay 0.022–0.030 (L2) from
``dlib.face_recognition_model_v1.compute_face_descriptor(img, shape, 30)`` on 3 LFW faces, whose plain descriptors
lay 0.10–0.12 from it (dlib's own draws differ from call to call by up to 0.017, notes §2.5).
"""

from __future__ import annotations

import numpy as np

from facegate.packs.align import (
    DLIB_CHIP_PADDING,
    DLIB_CHIP_SIZE,
    dlib_chip_transform,
    extract_dlib_chips,
    extract_image_chip,
)

#: Seed of the perturbations (any fixed value works; this one is documented so results can be reproduced).
JITTER_SEED = 20171218
#: Most copies averaged per face: each copy costs one recogniser run, and face_recognition documents 100 ("100 is
#: 100x slower") as the top of the useful range; more is hours of work on a folder for no measurable gain.
MAX_JITTERS = 100
#: Recipe version, part of evaluation cache keys: bump when the perturbations or their sampling change.
JITTER_RECIPE = "dlib-jitter_image-v1+plain+mirror"

#: dlib ``jitter_image`` constants (dlib/image_transforms/interpolation.h).
MAX_ROTATION_DEGREES = 3.0
MIN_OBJECT_HEIGHT = 0.97
MAX_OBJECT_HEIGHT = 0.99999
TRANSLATE_AMOUNT = 0.02
SHRINK_PX = 3


def effective_count(jitters: int) -> int:
    """Copies actually averaged: 0 (plain descriptor) for ``jitters`` ≤ 1, as dlib's ``num_jitters``; else jitters.

    Raises ``ValueError`` for a negative, non-integer or too large (> ``MAX_JITTERS``) count.
    """
    if isinstance(jitters, bool) or not isinstance(jitters, int | np.integer) or not 0 <= jitters <= MAX_JITTERS:
        raise ValueError(f"jitters must be a whole number from 0 to {MAX_JITTERS}, got {jitters!r}")
    return int(jitters) if jitters >= 2 else 0


def jitter_params(count: int, seed: int = JITTER_SEED, size: int = DLIB_CHIP_SIZE) -> dict[str, np.ndarray]:
    """The ``count`` copies' crop rectangles in chip pixels (dlib ``jitter_image``, see the module docstring).

    Returns a dict of length-``count`` arrays: ``centre`` count×2 float64 (x, y chip px of the crop centre),
    ``side`` float64 (crop side px, inclusive: right − left + 1), ``angle`` float64 (radians), ``flip`` bool.
    Copy 0 is the identity (the whole chip: centre ((size−1)/2, (size−1)/2), side ``size``, angle 0), copy 1 its
    mirror, copies 2… random. Raises ``ValueError`` for count < 1 or a chip smaller than 16 px.
    """
    if count < 1:
        raise ValueError(f"jitter count must be ≥ 1, got {count}")
    if size < 16:
        raise ValueError(f"chip size must be ≥ 16 px for jitter, got {size}")
    rng = np.random.default_rng(seed)
    # One row of 5 uniforms per random copy, drawn in order (prefix-stable across counts).
    u = rng.random((max(count - 2, 0), 5))
    inner = size - 2 * SHRINK_PX  # shrink_rect(get_rect(chip), 3): width = height = size − 6
    # dpoint → point conversion: floor(v + 0.5) (vector_assign_helper in dlib/geometry/vector.h).
    shift = np.floor((TRANSLATE_AMOUNT * (2 * u[:, :2] - 1)) * inner + 0.5)
    height = MIN_OBJECT_HEIGHT + (MAX_OBJECT_HEIGHT - MIN_OBJECT_HEIGHT) * u[:, 2]
    side = np.floor(inner / height)  # const long box_size = rect.height()/rand_scale_perturb
    angle = np.deg2rad(MAX_ROTATION_DEGREES * (2 * u[:, 3] - 1))
    flip = u[:, 4] > 0.5
    # centered_rect(p, w, h): left = p.x − w/2 (integer division), right = left + w − 1; centre(rect) of the
    # shrunk rect = ((3 + (size − 4) + 1)/2) = size//2 in dlib's integer arithmetic.
    mid = size // 2
    left = mid + shift - np.floor(side / 2)[:, None]
    centre = left + (side[:, None] - 1) / 2
    plain = np.full((2, 2), (size - 1) / 2)
    return {
        "centre": np.concatenate([plain, centre]),
        "side": np.concatenate([[float(size), float(size)], side]),
        "angle": np.concatenate([[0.0, 0.0], angle]),
        "flip": np.concatenate([[False, True], flip]),
    }


def jittered_dlib_chips(
    image: np.ndarray, points: np.ndarray, count: int, seed: int = JITTER_SEED,
    size: int = DLIB_CHIP_SIZE, padding: float = DLIB_CHIP_PADDING,
) -> np.ndarray:
    """``count`` jittered dlib face chips per face: N×count×size×size×C uint8 in the image's channel order.

    ``image``: H×W×3 (BGR inside facegate) or H×W uint8; ``points``: N×5×2 (x, y) px in dlib's 5-point order.
    Copy 0 of each face equals ``extract_dlib_chips(image, points)`` bit for bit, copy 1 is its mirror; the other
    copies follow ``jitter_params(count, seed)``: each crop rectangle, given in chip pixels, is mapped through the
    chip's own chip→image similarity (``dlib_chip_transform``) to a rectangle and angle in the image and extracted
    from the image by dlib's ``extract_image_chip`` (``packs/align.py``). Raises ``ValueError`` for bad shapes,
    dtypes or counts.
    """
    plain = extract_dlib_chips(image, points, size=size, padding=padding)  # validates image and points
    params = jitter_params(count, seed, size)
    n = len(plain)
    out = np.empty((n, count) + plain.shape[1:], np.uint8)
    if n == 0:
        return out
    out[:, 0] = plain
    if count > 1:
        out[:, 1] = plain[:, :, ::-1]
    if count <= 2:
        return out
    m = dlib_chip_transform(points, size, padding)  # N×2×3: chip px → image px
    linear, offset = m[:, :, :2], m[:, :, 2]
    step = np.hypot(linear[:, 0, 0], linear[:, 1, 0])  # image px per chip px
    theta = np.arctan2(linear[:, 1, 0], linear[:, 0, 0])
    centres = np.einsum("nij,kj->nki", linear, params["centre"][2:]) + offset[:, None, :]  # N×(count−2)×2
    # The crop's extent (right − left) in image px: (side − 1) chip px of (size·scale − 1)/(size − 1) px each.
    extents = (params["side"][2:] - 1)[None, :] * step[:, None]
    angles = theta[:, None] + params["angle"][2:][None, :]
    flips = params["flip"][2:]
    for i in range(n):
        for k in range(count - 2):
            cx, cy = centres[i, k]
            half = extents[i, k] / 2
            rect = np.array([cx - half, cy - half, cx + half, cy + half])
            chip = extract_image_chip(image, rect, float(angles[i, k]), size)
            out[i, k + 2] = chip[:, ::-1] if flips[k] else chip
    return out


def mean_descriptors(descriptors: np.ndarray, count: int) -> np.ndarray:
    """Average each face's ``count`` consecutive descriptor rows: (N·count)×D → N×D float32 (dlib: plain mean,
    no normalisation). Raises ``ValueError`` when the rows are not a multiple of ``count``."""
    descriptors = np.asarray(descriptors, np.float32)
    if count < 1 or descriptors.ndim != 2 or len(descriptors) % count:
        raise ValueError(f"{descriptors.shape} descriptors are not whole groups of {count} copies")
    return descriptors.reshape(-1, count, descriptors.shape[1]).mean(axis=1, dtype=np.float64).astype(np.float32)


def describe(count: int, seed: int = JITTER_SEED) -> str:
    """A short key for reports and caches, e.g. ``jitters=10 seed=20171218 recipe=…``; ``plain`` for count < 2."""
    if count < 2:
        return "plain"
    return f"jitters={count} seed={seed} recipe={JITTER_RECIPE}"


__all__ = [
    "JITTER_SEED",
    "JITTER_RECIPE",
    "effective_count",
    "jitter_params",
    "jittered_dlib_chips",
    "mean_descriptors",
    "describe",
]
