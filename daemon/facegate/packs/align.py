"""Face alignment: dlib's 150×150 face chips (bit-exact) and the ArcFace 112×112 similarity warp.

Pure functions; the templates are named constants.

**dlib chips** reproduce ``dlib.get_face_chip(img, shape, size, padding)`` = ``get_face_chip_details`` +
``extract_image_chip`` (dlib/image_transforms/interpolation.h, dlib 20.0.1) bit for bit, as the dlib ResNet
descriptor needs (../shared/notes/dlib-models.md §4: skipping the pyramid or rounding instead of truncating moves the
descriptor by up to L2 0.08). Steps, per face:

1. chip points = (padding + template)/(2·padding + 1)·size, with ``padding`` rounded to float32 (it is a C++
   ``float`` in dlib's Python binding);
2. least-squares similarity (Umeyama) chip points → the 5 landmarks; angle θ and scale s of its linear part; the
   chip rectangle is centred on the image of (size/2, size/2) with right − left = size·s − 1;
3. when the rectangle is ≥ ~2× the chip, an image pyramid: crop the rotated rectangle's bounding box grown by
   2, 6, 14 … px (clipped to the image, rounded with floor(v + 0.5)), then repeatedly blur with the 5-tap
   [1 4 6 4 1]² kernel and keep every 2nd pixel (integer sum // 256, output (h − 3)//2 × (w − 3)//2), while the
   rectangle's corners follow p/2 − (1.25, 0.75);
4. bilinear sampling in float64 of the deepest level, **truncated** to uint8; a sample whose 2×2 neighbourhood is
   not fully inside the level is black.

**ArcFace** alignment follows insightface ``python-package/insightface/utils/face_align.py`` (``estimate_norm`` +
``norm_crop``): a similarity transform (Umeyama, as skimage's ``SimilarityTransform.estimate``) from the 5 landmarks
to ``ARCFACE_112_TEMPLATE`` and ``cv2.warpAffine`` (bilinear, border 0).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: dlib's 5-point chip template on the unit square, in dlib's 5-point order (image-right eye outer, inner,
#: image-left eye outer, inner, nose base). Source: ``get_face_chip_details`` in dlib/image_transforms/
#: interpolation.h (dlib 20.0.1); ../shared/notes/dlib-models.md §4.1.
DLIB_5PT_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ],
    dtype=np.float64,
)
#: Chip side (px) and padding used by dlib's face-recognition ResNet (``compute_face_descriptor`` defaults).
DLIB_CHIP_SIZE = 150
DLIB_CHIP_PADDING = 0.25

#: ArcFace 112×112 destination points (x, y px) in facegate's landmark order: eye with the smaller x, eye with the
#: larger x, nose tip, mouth corner with the smaller x, mouth corner with the larger x. Source: ``arcface_dst`` in
#: insightface ``python-package/insightface/utils/face_align.py``; ../shared/models/README.md "Alignment for the
#: recogniser".
ARCFACE_112_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

#: dlib ``pyramid_down<2>`` kernel (1 4 6 4 1)/16 per axis, applied as integers with one // 256 at the end.
_PYRAMID_KERNEL = np.array([1, 4, 6, 4, 1], dtype=np.float32)


def _check_points(points: np.ndarray, name: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (5, 2):
        raise ValueError(f"{name} must be N×5×2 (x, y) px, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return points


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        raise ValueError(f"image must be H×W×3 (or H×W) uint8, got {image.shape} {image.dtype}")
    return image


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping ``src`` to ``dst``.

    Umeyama, "Least-squares estimation of transformation parameters between two point patterns", IEEE PAMI 1991 —
    the method of skimage ``SimilarityTransform.estimate`` and dlib ``find_similarity_transform``. In 2-D its SVD
    solution has the closed form c·R = [[a, −b], [b, a]] with a = (Σ00 + Σ11)/σ², b = (Σ10 − Σ01)/σ² (Σ the
    cross-covariance mean((dst − μ_dst)(src − μ_src)ᵀ), σ² the variance of src), which also covers det Σ < 0.

    ``src``, ``dst``: K×2 or N×K×2 (x, y), K ≥ 2. Returns 2×3 or N×2×3 float64 ``M`` with dst ≈ M[:, :2]·p + M[:, 2].
    Raises ``ValueError`` for mismatched or wrong shapes, non-finite values, or src points that all coincide.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim not in (2, 3) or src.shape[-1] != 2 or src.shape[-2] < 2:
        raise ValueError(f"src must be K×2 or N×K×2 with K ≥ 2, got {src.shape}")
    if dst.shape[-2:] != src.shape[-2:] or dst.ndim not in (2, 3):
        raise ValueError(f"dst shape {dst.shape} does not match src shape {src.shape}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("similarity_transform: points contain NaN or infinite values")
    squeeze = src.ndim == 2 and dst.ndim == 2
    try:
        src_b, dst_b = np.broadcast_arrays(src if src.ndim == 3 else src[None], dst if dst.ndim == 3 else dst[None])
    except ValueError:
        raise ValueError(f"src {src.shape} and dst {dst.shape} have different numbers of point sets") from None
    k = src.shape[-2]
    mean_src = src_b.mean(axis=-2)
    mean_dst = dst_b.mean(axis=-2)
    s = src_b - mean_src[..., None, :]
    d = dst_b - mean_dst[..., None, :]
    var = (s * s).sum(axis=(-1, -2)) / k
    if np.any(var == 0):
        raise ValueError("similarity_transform: all source points coincide")
    cov = np.einsum("...pi,...pj->...ij", d, s) / k
    a = (cov[..., 0, 0] + cov[..., 1, 1]) / var
    b = (cov[..., 1, 0] - cov[..., 0, 1]) / var
    out = np.empty(a.shape + (2, 3))
    out[..., 0, 0] = a
    out[..., 0, 1] = -b
    out[..., 1, 0] = b
    out[..., 1, 1] = a
    out[..., 0, 2] = mean_dst[..., 0] - (a * mean_src[..., 0] - b * mean_src[..., 1])
    out[..., 1, 2] = mean_dst[..., 1] - (b * mean_src[..., 0] + a * mean_src[..., 1])
    return out[0] if squeeze else out


# ---------------------------------------------------------------------------------------------------------------
# dlib face chips


def _chip_details(points: np.ndarray, size: int, padding: float) -> tuple[np.ndarray, np.ndarray]:
    """dlib ``get_face_chip_details`` for 5-point shapes: N×4 float64 rects (l, t, r, b) and N angles (radians)."""
    pad = float(np.float32(padding))
    chip_points = (pad + DLIB_5PT_TEMPLATE) / (2 * pad + 1) * size
    m = similarity_transform(chip_points, points)  # N×2×3, chip → image
    px, py = m[:, 0, 0], m[:, 1, 0]  # linear part applied to (1, 0)
    angle = np.arctan2(py, px)
    scale = np.sqrt(px * px + py * py)
    half = size / 2.0
    cx = (m[:, 0, 0] * half + m[:, 0, 1] * half) + m[:, 0, 2]
    cy = (m[:, 1, 0] * half + m[:, 1, 1] * half) + m[:, 1, 2]
    extent = size * scale - 1  # centered_drect: width − 1
    rects = np.stack([cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2], axis=-1)
    return rects, angle


def _check_size_padding(size: int, padding: float) -> None:
    if not isinstance(size, int | np.integer) or size < 2:
        raise ValueError(f"chip size must be an integer ≥ 2 px, got {size!r}")
    if not (math.isfinite(padding) and padding >= 0):
        raise ValueError(f"padding must be a finite number ≥ 0, got {padding!r}")


def dlib_chip_transform(
    points: np.ndarray, size: int = DLIB_CHIP_SIZE, padding: float = DLIB_CHIP_PADDING
) -> np.ndarray:
    """Affine maps from chip pixels to the source image for dlib face chips (no pyramid; for geometry, not pixels).

    ``points``: N×5×2 (x, y) px in dlib's 5-point order (``ShapePredictor5.predict`` output). Returns N×2×3 float64
    ``M`` with (x, y) = M[:, :2]·(col, row) + M[:, 2] — the closed form of dlib's map: rotation by the chip angle
    about the rectangle centre, step (size·scale − 1)/(size − 1) px per chip pixel (notes §4.1).
    Raises ``ValueError`` for bad shapes, sizes or paddings.
    """
    _check_size_padding(size, padding)
    rects, angle = _chip_details(_check_points(points, "points"), int(size), padding)
    step = (rects[:, 2] - rects[:, 0]) / (size - 1)
    cos, sin = np.cos(angle) * step, np.sin(angle) * step
    cx, cy = (rects[:, 0] + rects[:, 2]) / 2, (rects[:, 1] + rects[:, 3]) / 2
    mid = (size - 1) / 2
    out = np.empty((len(rects), 2, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 0, 2] = cos, -sin, cx - (cos * mid - sin * mid)
    out[:, 1, 0], out[:, 1, 1], out[:, 1, 2] = sin, cos, cy - (sin * mid + cos * mid)
    return out


def _rect_area(rect: tuple[float, float, float, float]) -> float:
    """dlib ``drectangle::area``: (r − l + 1)(b − t + 1), 0 when empty."""
    l, t, r, b = rect
    if t > b or l > r:
        return 0.0
    return (r - l + 1) * (b - t + 1)


def _rect_down(rect: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """``pyramid_down<2>::rect_down``: each corner p → p/2 − (1.25, 0.75)."""
    l, t, r, b = rect
    return (l / 2.0 - 1.25, t / 2.0 - 0.75, r / 2.0 - 1.25, b / 2.0 - 0.75)


def _rotate(cx: float, cy: float, x: float, y: float, cos: float, sin: float) -> tuple[float, float]:
    """dlib ``rotate_point(center, p, angle)``: rot(p − center) + center."""
    dx, dy = x - cx, y - cy
    return (cos * dx - sin * dy) + cx, (sin * dx + cos * dy) + cy


def _pyramid_down(image: np.ndarray) -> np.ndarray:
    """One dlib ``pyramid_down<2>`` level of an H×W×C uint8 image: 5×5 binomial blur then every 2nd pixel."""
    h, w = image.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0) + image.shape[2:], np.uint8)
    oh, ow = (h - 3) // 2, (w - 3) // 2
    # OpenCV's separable filter in float32 is exact here: every product and partial sum is an integer below
    # 255·256 < 2^24. Output pixel (i, j) is the filter centred on (2i + 2, 2j + 2), which never reads the border.
    full = cv2.sepFilter2D(image, cv2.CV_32F, _PYRAMID_KERNEL, _PYRAMID_KERNEL, borderType=cv2.BORDER_CONSTANT)
    out = full[2 : 2 + 2 * oh : 2, 2 : 2 + 2 * ow : 2] * np.float32(1 / 256)  # exact: a power of two
    return out.astype(np.uint8).reshape((oh, ow) + image.shape[2:])  # truncation = floor (values ≥ 0)


def _bilinear(level: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """dlib ``transform_image`` with ``interpolate_bilinear`` and a black background: size×size×C uint8.

    Chip pixel (c, r) samples ``level`` at (m00·c + m01·r + m02, m10·c + m11·r + m12) in float64; the result is
    truncated to uint8; a sample whose 2×2 neighbourhood leaves the level is black.
    """
    grid = np.arange(size, dtype=np.float64)
    cols, rows = grid[None, :], grid[:, None]
    x = (m[0, 0] * cols + m[0, 1] * rows) + m[0, 2]
    y = (m[1, 0] * cols + m[1, 1] * rows) + m[1, 2]
    left = np.floor(x)
    top = np.floor(y)
    h, w = level.shape[:2]
    channels = level.shape[2:]
    inside = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    if not inside.any():
        return np.zeros((size, size) + channels, np.uint8)
    flat = level.reshape(h * w, -1)
    index = np.where(inside, top * w + left, 0).astype(np.intp).ravel()
    # Outside samples read pixel 0's neighbourhood (clipped) and are blacked out below.
    tl = np.take(flat, index, axis=0, mode="clip")
    tr = np.take(flat, index + 1, axis=0, mode="clip")
    bl = np.take(flat, index + w, axis=0, mode="clip")
    br = np.take(flat, index + w + 1, axis=0, mode="clip")
    lr = (x - left).reshape(-1, 1)
    tb = (y - top).reshape(-1, 1)
    # dlib's expression and evaluation order, in float64; the convex combination of uint8 values stays in
    # [0, 255], so the cast truncates exactly like dlib's assign_pixel(unsigned char, double).
    value = (1 - tb) * ((1 - lr) * tl + lr * tr) + tb * ((1 - lr) * bl + lr * br)
    value = value.astype(np.uint8) * inside.reshape(-1, 1)
    return value.reshape((size, size) + channels)


def extract_image_chip(image: np.ndarray, rect: np.ndarray, angle: float, size: int) -> np.ndarray:
    """dlib ``extract_image_chip`` for one ``chip_details`` (dlib/image_transforms/interpolation.h): ``rect`` is
    (left, top, right, bottom) px, inclusive, in the source image; ``angle`` radians; the chip is size×size.
    ``image`` is H×W×C uint8 (any colour order, kept). Returns size×size×C uint8, bit-identical to dlib (the
    pyramid, truncating bilinear sampling and black border of ../shared/notes/dlib-models.md §4.2)."""
    height, width = image.shape[:2]
    l, t, r, b = (float(v) for v in rect)
    if angle == 0 and r - l + 1 == size and b - t + 1 == size:
        return _plain_copy(image, (l, t, r, b), size)
    chip_area = size * size
    depth, grow = 0, 2.0
    down = _rect_down((l, t, r, b))
    while _rect_area(down) > chip_area:
        down = _rect_down(down)
        depth += 1
        grow = grow * 2 + 2
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = (l + r) / 2.0, (t + b) / 2.0
    corners = [_rotate(cx, cy, x, y, cos, sin) for x, y in ((l, t), (r, t), (l, b), (r, b))]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    box = (
        max(min(xs) - grow, 0.0),
        max(min(ys) - grow, 0.0),
        min(max(xs) + grow, float(width - 1)),
        min(max(ys) + grow, float(height - 1)),
    )
    # drectangle → rectangle conversion (floor(v + 0.5)); an empty box leaves dlib's bounding box at (0, 0, −1, −1).
    bl_, bt_, br_, bb_ = (math.floor(v + 0.5) for v in box)
    if bl_ > br_ or bt_ > bb_:
        bl_, bt_, br_, bb_ = 0, 0, -1, -1
    crop = image[max(bt_, 0) : max(bb_ + 1, 0), max(bl_, 0) : max(br_ + 1, 0)]
    level = crop
    for _ in range(depth):
        level = _pyramid_down(level)
    rect2 = (l - bl_, t - bt_, r - bl_, b - bt_)
    while _rect_area(_rect_down(rect2)) > chip_area:
        rect2 = _rect_down(rect2)
    l2, t2, r2, b2 = rect2
    cx2, cy2 = (l2 + r2) / 2.0, (t2 + b2) / 2.0
    tlx, tly = _rotate(cx2, cy2, l2, t2, cos, sin)
    trx, try_ = _rotate(cx2, cy2, r2, t2, cos, sin)
    blx, bly = _rotate(cx2, cy2, l2, b2, cos, sin)
    last = size - 1
    m = np.array([[(trx - tlx) / last, (blx - tlx) / last, tlx], [(try_ - tly) / last, (bly - tly) / last, tly]])
    return _bilinear(level, m, size)


def _plain_copy(image: np.ndarray, rect: tuple[float, float, float, float], size: int) -> np.ndarray:
    """dlib ``basic_extract_image_chip``: an unscaled, unrotated crop with black outside the image."""
    left, top = (math.floor(v + 0.5) for v in rect[:2])
    out = np.zeros((size, size) + image.shape[2:], np.uint8)
    height, width = image.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + size, width), min(top + size, height)
    if x1 > x0 and y1 > y0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return out


def extract_dlib_chips(
    image: np.ndarray, points: np.ndarray, size: int = DLIB_CHIP_SIZE, padding: float = DLIB_CHIP_PADDING
) -> np.ndarray:
    """Aligned face chips bit-identical to ``dlib.get_face_chip(image, shape, size, padding)``, one per face.

    ``image``: H×W×3 uint8 in any channel order (BGR inside facegate; channels are processed independently, so the
    chips keep the input's order) or H×W uint8. ``points``: N×5×2 (x, y) px in dlib's 5-point order, normally whole
    pixels from ``ShapePredictor5.predict``. Returns N×size×size×3 (or N×size×size) uint8. Each face is extracted
    on its own, as dlib's ``compute_face_descriptor(img, shape)`` does (``get_face_chips`` with several faces shares
    one pyramid crop and can differ in the last bit). Raises ``ValueError`` for bad shapes, dtypes, sizes or
    paddings.
    """
    image = _check_image(image)
    points = _check_points(points, "points")
    _check_size_padding(size, padding)
    size = int(size)
    rects, angles = _chip_details(points, size, padding)
    out = np.zeros((len(points), size, size) + image.shape[2:], np.uint8)
    for i in range(len(points)):
        out[i] = extract_image_chip(image, rects[i], float(angles[i]), size)
    return out


# ---------------------------------------------------------------------------------------------------------------
# ArcFace


def arcface_transform(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """N×2×3 float64 similarity maps from image px to the size×size ArcFace crop (insightface ``estimate_norm``).

    ``landmarks``: N×5×2 (x, y) px in facegate's order (``Detections.landmarks``). ``size`` must be a multiple of
    112 (template scaled) or of 128 (template scaled and shifted right by 8·size/128), as in insightface.
    Raises ``ValueError`` for bad shapes or sizes.
    """
    landmarks = _check_points(landmarks, "landmarks")
    if not isinstance(size, int | np.integer) or size <= 0 or (size % 112 and size % 128):
        raise ValueError(f"ArcFace crop size must be a positive multiple of 112 or 128 px, got {size!r}")
    if size % 112 == 0:
        template = ARCFACE_112_TEMPLATE * (size / 112.0)
    else:
        ratio = size / 128.0
        template = ARCFACE_112_TEMPLATE * ratio + np.array([8.0 * ratio, 0.0])
    return similarity_transform(landmarks, np.broadcast_to(template, landmarks.shape))


def arcface_align(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """ArcFace-aligned crops: N×size×size×3 uint8 in the input's channel order (BGR inside facegate).

    Warps with ``cv2.warpAffine`` (bilinear, constant border 0) by ``arcface_transform`` — insightface
    ``norm_crop``. ``image``: H×W×3 uint8; ``landmarks``: N×5×2 px in facegate's order. Raises ``ValueError``
    for bad shapes, dtypes or sizes.
    """
    image = _check_image(image)
    matrices = arcface_transform(landmarks, size)
    out = np.zeros((len(matrices), size, size) + image.shape[2:], np.uint8)
    for i, m in enumerate(matrices):
        crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
        out[i] = crop.reshape(out.shape[1:])
    return out
