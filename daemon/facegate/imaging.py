"""Image loading and colour handling.

All images inside facegate are H×W×3 ``uint8`` arrays in **BGR** order (as OpenCV gives them) unless a function says
otherwise. Loading honours EXIF orientation (so phone photos are upright), drops an alpha channel and expands grey
images to three channels.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facegate.errors import ImageError
from facegate.fileio import InputRefusedError, read_limited
from facegate.fileio import sha256_file as file_sha256  # noqa: F401 (re-exported for callers)

#: Largest image accepted, in pixels (width × height): 50 MP. Decoding allocates width × height × 3 bytes (150 MB
#: at 50 MP) plus the detector's working copies, and ``detect``/``embed`` hold every image given at once; phones and
#: cameras deliver 12–50 MP by default, and a face needs far fewer pixels (the recognisers work on 112–150 px chips).
#: A larger image is refused from its header, before any pixel is decoded: resize it.
MAX_IMAGE_PIXELS = 50_000_000

#: Largest image file read, in bytes: an uncompressed 50 MP image at 4 bytes per pixel (BMP, TIFF, RGBA PNG) is
#: 200 MB; anything bigger is refused before reading so that a huge or endless file cannot exhaust memory.
MAX_IMAGE_BYTES = 256 * 1024 * 1024

#: Formats whose header is read here (Pillow's names) and that OpenCV also decodes.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "PPM", "JPEG2000")


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding a pixel: Pillow's ``format`` name, ``width`` and
    ``height`` in px."""

    format: str
    width: int
    height: int


def read_image_header(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_IMAGE_PIXELS) -> ImageHeader:
    """The header of encoded image bytes, checked before decoding: Pillow's ``Image.open`` parses only the header
    (it is lazy: no pixel is decoded until ``load()``), for the formats in ``IMAGE_FORMATS``.

    Raises ``ImageError`` naming ``name`` when the bytes are empty, not one of those formats, declare no pixels,
    or declare more than ``max_pixels`` (including a size past Pillow's own decompression-bomb guard). Raises
    nothing else, whatever the bytes (fuzzed in tests/test_faults_inputs.py).
    """
    from PIL import Image

    if not data:
        raise ImageError(f"{name}: the file is empty; give a JPEG or PNG photo")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: our own limit is lower
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                header = ImageHeader(str(image.format), int(image.size[0]), int(image.size[1]))
    except Image.DecompressionBombError as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(claimed.group(1)):,} px" if claimed else "far more pixels than that"
        raise ImageError(f"{name}: image header declares {size}, more than the {max_pixels:,} px limit; resize it "
                         "before use") from None
    except Exception:  # noqa: BLE001 - Pillow's plugins raise many types (SyntaxError, struct.error, …) on junk
        raise ImageError(f"{name}: cannot decode the image: its header is none of {', '.join(IMAGE_FORMATS)}, "
                         "or it is corrupt; give a JPEG or PNG photo") from None
    if header.width <= 0 or header.height <= 0:
        raise ImageError(f"{name}: image header declares {header.width}×{header.height} px: no pixels")
    if header.width * header.height > max_pixels:
        raise ImageError(f"{name}: image is {header.width}×{header.height} px, more than the {max_pixels:,} px "
                         "limit; resize it before use")
    return header


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, BMP, WebP, TIFF, PPM, JPEG 2000) to an H×W×3 uint8 BGR array.

    The header is checked first (``read_image_header``: format and pixel count, nothing decoded). EXIF
    orientation is applied (``cv2.IMREAD_COLOR`` honours it), alpha is dropped, grey is expanded.
    Raises ``ImageError`` naming ``name`` when the bytes are empty, corrupt, or larger than ``max_pixels``.
    """
    read_image_header(data, name, max_pixels)
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV asserts on some malformed or oversized inputs instead of returning None
        image = None
    if image is None or image.size == 0:
        raise ImageError(f"{name}: cannot decode the image (corrupt or not an image); give a JPEG or PNG photo")
    if image.shape[0] * image.shape[1] > max_pixels:  # a header that lied (a polyglot file): still refused
        raise ImageError(
            f"{name}: image is {image.shape[1]}×{image.shape[0]} px, more than the {max_pixels:,} px limit"
        )
    return np.ascontiguousarray(image)


def read_image_file(path: str | Path) -> bytes:
    """The bytes of an image file, bounded: a device, FIFO, socket or folder is refused before reading, a file over
    ``MAX_IMAGE_BYTES`` before reading and while reading. Raises ``ImageError`` naming the file."""
    path = Path(path)
    try:
        return read_limited(path, MAX_IMAGE_BYTES, "an image")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file; check the path") from None
    except InputRefusedError as exc:
        raise ImageError(f"{path}: {exc}; give a JPEG or PNG photo") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the file ({exc.strerror or exc}); check permissions") from None


def load_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file into an H×W×3 uint8 **BGR** array, upright (EXIF orientation applied).

    Bounded (``read_image_file``), header checked before decoding (``read_image_header``). Raises ``ImageError``
    naming the file when it is missing, unreadable, not a regular file, empty, corrupt or too large.
    """
    return decode_image(read_image_file(path), str(path), max_pixels=max_pixels)


def bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    """Return an RGB copy of an H×W×3 BGR uint8 image (C-contiguous)."""
    return np.ascontiguousarray(image[..., ::-1])


def letterbox(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio into a ``height``×``width`` canvas, image at the top-left, zero padding.

    Returns the canvas (height×width×3 uint8, same colour order as the input) and the scale applied
    (canvas px per source px); a source point is ``canvas_point / scale``.
    """
    src_h, src_w = image.shape[:2]
    scale = min(width / src_w, height / src_h)
    new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return canvas, scale


#: Context kept around a face box on each side for a snapshot, as a fraction of the box's size.
CROP_MARGIN = 0.25


def face_crop(image: np.ndarray, box: Sequence[float], margin: float = CROP_MARGIN) -> np.ndarray | None:
    """A copy of ``box`` (x1, y1, x2, y2 px) of a BGR uint8 H×W×3 ``image``, widened by ``margin`` of its size on
    each side and clipped to the image; None when nothing of it lies inside the image."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    a, b = max(0, int(x1 - mx)), max(0, int(y1 - my))
    c, d = min(w, int(math.ceil(x2 + mx))), min(h, int(math.ceil(y2 + my)))
    if c - a < 2 or d - b < 2:
        return None
    return image[b:d, a:c].copy()
