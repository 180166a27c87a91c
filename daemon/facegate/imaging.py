"""Image loading and colour handling.

All images inside facegate are H×W×3 ``uint8`` arrays in **BGR** order (as OpenCV gives them) unless a function says
otherwise. Loading honours EXIF orientation (so phone photos are upright), drops an alpha channel and expands grey
images to three channels.
"""

from __future__ import annotations

import stat
from pathlib import Path

import cv2
import numpy as np

from facegate.errors import ImageError
from facegate.fileio import sha256_file as file_sha256  # noqa: F401 (re-exported for callers)

#: Largest image accepted, in pixels (width × height). Bigger images are refused rather than risking memory
#: exhaustion on a decompression bomb; 100 MP covers every camera and phone in use.
MAX_IMAGE_PIXELS = 100_000_000

#: Largest image file read, in bytes: a 100 MP JPEG or PNG is far below this; anything bigger is refused before
#: reading so that a huge or endless file (e.g. /dev/zero) cannot exhaust memory.
MAX_IMAGE_BYTES = 256 * 1024 * 1024


def _image_size_from_header(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG or JPEG header without decoding, or None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                height = int.from_bytes(data[i + 5 : i + 7], "big")
                width = int.from_bytes(data[i + 7 : i + 9], "big")
                return width, height
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, BMP, WebP, TIFF…) to an H×W×3 uint8 BGR array.

    EXIF orientation is applied (``cv2.IMREAD_COLOR`` honours it), alpha is dropped, grey is expanded.
    Raises ``ImageError`` naming ``name`` when the bytes are empty, corrupt, or larger than ``max_pixels``.
    """
    if not data:
        raise ImageError(f"{name}: the file is empty; give a JPEG or PNG photo")
    size = _image_size_from_header(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageError(
            f"{name}: image is {size[0]}×{size[1]} px, more than the {max_pixels:,} px limit; "
            "resize it before use"
        )
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV asserts on some malformed or oversized inputs instead of returning None
        image = None
    if image is None or image.size == 0:
        raise ImageError(f"{name}: cannot decode the image (corrupt or not an image); give a JPEG or PNG photo")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError(
            f"{name}: image is {image.shape[1]}×{image.shape[0]} px, more than the {max_pixels:,} px limit"
        )
    return np.ascontiguousarray(image)


def load_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file into an H×W×3 uint8 **BGR** array, upright (EXIF orientation applied).

    Raises ``ImageError`` naming the file when it is missing, unreadable, empty, corrupt or too large.
    """
    path = Path(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{path}: not a regular file (a device, pipe or socket); give a JPEG or PNG photo")
        if info.st_size > MAX_IMAGE_BYTES:
            raise ImageError(
                f"{path}: file is {info.st_size:,} bytes, more than the {MAX_IMAGE_BYTES:,}-byte limit for an "
                "image; give a smaller photo"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the file ({exc.strerror}); check permissions") from None
    return decode_image(data, str(path), max_pixels=max_pixels)


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
