"""Security level as a stated rate: the packs' calibration files (integrity, format, what they measured), the
threshold a false-accept goal gives with a gallery size and a vote (monotonic, refused when it cannot be met, with
the message saying what to change), a fixed threshold's implied rate, and the stricter-of-data-sets rule."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from facegate import scoring
from facegate.calibration import MIN_IMPOSTORS, Calibration, combine, dataset_curve
from facegate.errors import ConfigError, FalseAcceptGoalError
from facegate.evaluation.lfw_labels import IDENTITY_ALIASES, IMAGE_RELABELS
from facegate.fileio import sha256_file
from facegate.packs.manifest import calibration_path, load_manifest, pack_calibration, score_digest
from facegate.scoring import Scorer, attempt_rate, frame_fpir, required_fmr

CALIBRATED = ["default", "dlib", "retinaface-mobilefacenet"]


# ------------------------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("pack", CALIBRATED)
def test_shipped_calibration_matches_its_manifest_and_measured_both_data_sets(pack):
    manifest = load_manifest(pack)
    path = calibration_path(manifest)
    assert path is not None and path.parent == Path(manifest.manifest_path).parent
    assert sha256_file(path) == manifest.calibration.sha256
    cal = pack_calibration(manifest)
    assert cal.pack == pack and cal.metric == manifest.recogniser.metric and cal.score_digest == score_digest(manifest)
    names = [d.name for d in cal.datasets]
    assert names == ["lfw-view2-images", "enroll-examples"]
    lfw, enroll = cal.datasets
    # every unordered pair of LFW View 2's 7,701 images (about 29.6 M impostor comparisons); LFW names 4,281 people,
    # 11 of whom are someone else under a second name or a wrongly filed photo (evaluation/lfw_labels.py)
    corrections = lfw.info["label_corrections"]
    assert corrections == {"identity_aliases": IDENTITY_ALIASES, "image_relabels": IMAGE_RELABELS}
    assert lfw.info["images"] == 7701 and lfw.info["identities"] == 4270
    assert 29_000_000 < lfw.impostor_pairs < 29_700_000 and lfw.genuine_pairs > 8_000
    assert enroll.impostor_pairs > 1000 and enroll.genuine_pairs > 50
    assert cal.floor == pytest.approx(MIN_IMPOSTORS / lfw.impostor_pairs) and cal.floor < 1.1e-7
    for d in cal.datasets:
        assert np.all(np.diff(d.impostors) > 0) and d.impostors[0] >= 1
        hb = scoring.to_higher_better(d.thresholds, cal.metric)
        assert np.all(np.diff(hb) < 0)  # strictest first
    assert cal.created and "facegate eval calibrate" in cal.code and f"--pack {pack}" in cal.code


def _copy_pack(tmp_path: Path, pack: str, edit=None) -> Path:
    """The pack's manifest and calibration file copied to tmp_path (``edit(text) → text`` on the calibration; the
    manifest keeps the shipped sha256). The packs' model sources are Python packages, so the copy still loads."""
    manifest = load_manifest(pack)
    raw = yaml.safe_load(Path(manifest.manifest_path).read_text())
    text = calibration_path(manifest).read_text()
    (tmp_path / "cal.json").write_text(edit(text) if edit is not None else text)
    raw["calibration"]["file"] = "cal.json"
    path = tmp_path / f"{pack}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_damaged_calibration_file_is_refused_by_its_sha256(tmp_path):
    path = _copy_pack(tmp_path, "default", lambda t: t.replace('"impostors": 1', '"impostors": 2', 1))
    with pytest.raises(ConfigError, match=r"cal\.json: sha256 .* differs from the manifest's calibration\.sha256"):
        pack_calibration(load_manifest(path))


def test_a_calibration_of_other_scores_is_refused(tmp_path):
    path = _copy_pack(tmp_path, "default")
    raw = yaml.safe_load(path.read_text())
    raw["recogniser"]["parts"][1]["llr"]["slope"] += 1.0  # another fusion: other scores
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="measured for other scores.*re-run `facegate eval calibrate --pack default`"):
        pack_calibration(load_manifest(path))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="other"), "not a facegate-calibration file"),
    (lambda d: d.update(version=9), "version 9"),
    (lambda d: d["datasets"][0]["points"].reverse(), "impostor counts must rise"),
    (lambda d: d.update(datasets=[]), "no data sets"),
    (lambda d: d.update(metric="manhattan"), "metric 'manhattan'"),
    # tampered curves that would otherwise give a near-accept-all threshold claiming a tiny rate (attack finding)
    (lambda d: [p.update(threshold=t) for p, t in zip(d["datasets"][0]["points"],
                                                       [p["threshold"] for p in d["datasets"][0]["points"]][::-1],
                                                       strict=True)],
     "thresholds must run from the strictest to the loosest"),
    (lambda d: d["datasets"][0].update(impostor_pairs=10**30), "more than its faces allow"),
    (lambda d: d["datasets"][1].update(genuine_pairs=10**6), "more than its faces allow"),
])
def test_a_malformed_calibration_says_what_is_wrong(tmp_path, edit, message):
    data = json.loads(calibration_path(load_manifest("dlib")).read_text())
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        Calibration.load(path)


