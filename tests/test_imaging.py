"""Image loading: colour order, alpha, grey, EXIF orientation, and clear errors for bad files."""

from __future__ import annotations

import zlib

import cv2
import numpy as np
import pytest

from facegate.errors import ImageError
from facegate.imaging import decode_image, letterbox, load_image
from tests.conftest import need_shared


def test_png_rgba_and_grey_become_bgr(tmp_path):
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[..., 2] = 200  # red in BGRA
    rgba[..., 3] = 10
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    image = load_image(tmp_path / "a.png")
    assert image.shape == (8, 10, 3) and image.dtype == np.uint8
    assert (image[..., 2] == 200).all() and (image[..., :2] == 0).all()
    cv2.imwrite(str(tmp_path / "g.png"), np.full((5, 6), 77, np.uint8))
    grey = load_image(tmp_path / "g.png")
    assert grey.shape == (5, 6, 3) and (grey == 77).all()


def test_real_rgba_and_grey_fixtures():
    rgba = load_image(need_shared("data", "enroll_examples", "edge_cases", "32bit.png"))
    assert rgba.shape == (1200, 626, 3)
    brick = load_image(need_shared("data", "enroll_examples", "multi", "brick.png"))
    assert brick.ndim == 3 and brick.shape[2] == 3


def test_exif_orientation_is_applied(tmp_path):
    """A JPEG whose EXIF says 'rotate 90° CW' is returned upright (width and height swapped)."""
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :40] = 255  # left half white
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    # Minimal APP1 EXIF segment (big-endian TIFF) with one IFD entry: Orientation (0x0112) = 6 (rotate 90° CW).
    tiff = b"MM\x00*\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00" + b"\x00" * 4
    app1 = b"\xff\xe1" + (len(tiff) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + tiff
    data = jpeg.tobytes()
    (tmp_path / "rot.jpg").write_bytes(data[:2] + app1 + data[2:])
    upright = load_image(tmp_path / "rot.jpg")
    assert upright.shape[:2] == (80, 40)
    assert upright[:40].mean() > 200 and upright[40:].mean() < 50  # the white half is now on top


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"", "empty"), (b"not an image at all" * 10, "cannot decode"), (b"\xff\xd8\xff\xe0" + b"\x00" * 64, "cannot")],
)
def test_corrupt_bytes(tmp_path, content, needle):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=needle) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg_is_refused_or_decoded_partially(tmp_path):
    photo = need_shared("data", "enroll_examples", "single", "obama.jpg").read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(photo[:200])
    with pytest.raises(ImageError, match="half.jpg"):
        load_image(path)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_huge_image_is_refused_before_decoding(tmp_path):
    ok, png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    data = bytearray(png.tobytes())
    data[16:20] = (50_000).to_bytes(4, "big")  # IHDR width
    data[20:24] = (50_000).to_bytes(4, "big")  # IHDR height: 2.5 gigapixels claimed
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # a valid IHDR CRC, as a real bomb has
    with pytest.raises(ImageError, match="px limit"):
        decode_image(bytes(data), "huge.png")
    with pytest.raises(ImageError, match="px limit"):
        decode_image(png.tobytes(), "small.png", max_pixels=10)


def test_letterbox_scale_and_padding():
    image = np.full((100, 200, 3), 9, np.uint8)
    canvas, scale = letterbox(image, 64, 64)
    assert canvas.shape == (64, 64, 3) and scale == pytest.approx(0.32)
    assert (canvas[:32] == 9).all() and (canvas[33:] == 0).all()


def test_device_and_oversized_files_are_refused_without_reading(tmp_path):
    with pytest.raises(ImageError, match="not a regular file"):
        load_image("/dev/zero")  # reading it would never end
    sparse = tmp_path / "huge_sparse.jpg"
    with open(sparse, "wb") as handle:
        handle.truncate(300 * 1024 * 1024)  # sparse: no disk used, but 300 MiB if read
    with pytest.raises(ImageError, match="byte limit"):
        load_image(sparse)
