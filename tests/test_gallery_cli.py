"""End-to-end: `facegate enroll/identify/gallery` on ../shared/data/enroll_examples/knn_examples (real models)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_util import Result, assert_user_error, run_cli
from conftest import need_shared

pytestmark = pytest.mark.slow


def knn() -> Path:
    return need_shared("data", "enroll_examples", "knn_examples")


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """A gallery holding knn_examples/train, enrolled through `facegate enroll --from-dir`."""
    folder = tmp_path_factory.mktemp("gallery") / "g"
    result = run_cli("enroll", "--gallery", str(folder), "--from-dir", str(knn() / "train"), "--group", "staff")
    return folder, result


def decisions(result: Result) -> dict[str, list[str]]:
    assert result.code == 0, result.stderr
    return {Path(r["image"]).name: [f["decision"] for f in r["faces"]] for r in result.json()}


def test_enrol_from_dir(enrolled: tuple[Path, Result]) -> None:
    folder, result = enrolled
    assert result.code == 0, result.stderr
    report = result.json()
    assert report["enrolled"] == 9 and report["refused"] == 0
    assert "enrolling" in result.stderr  # the tqdm progress bar
    for row in report["results"]:
        assert row["quality"]["faces"] == 1 and row["quality"]["inter_eye_px"] >= 40
        assert len(row["quality"]["image_sha256"]) == 64
    listed = run_cli("gallery", "list", env={"FACEGATE_GALLERY": str(folder)})  # default location from the env
    assert listed.code == 0, listed.stderr
    people = {i["name"]: i for i in listed.json()["identities_list"]}
    assert set(people) == {"alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie"}
    assert people["obama"]["templates"] == 2 and people["obama"]["groups"] == ["staff"]
    shown = run_cli("gallery", "show", "biden", "--gallery", str(folder))
    assert shown.code == 0 and len(shown.json()["template_info"]) == 2


def test_identify_test_images(enrolled: tuple[Path, Result]) -> None:
    folder, _ = enrolled
    test = knn() / "test"
    found = decisions(run_cli("identify", "--gallery", str(folder), *sorted(str(p) for p in test.iterdir())))
    assert found["alex_lacamoire1.jpg"] == ["alex_lacamoire"]
    assert found["johnsnow_test1.jpg"] == ["kit_harington"]
    assert found["obama1.jpg"] == ["obama"]
    assert sorted(found["kit_with_rose.jpg"]) == ["kit_harington", "rose_leslie"]
    # Obama and Biden are recognised; the girl (not enrolled) must come back unknown.
    assert sorted(found["obama_and_biden.jpg"]) == ["biden", "obama", "unknown"]


def test_refusals_say_why(enrolled: tuple[Path, Result], tmp_path: Path) -> None:
    folder = tmp_path / "g"
    shutil.copytree(enrolled[0], folder)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a complete jpeg")
    multi = need_shared("data", "enroll_examples", "multi")
    result = run_cli("enroll", "--gallery", str(folder), "--name", "someone", str(corrupt),
                     str(multi / "coffee.png"), str(multi / "two_people.jpg"),
                     str(knn() / "test" / "obama1.jpg"), str(tmp_path / "missing.jpg"))
    assert_user_error(result, "5 of 5 photos refused")
    reasons = {Path(r["file"]).name: r["reason"] for r in result.json()["results"]}
    assert "cannot decode" in reasons["corrupt.jpg"]
    assert reasons["coffee.png"] == "no face found"
    assert reasons["two_people.jpg"].startswith("2 faces found")
    assert "the gallery would admit this face as 'obama'" in reasons["obama1.jpg"]
    assert "--force" in reasons["obama1.jpg"]
    assert "no such file" in reasons["missing.jpg"]  # read once, bounded: imaging.read_image_file
    assert result.stderr.count("facegate: refused ") == 5
    forced = run_cli("enroll", "--gallery", str(folder), "--name", "obama_lookalike", "--force",
                     str(knn() / "test" / "obama1.jpg"))
    assert forced.code == 0, forced.stderr
    again = run_cli("enroll", "--gallery", str(folder), "--name", "obama", str(knn() / "train" / "obama" / "obama.jpg"))
    assert again.code == 0, again.stderr  # a repeat is skipped, not refused
    assert again.json()["results"][0]["status"] == "skipped" and again.json()["skipped"] == 1
    assert "skipped" in again.stderr and "already enrolled" in again.stderr


def test_usage_errors_need_no_models(enrolled: tuple[Path, Result], tmp_path: Path) -> None:
    folder = enrolled[0]
    assert_user_error(run_cli("enroll", "--gallery", str(folder), "--from-dir", str(tmp_path / "nope")),
                      "no such directory", code=2)
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("enroll", "--gallery", str(folder), "--from-dir", str(tmp_path / "empty")),
                      "no sub-folder with images", code=2)
    assert_user_error(run_cli("enroll", "--gallery", str(folder), "x.jpg"), "either --name", code=2)
    assert_user_error(run_cli("gallery", "remove", "nobody", "--gallery", str(folder)), "no identity 'nobody'")
    assert_user_error(run_cli("gallery", "list", "--gallery", str(tmp_path / "none")), "no gallery here yet")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    assert_user_error(run_cli("identify", "--gallery", str(folder), str(bad)), "bad.jpg", "cannot decode")
    wrong = tmp_path / "arcface.jsonl"
    wrong.write_text(json.dumps({"format": "facegate-gallery", "version": 1, "pack": "buffalo", "dim": 512,
                                 "metric": "cosine"}) + "\n" + json.dumps(
        {"name": "x", "groups": [], "templates": [{"embedding": [0.1] * 512}]}) + "\n")
    assert_user_error(run_cli("gallery", "import", str(wrong), "--gallery", str(folder)), "cannot be imported",
                      "buffalo")


def test_export_import_and_erasure(enrolled: tuple[Path, Result], tmp_path: Path) -> None:
    folder = tmp_path / "g"
    shutil.copytree(enrolled[0], folder)
    export = tmp_path / "backup.jsonl"
    out = run_cli("gallery", "export", str(export), "--gallery", str(folder))
    assert out.code == 0 and out.json()["templates"] == 9, out.stderr
    copy = tmp_path / "copy"
    imported = run_cli("gallery", "import", str(export), "--gallery", str(copy))
    assert imported.code == 0 and imported.json() == {"file": str(export), "identities": 5, "templates": 9,
                                                      "skipped": 0}
    rows = [json.loads(line) for line in export.read_text().splitlines()[1:]]
    obama = [np.asarray(t["embedding"], "<f4").tobytes() for r in rows if r["name"] == "obama" for t in r["templates"]]
    assert len(obama) == 2

    assert run_cli("gallery", "remove", "obama", "--gallery", str(folder)).code == 0
    compact = run_cli("gallery", "compact", "--gallery", str(folder))
    assert compact.code == 0 and compact.json()["identities"] == 4, compact.stderr
    for path in folder.iterdir():
        data = path.read_bytes()
        assert not any(needle in data for needle in obama), f"{path.name} still holds Obama's template"
    found = decisions(run_cli("identify", "--gallery", str(folder), str(knn() / "test" / "obama1.jpg")))
    assert found["obama1.jpg"] == ["unknown"]


def test_default_gallery_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from facegate.commands.gallery import default_gallery

    monkeypatch.setenv("FACEGATE_GALLERY", str(tmp_path / "explicit"))
    assert default_gallery() == tmp_path / "explicit"
    monkeypatch.delenv("FACEGATE_GALLERY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_gallery() == tmp_path / "data" / "facegate" / "gallery"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_gallery() == tmp_path / "home" / ".local" / "share" / "facegate" / "gallery"


def _resumable_dir(tmp_path: Path, copies: int) -> tuple[Path, int]:
    """knn_examples/train plus ``copies`` re-encoded copies of obama.jpg in obama/ (new sha256, same face), so
    that an enrolment run lasts long enough to be interrupted. Returns (folder, number of photos)."""
    import cv2

    root = tmp_path / "people"
    shutil.copytree(knn() / "train", root)
    image = cv2.imread(str(root / "obama" / "obama.jpg"))
    for i in range(copies):
        cv2.imwrite(str(root / "obama" / f"copy{i:02d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 60 + i])
    return root, 9 + copies


def _templates(folder: Path) -> int:
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{folder / 'gallery.db'}?mode=ro", uri=True, timeout=5)
        try:
            return int(db.execute("SELECT COUNT(*) FROM templates").fetchone()[0])
        finally:
            db.close()
    except sqlite3.DatabaseError:  # not created yet
        return 0


def test_ctrl_c_reports_partial_work_and_rerun_skips(tmp_path: Path) -> None:
    """SIGINT mid `enroll --from-dir`: exit 130, the JSON report of what was committed, one stderr line; running
    the same command again exits 0 and reports the committed photos as skipped (already enrolled)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    people, total = _resumable_dir(tmp_path, copies=30)
    folder = tmp_path / "g"
    args = [sys.executable, "-m", "facegate.cli", "enroll", "--gallery", str(folder), "--from-dir", str(people)]
    # A shell's background job ignores SIGINT; restore the default so Python turns it into KeyboardInterrupt.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env=dict(os.environ),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while _templates(folder) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the enrolment finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    report = json.loads(stdout)
    assert report["interrupted"] is True and report["refused"] == 0
    committed = _templates(folder)
    assert 3 <= report["enrolled"] < total
    assert report["enrolled"] <= committed <= report["enrolled"] + 1  # +1: the photo in flight at the signal
    assert [line for line in stderr.splitlines() if line.startswith("facegate: interrupted")] != []
    assert sum(line.startswith("facegate: interrupted") for line in stderr.splitlines()) == 1

    again = run_cli("enroll", "--gallery", str(folder), "--from-dir", str(people))
    assert again.code == 0, again.stderr
    rerun = again.json()
    assert rerun["refused"] == 0 and rerun["skipped"] == committed and rerun["enrolled"] == total - committed
    assert {r["status"] for r in rerun["results"][:committed]} == {"skipped"}
    assert "refused" not in again.stderr
    assert _templates(folder) == total