def test_a_calibration_file_that_is_a_device_or_a_fifo_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "cal.fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", fifo):  # /dev/zero would be read until memory runs out; a FIFO would hang
        with pytest.raises(ConfigError, match="cannot read the pack's calibration file"):
            Calibration.load(path)


# ------------------------------------------------------------------------------------- the model, in numbers


def test_required_fmr_inverts_the_attempt_rate_and_is_conservative():
    for goal in (1e-2, 1e-4, 1e-6):
        for templates in (1, 10, 1000, 100_000):
            for k, n in ((1, 1), (3, 5), (2, 2)):
                fmr = required_fmr(goal, templates, k, n)
                assert attempt_rate(fmr, templates, k, n) == pytest.approx(goal, rel=1e-9)
                frame = goal * k / n  # within a hair of the union bound frame / T
                assert frame / templates <= fmr <= frame / templates * (1 + frame)
    # Markov: with k of n frames needed the bound is n/k times the per-frame rate, whatever the correlation
    assert attempt_rate(1e-6, 1, 3, 5) == pytest.approx(5 / 3 * 1e-6)
    assert frame_fpir(1e-6, 1000) == pytest.approx(1 - (1 - 1e-6) ** 1000)
    assert required_fmr(0.5, 1, 1, 1) == pytest.approx(0.5) and attempt_rate(1.0, 3, 1, 1) == 1.0


def test_stricter_data_set_wins_where_they_disagree():
    rng = np.random.default_rng(0)
    big = dataset_curve("big", "cosine", rng.normal(0.7, 0.1, 5000), rng.normal(0.0, 0.1, 1_000_000), 1_000_000)
    # a small data set whose strangers score much higher (lookalikes): 1 in 1,000 above 0.5
    small_imp = np.r_[rng.normal(0.0, 0.1, 999), [0.55]]
    small = dataset_curve("small", "cosine", rng.normal(0.7, 0.1, 100), small_imp, 1000)
    cal = combine("x", "cosine", "d", [big, small], "now", "test")
    alone = combine("x", "cosine", "d", [big], "now", "test")
    assert alone.fmr_at(0.5).fmr < 1e-5
    est = cal.fmr_at(0.55)  # exactly the small set's highest impostor: 1 of its 1,000
    assert est.fmr == pytest.approx(1e-3) and est.dataset == "small" and not est.at_floor
    # between two of its points the count is bounded by the looser one (here its 2nd highest impostor): conservative
    assert cal.fmr_at(0.5).fmr == pytest.approx(2e-3)
    # for a goal below what the small set can show, its highest impostor must be passed
    assert cal.threshold_for(1e-4) > 0.55 > alone.threshold_for(1e-4)
    # below the floor nothing is vouched for; a threshold stricter than every impostor says "<= floor"
    assert cal.threshold_for(cal.floor / 2) is None
    top = cal.fmr_at(5.0)
    assert top.at_floor and top.fmr == cal.floor == pytest.approx(3e-6)


def test_euclidean_curves_read_in_distance_units():
    rng = np.random.default_rng(1)
    d = dataset_curve("d", "euclidean", rng.normal(0.4, 0.05, 2000), rng.normal(0.9, 0.08, 200_000), 200_000)
    cal = combine("x", "euclidean", "d", [d], "now", "test")
    t = cal.threshold_for(1e-3)
    assert 0.5 < t < 0.9
    assert cal.fmr_at(t).fmr <= 1e-3 < cal.fmr_at(t + 0.02).fmr  # a larger distance accepts more
    assert cal.fnmr_at(t)["d"] < cal.fnmr_at(t - 0.1)["d"]


# --------------------------------------------------------------------------- threshold from goal and gallery


def test_threshold_from_goal_tightens_with_the_gallery_and_is_refused_past_the_calibration():
    manifest = load_manifest("default")
    cal = pack_calibration(manifest)
    thresholds = []
    for templates in (1, 10, 100, 500):
        s = Scorer.resolve(manifest, false_accept_rate=1e-4, calibration=cal, templates=templates, vote=(3, 5))
        assert s.basis.source == "decision.false_accept_rate" and s.basis.attempt_rate <= 1e-4
        assert s.basis.fmr <= required_fmr(1e-4, templates, 3, 5)
        thresholds.append(s.threshold)
    assert thresholds == sorted(thresholds) and thresholds[0] < thresholds[-1]  # fused LLR: higher = stricter
    looser = Scorer.resolve(manifest, false_accept_rate=1e-3, calibration=cal, templates=100, vote=(3, 5))
    assert looser.threshold <= thresholds[2]
    with pytest.raises(FalseAcceptGoalError) as err:
        Scorer.resolve(manifest, false_accept_rate=1e-4, calibration=cal, templates=1_000_000, vote=(3, 5))
    text = str(err.value)
    assert "1000000 templates" in text and "a smaller gallery (at most" in text and "a looser goal" in text
    assert "a stronger pack" in text and err.value.exit_code == 2
    most = int(text.split("at most ")[1].split()[0])
    assert Scorer.resolve(manifest, false_accept_rate=1e-4, calibration=cal, templates=most, vote=(3, 5))
    with pytest.raises(FalseAcceptGoalError):
        Scorer.resolve(manifest, false_accept_rate=1e-4, calibration=cal, templates=most + 1, vote=(3, 5))


