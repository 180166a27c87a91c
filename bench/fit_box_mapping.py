"""Fit the RetinaFace box → dlib HOG rectangle mapping used by ``facegate.packs.box_mapping``.

dlib's 5-point shape predictor was trained on boxes from dlib's HOG frontal-face detector (square, centred a little
lower than RetinaFace's boxes, ../shared/notes/dlib-models.md §8). This script runs both detectors on LFW
deep-funneled images (../shared/data/lfw/lfw-deepfunneled, 250×250), pairs the faces both find (IoU ≥ 0.3, one
pair per image: the HOG face nearest the image centre) and fits, with (cx, cy, w, h) the RetinaFace box and
(lx, ly) the centroid of its 5 landmarks:

* ``side = SIDE_PER_WIDTH·w + SIDE_PER_HEIGHT·h`` (least squares without intercept; the width-only median ratio is
  printed for comparison),
* box only: ``centre = (cx + SHIFT_X_PER_WIDTH·w, cy + SHIFT_Y_PER_HEIGHT·h)`` (medians of per-face ratios),
* with landmarks: ``centre = (lx + LM_SHIFT_X_PER_WIDTH·w, ly + LM_SHIFT_Y_PER_HEIGHT·h)`` (medians).

Each image is first resized by a reproducible random factor, log-uniform in [1/1.44, 1.44]: HOG reports only a
few discrete box sides (its pyramid steps by 6/5) and LFW faces are all about the same size, so without this the
fitted scale would be whichever pyramid level LFW's face size happens to hit.

It prints the constants and the agreement on a held-out half and on LFW at its native scale:

* IoU of the mapped rect with the HOG rect (median, p10, p90);
* the shape predictor's 5 points on the mapped rect vs on the HOG rect (dlib's own predictor), mean point
  distance over the inter-ocular distance (median, p90) — what the mapping is for;
* with ``--descriptors N``: the distance between dlib's descriptors via the mapped rect and via the HOG rect.

dlib-bin is used here as the reference only. Run: ``python bench/fit_box_mapping.py [--images 800]``
(≈ 3 min on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facegate.imaging import load_image
from facegate.packs.box_mapping import dlib_rect_from_detection, rect_to_xyxy
from facegate.packs.manifest import load_manifest
from facegate.packs.nms import iou_matrix
from facegate.packs.retinaface import RetinaFaceDetector

REPO = Path(__file__).resolve().parents[1]
LFW = REPO.parent / "shared" / "data" / "lfw" / "lfw-deepfunneled"
SEED = 20261130
JITTER = 1.2**2  # two HOG pyramid steps either way


@dataclass
class Pairs:
    """Matched faces: RetinaFace boxes P×4 and landmarks P×5×2, HOG boxes P×4 (x1 y1 x2 y2, exclusive edges;
    dlib rect (l, t, r, b) ↦ (l, t, r+1, b+1)), and how to rebuild each image (path, resize factor)."""

    rf: np.ndarray
    lm: np.ndarray
    hog: np.ndarray
    paths: list[Path]
    factors: np.ndarray

    def take(self, idx: np.ndarray) -> Pairs:
        return Pairs(self.rf[idx], self.lm[idx], self.hog[idx], [self.paths[i] for i in idx], self.factors[idx])


def lfw_sample(count: int) -> list[Path]:
    """Every k-th image of the sorted LFW tree, so the sample spreads over identities and is reproducible."""
    files = sorted(LFW.glob("*/*.jpg"))
    step = max(1, len(files) // count)
    return files[::step][:count]


def load_scaled(path: Path, factor: float) -> np.ndarray:
    image = load_image(path)
    if factor != 1:
        image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    return image


def collect_pairs(files: list[Path], detector: RetinaFaceDetector, jitter: bool) -> Pairs:
    """Run HOG (1 upsample) and RetinaFace on each (optionally resized) image and match their faces."""
    import dlib

    hog = dlib.get_frontal_face_detector()
    rng = np.random.default_rng(SEED)
    factors = np.exp(rng.uniform(-np.log(JITTER), np.log(JITTER), len(files))) if jitter else np.ones(len(files))
    rf, lm, hb_all, paths, used = [], [], [], [], []
    for path, factor in zip(files, factors, strict=True):
        image = load_scaled(path, factor)
        rects = hog(np.ascontiguousarray(image[..., ::-1]), 1)
        if not len(rects):
            continue
        dets = detector.detect([image])[0]
        if not len(dets):
            continue
        hb = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float64)
        centre = np.array(image.shape[1::-1], np.float64) / 2
        h_idx = int(np.argmin(np.linalg.norm((hb[:, :2] + hb[:, 2:]) / 2 - centre, axis=1)))
        ious = iou_matrix(hb[h_idx : h_idx + 1], dets.boxes)[0]
        r_idx = int(np.argmax(ious))
        if ious[r_idx] < 0.3:
            continue
        rf.append(dets.boxes[r_idx])
        lm.append(dets.landmarks[r_idx])
        hb_all.append(hb[h_idx])
        paths.append(path)
        used.append(factor)
    return Pairs(np.array(rf, np.float64), np.array(lm, np.float64), np.array(hb_all), paths, np.array(used))


def fit(p: Pairs) -> dict[str, float]:
    """Constants of the mapping (see module docstring) from matched faces."""
    w, h = p.rf[:, 2] - p.rf[:, 0], p.rf[:, 3] - p.rf[:, 1]
    box_c = (p.rf[:, :2] + p.rf[:, 2:]) / 2
    lm_c = p.lm.mean(axis=1)
    side = ((p.hog[:, 2] - p.hog[:, 0]) + (p.hog[:, 3] - p.hog[:, 1])) / 2
    hog_c = (p.hog[:, :2] + p.hog[:, 2:]) / 2
    (a, b), *_ = np.linalg.lstsq(np.stack([w, h], axis=1), side, rcond=None)
    return {
        "side_per_width_only": float(np.median(side / w)),
        "side_per_width": float(a),
        "side_per_height": float(b),
        "shift_x_per_width": float(np.median((hog_c[:, 0] - box_c[:, 0]) / w)),
        "shift_y_per_height": float(np.median((hog_c[:, 1] - box_c[:, 1]) / h)),
        "lm_shift_x_per_width": float(np.median((hog_c[:, 0] - lm_c[:, 0]) / w)),
        "lm_shift_y_per_height": float(np.median((hog_c[:, 1] - lm_c[:, 1]) / h)),
    }


def mapped_rects(p: Pairs, c: dict[str, float], model: str) -> np.ndarray:
    """dlib rects (N×4 int64) for one of the models: raw, width-only, box, landmarks."""
    if model == "raw":
        return np.floor(p.rf + 0.5).astype(np.int64) - np.array([0, 0, 1, 1])
    if model == "landmarks":
        return dlib_rect_from_detection(
            p.rf, p.lm, side_per_width=c["side_per_width"], side_per_height=c["side_per_height"],
            shift_x_per_width=c["lm_shift_x_per_width"], shift_y_per_height=c["lm_shift_y_per_height"],
        )
    width_only = model == "width-only"
    return dlib_rect_from_detection(
        p.rf,
        side_per_width=c["side_per_width_only"] if width_only else c["side_per_width"],
        side_per_height=0.0 if width_only else c["side_per_height"],
        shift_x_per_width=c["shift_x_per_width"], shift_y_per_height=c["shift_y_per_height"],
    )


def landmark_error(p: Pairs, rects: np.ndarray, predictor) -> np.ndarray:
    """Per face: mean distance between dlib's 5 points on ``rects`` and on the HOG rect, / inter-ocular distance."""
    import dlib

    errors = np.empty(len(rects))
    for i, (path, factor) in enumerate(zip(p.paths, p.factors, strict=True)):
        rgb = np.ascontiguousarray(load_scaled(path, factor)[..., ::-1])
        l, t, r, b = (int(v) for v in p.hog[i])
        ref = predictor(rgb, dlib.rectangle(l, t, r - 1, b - 1))
        got = predictor(rgb, dlib.rectangle(*(int(v) for v in rects[i])))
        ref_pts = np.array([[q.x, q.y] for q in ref.parts()], np.float64)
        got_pts = np.array([[q.x, q.y] for q in got.parts()], np.float64)
        iod = np.linalg.norm(ref_pts[[0, 1]].mean(0) - ref_pts[[2, 3]].mean(0))
        errors[i] = np.linalg.norm(got_pts - ref_pts, axis=1).mean() / max(iod, 1.0)
    return errors