def test_jitters_without_support_is_one_usage_error(tmp_path: Path) -> None:
    photos = [str(p) for p in sorted((knn() / "train" / "biden").iterdir())]
    result = run_cli("enroll", "--gallery", str(tmp_path / "g"), "--pack", "yunet-mobilefacenet", "--jitters", "3",
                     "--name", "biden", *photos)
    assert_user_error(result, "--jitters 3", "no jitter support", "--jitters 0", code=2)
    assert result.stderr.count("jitter support") == 1 and "refused" not in result.stderr
    assert _templates(tmp_path / "g") == 0


def test_two_concurrent_from_dir_runs_never_duplicate(tmp_path: Path) -> None:
    """Two `facegate enroll --from-dir` on the same gallery at once: every photo lands once; what one run stored
    the other reports as skipped (already enrolled), and both exit 0."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "g"
    args = [sys.executable, "-m", "facegate.cli", "enroll", "--gallery", str(folder),
            "--from-dir", str(knn() / "train")]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, env=dict(os.environ)) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    reports = [json.loads(out) for out, _ in outs]
    assert sum(r["enrolled"] for r in reports) == 9 and sum(r["skipped"] for r in reports) == 9
    assert _templates(folder) == 9


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--false-accept-rate", "0", "not a rate between 0 and 1"),
    ("--false-accept-rate", "2", "not a rate between 0 and 1"),
    ("--false-accept-rate", "nan", "not a finite number"),
    ("--threshold", "inf", "not a finite number"),
])
def test_gallery_list_refuses_a_rate_or_threshold_that_is_not_one(tmp_path, flag, value, needle):
    assert_user_error(run_cli("gallery", "list", "--gallery", str(tmp_path / "g"), flag, value), needle, code=2)
