"""The 24 faces of ../shared/data/enroll_examples/multi/bald_guys.jpg as one-face photos, for lookalike tests.

The collage shows 4 bald men, 6 photos each; dlib's ``examples/dnn_face_recognition_ex.cpp`` names them Vin Diesel,
The Rock (Dwayne Johnson), Jason Statham and Bruce Willis. The identity of each face below was assigned by looking
at the collage with the faces numbered (the four groups of 6 are unmistakable; the MobileFaceNet and dlib scores
agree with the grouping). Coordinates are the face box centre and width in px of the original 1986×1545 image, as
RetinaFace (the built-in detector) finds them.

``write_photos`` crops each face (a square of 1.7 × the box width around its centre, clipped to the image, so
that no neighbouring tile's face is whole) and scales it so the face is about 220 px wide, PNG, lossless.
"""

from __future__ import annotations

from pathlib import Path

import cv2

VIN, ROCK, STATHAM, WILLIS = "Vin Diesel", "Dwayne Johnson", "Jason Statham", "Bruce Willis"

#: (centre x, centre y, box width) px → identity, in RetinaFace's order.
FACES: list[tuple[int, int, int, str]] = [
    (646, 507, 170, VIN), (147, 146, 165, VIN), (1162, 1384, 160, ROCK), (1148, 833, 169, WILLIS),
    (857, 895, 169, WILLIS), (151, 1372, 164, VIN), (853, 1313, 165, WILLIS), (135, 459, 160, VIN),
    (1599, 244, 264, ROCK), (962, 482, 147, STATHAM), (952, 174, 150, STATHAM), (633, 178, 176, VIN),
    (144, 767, 155, STATHAM), (385, 288, 116, VIN), (1866, 1385, 145, ROCK), (456, 1336, 204, WILLIS),
    (1695, 749, 87, ROCK), (1881, 485, 100, ROCK), (392, 97, 109, STATHAM), (1515, 1396, 122, ROCK),
    (121, 1048, 141, WILLIS), (500, 913, 222, STATHAM), (401, 511, 130, STATHAM), (1186, 1139, 125, WILLIS),
]


def write_photos(collage: Path, folder: Path) -> dict[str, list[Path]]:
    """Write one PNG per face into ``folder`` (``<identity>-<n>.png``, n = 1…6 in ``FACES`` order); returns
    identity → its photos in that order."""
    image = cv2.imread(str(collage), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(collage)
    h, w = image.shape[:2]
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {}
    for cx, cy, width, name in FACES:
        half = int(round(0.85 * width))
        crop = image[max(cy - half, 0) : min(cy + half, h), max(cx - half, 0) : min(cx + half, w)]
        scale = 220.0 / width
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC if scale > 1 else
                          cv2.INTER_AREA)
        path = folder / f"{name.replace(' ', '_')}-{len(out.get(name, [])) + 1}.png"
        cv2.imwrite(str(path), crop)
        out.setdefault(name, []).append(path)
    return out


def identity_of(path: Path) -> str:
    """The identity a photo written by ``write_photos`` shows."""
    return Path(path).stem.rsplit("-", 1)[0].replace("_", " ")