def descriptor_distance(p: Pairs, rects: np.ndarray, predictor, net, limit: int) -> np.ndarray:
    """Per face (first ``limit``): Euclidean distance between dlib's descriptor via the mapped rect and via the
    HOG rect (dlib's own pipeline: shape predictor → 150×150 chip → ResNet), in dlib's descriptor space."""
    import dlib

    out = []
    for i in range(min(limit, len(rects))):
        rgb = np.ascontiguousarray(load_scaled(p.paths[i], p.factors[i])[..., ::-1])
        l, t, r, b = (int(v) for v in p.hog[i])
        ref = np.array(net.compute_face_descriptor(rgb, predictor(rgb, dlib.rectangle(l, t, r - 1, b - 1))))
        got = np.array(net.compute_face_descriptor(rgb, predictor(rgb, dlib.rectangle(*(int(v) for v in rects[i])))))
        out.append(np.linalg.norm(got - ref))
    return np.array(out)


def main() -> None:
    import dlib
    import face_recognition_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800, help="LFW images to try (default 800)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--descriptors", type=int, default=0,
                        help="also compare dlib descriptors on the first N native-scale faces (≈ 0.25 s per face)")
    args = parser.parse_args()
    from retinaface.weights import WEIGHTS

    detector = RetinaFaceDetector(WEIGHTS, load_manifest("default").detector, threads=args.threads)
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    files = lfw_sample(args.images)
    t0 = time.perf_counter()
    jittered = collect_pairs(files, detector, jitter=True)
    native = collect_pairs(files, detector, jitter=False)
    print(f"images tried {len(files)}; matched faces: {len(jittered.rf)} resized (fit set), {len(native.rf)} at "
          f"native scale ({time.perf_counter() - t0:.0f} s)")
    fit_half, held_half = np.arange(0, len(jittered.rf), 2), np.arange(1, len(jittered.rf), 2)
    c_all, c_half = fit(jittered), fit(jittered.take(fit_half))
    for label, c in (("all resized faces -> use these", c_all), ("fit half only", c_half)):
        print(f"constants ({label}): " + ", ".join(f"{k}={v:.4f}" for k, v in c.items()))
    print(f"\n{'model':<12}{'set':<26}{'IoU median':>11}{'p10':>7}{'p90':>7}{'sp err med':>12}{'p90':>7}")
    sets = (
        ("held-out half (resized)", jittered.take(held_half), c_half),
        ("native 250x250 (all)", native, c_all),
    )
    for model in ("raw", "width-only", "box", "landmarks"):
        for set_name, pairs, c in sets:
            rects = mapped_rects(pairs, c, model)
            iou = np.diag(iou_matrix(rect_to_xyxy(rects), pairs.hog))
            err = landmark_error(pairs, rects, predictor)
            print(f"{model:<12}{set_name:<26}{np.median(iou):>11.4f}{np.percentile(iou, 10):>7.3f}"
                  f"{np.percentile(iou, 90):>7.3f}{np.median(err):>12.4f}{np.percentile(err, 90):>7.3f}")
    print("\nsp err = mean distance of dlib's 5 points (mapped rect vs HOG rect) / inter-ocular distance")
    if args.descriptors:
        net = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
        print(f"\ndescriptor distance to dlib's own pipeline (HOG rect), first {args.descriptors} native-scale faces:")
        for model in ("raw", "width-only", "box", "landmarks"):
            d = descriptor_distance(native, mapped_rects(native, c_all, model), predictor, net, args.descriptors)
            print(f"{model:<12} median {np.median(d):.4f}  p90 {np.percentile(d, 90):.4f}  max {d.max():.4f}")


if __name__ == "__main__":
    main()
