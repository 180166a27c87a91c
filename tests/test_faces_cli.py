"""`facegate detect` / `facegate embed` as a user runs them: JSON on stdout, --annotate, clear errors."""

from __future__ import annotations

import cv2
import numpy as np

from tests.cli_util import assert_user_error, run_cli
from tests.conftest import need_shared


def test_detect_json_and_annotate(tmp_path):
    image = need_shared("data", "enroll_examples", "multi", "two_people.jpg")
    out = tmp_path / "annotated.png"
    result = run_cli("detect", str(image), "--annotate", str(out))
    assert result.code == 0, result.stderr
    [item] = result.json()
    assert item["image"] == str(image) and len(item["faces"]) == 2
    for face in item["faces"]:
        x1, y1, x2, y2 = face["box"]
        assert 0 <= x1 < x2 <= item["width"] and 0 <= y1 < y2 <= item["height"]
        assert 0.5 < face["score"] <= 1
        assert set(face["landmarks"]) == {"eye_image_left", "eye_image_right", "nose", "mouth_image_left",
                                          "mouth_image_right"}
    drawn = cv2.imread(str(out))
    original = cv2.imread(str(image))
    assert drawn.shape == original.shape and not np.array_equal(drawn, original)


def test_embed_prints_128_d_vectors():
    single = need_shared("data", "enroll_examples", "single")
    result = run_cli("embed", "--pack", "dlib", str(single / "obama.jpg"), str(single / "biden.jpg"))
    assert result.code == 0, result.stderr
    items = result.json()
    assert [len(i["faces"]) for i in items] == [1, 1]
    a, b = (np.array(i["faces"][0]["embedding"]) for i in items)
    assert a.shape == (128,) and items[0]["metric"] == "euclidean"
    assert np.linalg.norm(a - b) > 0.6  # different people
    fused = run_cli("embed", str(single / "obama.jpg"))  # the built-in pack: dlib's 128 then MobileFaceNet's 128
    assert fused.code == 0, fused.stderr
    template = np.array(fused.json()[0]["faces"][0]["embedding"])
    assert template.shape == (256,) and fused.json()[0]["metric"] == "fused"
    np.testing.assert_allclose(template[:128], a, atol=1e-6)


def test_no_face_gives_empty_list():
    result = run_cli("detect", str(need_shared("data", "enroll_examples", "multi", "rocket.jpg")))
    assert result.code == 0 and result.json()[0]["faces"] == []


def test_bad_inputs(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff" + b"junk" * 100)
    assert_user_error(run_cli("detect", str(corrupt)), "corrupt.jpg", code=1)
    assert_user_error(run_cli("embed", str(tmp_path / "missing.png")), "missing.png", code=1)
    unwritable = tmp_path / "no_such_dir" / "out.png"
    ok = need_shared("data", "enroll_examples", "single", "obama_small.jpg")
    assert_user_error(run_cli("detect", str(ok), "--annotate", str(unwritable)), "out.png", code=1)
    usage = run_cli("detect")
    assert usage.code == 2 and "facegate: error:" in usage.stderr and "Traceback" not in usage.stderr