def test_a_fixed_threshold_states_its_implied_rate():
    manifest = load_manifest("dlib")
    cal = pack_calibration(manifest)
    s = Scorer.resolve(manifest, 0.5, calibration=cal, templates=20, vote=(3, 5))
    est = cal.fmr_at(0.5)
    assert s.threshold == 0.5 and s.basis.source == "decision.threshold" and s.basis.fmr == est.fmr
    assert s.basis.attempt_rate == pytest.approx(attempt_rate(est.fmr, 20, 3, 5))
    assert set(s.basis.fnmr) == {"lfw-view2-images", "enroll-examples"}
    plain = Scorer.resolve(manifest, calibration=cal, templates=20, vote=(3, 5))
    assert plain.basis.source == "operating_point" and plain.threshold == manifest.operating_point.threshold
    assert "per_attempt_rate_bound=" in s.basis.log_fields()


def test_goal_needs_a_calibrated_pack_and_not_both_settings():
    manifest = load_manifest("yunet-dlib")
    assert pack_calibration(manifest) is None
    with pytest.raises(ConfigError, match="needs a calibrated pack.*set decision.threshold instead"):
        Scorer.resolve(manifest, false_accept_rate=1e-4, templates=3)
    unknown = Scorer.resolve(manifest, templates=3)
    assert unknown.basis.fmr is None and "unknown" in unknown.basis.to_json()["note"]
    with pytest.raises(ConfigError, match="either threshold or false_accept_rate"):
        Scorer.resolve(load_manifest("dlib"), 0.5, false_accept_rate=1e-4)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        dlib = load_manifest("dlib")
        Scorer.resolve(dlib, false_accept_rate=2.0, calibration=pack_calibration(dlib))
    assert math.isfinite(Scorer.resolve(load_manifest("dlib")).threshold)


def test_config_check_refuses_a_goal_for_a_pack_without_calibration(tmp_path):
    from cli_util import run_cli
    from conftest import need_shared

    video = need_shared("data", "videos", "stage_clip_640x360.mp4")
    cfg = tmp_path / "c.yaml"
    base = {"cameras": [{"id": "a", "file": str(video)}], "service": {"state_dir": str(tmp_path / "s")},
            "gallery": {"path": str(tmp_path / "g")}}
    cfg.write_text(yaml.safe_dump({**base, "pack": "yunet-dlib", "decision": {"false_accept_rate": 1e-4}}))
    result = run_cli("config", "check", str(cfg))
    assert result.code == 2 and "decision.false_accept_rate" in result.stderr and "has no calibration" in result.stderr
    cfg.write_text(yaml.safe_dump({**base, "decision": {"false_accept_rate": 1e-4}}))
    assert run_cli("config", "check", str(cfg)).code == 0
    cfg.write_text(yaml.safe_dump({**base, "decision": {"false_accept_rate": 1e-4, "threshold": 5.0}}))
    both = run_cli("config", "check", str(cfg))
    assert both.code == 2 and "either threshold" in both.stderr and "Traceback" not in both.stderr


@pytest.mark.slow
def test_eval_calibrate_writes_a_file_the_pack_can_use(tmp_path):
    from cli_util import assert_user_error, run_cli
    from conftest import need_shared

    enroll = need_shared("data", "enroll_examples")
    out = tmp_path / "cal.json"
    result = run_cli("eval", "calibrate", "--pack", "dlib", "--enroll-examples", str(enroll), "--out", str(out),
                     "--cache", str(tmp_path / "cache.sqlite"), "--no-progress")
    assert result.code == 0, result.stderr
    report = result.json()
    manifest = load_manifest("dlib")
    cal = Calibration.load(out, report["sha256"], score_digest(manifest), "dlib")
    (d,) = cal.datasets
    assert d.name == "enroll-examples" and d.impostor_pairs == 4584 and d.genuine_pairs == 138
    assert report["manifest"] == {"calibration": {"file": "cal.json", "sha256": sha256_file(out)}}
    assert "facegate eval calibrate --pack dlib" in cal.code and cal.floor == pytest.approx(3 / 4584)
    assert_user_error(run_cli("eval", "calibrate", "--pack", "dlib", "--enroll-examples", str(enroll), "--out",
                              str(out)), "exists", "--force", code=2)
    assert_user_error(run_cli("eval", "calibrate", "--pack", "dlib", "--out", str(tmp_path / "x.json")),
                      "at least one data set", code=2)
