"""Enrolment that tells the truth, and lookalikes the daemon keeps apart (issue 14, item 3).

Real photos: the 24 faces of ../shared/data/enroll_examples/multi/bald_guys.jpg (4 bald actors, 6 photos each;
tests/bald_guys.py), with the ``retinaface-mobilefacenet`` pack, where the issue's failures occur: at its LFW
operating point (cosine 0.3215) Vin Diesel's photo #2 scores 0.374 against Jason Statham's #6, Bruce Willis's #4
0.403 against Statham's #5 — thirteen cross-identity pairs of these photos pass the threshold (the built-in dlib
pack keeps all of them apart: closest 0.60 against 0.54, so it has no lookalikes to test here).

The issue: a person's enrolment was refused as "matches another identity", and that person's other photos were
then granted as the other identity. Here: the refusal says so in those words; the photo is scored against its own
identity first; forced or own-closer enrolments make the pair lookalikes, which `gallery list --lookalikes` shows
and the daemon's vote protects (a frame votes for one of them only with ``decision.lookalike_margin``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bald_guys import STATHAM, VIN, WILLIS, identity_of, write_photos
from cli_util import run_cli
from conftest import need_shared

from facegate.config import DecisionConfig
from facegate.gallery import Gallery, PackBinding
from facegate.gallery.enrol import Enroller
from facegate.gallery.lookalikes import Lookalikes, find_pairs
from facegate.imaging import load_image
from facegate.runtime.decision import DecisionEngine
from facegate.runtime.matching import LiveGallery
from facegate.runtime.rules import AccessRules
from facegate.scoring import Scorer

PACK = "retinaface-mobilefacenet"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, list[Path]]:
    collage = need_shared("data", "enroll_examples", "multi", "bald_guys.jpg")
    return write_photos(collage, tmp_path_factory.mktemp("bald"))


@pytest.fixture(scope="module")
def pipeline():
    from facegate.pipeline import FacePipeline

    need_shared("models", "recognition", "MobileFaceNet.onnx")
    return FacePipeline.load(PACK, with_liveness=False)


def embed(pipeline, path: Path) -> np.ndarray:
    dets = pipeline.analyse([load_image(path)])[0]
    assert len(dets) == 1, path
    return dets.data["embeddings"][0]


def daemon_vote(gallery: Gallery, pipeline, probe: np.ndarray, lookalike_margin: float = 0.10) -> str | None:
    """What one frame of this face votes for in the running daemon: the real ``LiveGallery`` (search and
    lookalike pairs) and ``DecisionEngine.frame_match`` with the pack's threshold."""
    live = LiveGallery(gallery)
    engine = DecisionEngine(search=live.search, scorer=pipeline.scorer, camera_doors={}, rules=AccessRules([]),
                            config=DecisionConfig(lookalike_margin=lookalike_margin), lookalikes=live.lookalikes)
    vote, _ = engine.frame_match(live.search(probe[None])[0], live.lookalikes(engine.scorer))
    return None if vote is None else vote.name


def test_the_refusal_tells_the_truth_and_force_makes_a_protected_lookalike_pair(photos, pipeline, tmp_path):
    need_shared("models", "recognition", "MobileFaceNet.onnx")
    g = str(tmp_path / "g")
    statham6, vin = photos[STATHAM][5], photos[VIN]
    first = run_cli("enroll", "--gallery", g, "--pack", PACK, "--name", STATHAM, str(statham6))
    assert first.code == 0, first.stderr
    # Vin Diesel's photo #2 is refused: the gallery would admit him as Jason Statham, in those words
    refused = run_cli("enroll", "--gallery", g, "--name", VIN, str(vin[1]))
    assert refused.code == 1
    reason = refused.json()["results"][0]["reason"]
    assert reason.startswith(f"the gallery would admit this face as {STATHAM!r} (score 0.37"), reason
    assert "no enrolled photo" in reason and "--force" in reason and "lookalike" in reason
    assert refused.json()["results"][0]["lookalike"]["identity"] == STATHAM
    # …which is exactly what the gallery does with his other photos while he is not enrolled (the failure)
    told = run_cli("identify", "--gallery", g, str(vin[0]), str(vin[2]))
    assert [r["faces"][0]["decision"] for r in told.json()] == [STATHAM, STATHAM]
    # different people: --force enrols him, names the pair a lookalike, and `gallery list --lookalikes` shows it
    forced = run_cli("enroll", "--gallery", g, "--name", VIN, "--force", str(vin[1]))
    assert forced.code == 0, forced.stderr
    assert "facegate: lookalike" in forced.stderr and STATHAM in forced.stderr
    listed = run_cli("gallery", "list", "--gallery", g, "--lookalikes")
    assert listed.code == 0, listed.stderr
    found = listed.json()["lookalikes"]
    assert found["threshold"] == pipeline.scorer.threshold and found["margin_required"] == 0.10
    (pair,) = found["pairs"]
    assert {pair["a"], pair["b"]} == {STATHAM, VIN} and pair["score"] == pytest.approx(0.374, abs=0.005)
    # now the daemon keeps them apart: none of Vin Diesel's other photos votes for Jason Statham, none of
    # Jason Statham's for Vin Diesel
    with Gallery(g) as gallery:
        for path in vin[0:1] + vin[2:]:
            assert daemon_vote(gallery, pipeline, embed(pipeline, path)) in (VIN, None), path
        for path in photos[STATHAM][:5]:
            assert daemon_vote(gallery, pipeline, embed(pipeline, path)) in (STATHAM, None), path
        assert [daemon_vote(gallery, pipeline, embed(pipeline, p)) for p in (vin[0], vin[2])] == [VIN, VIN]


def test_a_photo_is_scored_against_its_own_identity_first(photos, pipeline, tmp_path):
    with Gallery(tmp_path / "g") as gallery:
        stat = Enroller(gallery, pipeline).enrol(STATHAM, photos[STATHAM])
        assert [o.status for o in stat] == ["enrolled"] * 6
        # Vin #2 and #1 pass the threshold against Statham (0.374, 0.343), #4 does not (0.29). In this order
        # the old check refused #2 and #1 ("matches identity"); now they wait for #4, are scored against it (≈ 0.7,
        # closer to their own identity) and are enrolled as lookalikes of Jason Statham.
        vin = photos[VIN]
        out = Enroller(gallery, pipeline).enrol(VIN, [vin[1], vin[0], vin[3]])
        by_file = {Path(o.file).name: o for o in out}
        assert [o.status for o in out] == ["enrolled"] * 3, [(o.file, o.reason) for o in out]
        assert [Path(o.file).name for o in out] == [vin[3].name, vin[1].name, vin[0].name]  # #4 first
        for name in (vin[1].name, vin[0].name):
            note = by_file[name].lookalike
            assert note["identity"] == STATHAM and note["own_score"] > note["score"] >= pipeline.scorer.threshold
        assert by_file[vin[3].name].lookalike is None
        # a photo closer to another identity than to its own is refused, saying both scores
        mislabelled = Enroller(gallery, pipeline).enrol(VIN, [photos[STATHAM][0]])
        (o,) = mislabelled
        assert o.status == "refused"
        assert o.reason.startswith(f"the gallery would admit this face as {STATHAM!r} (score 1.000")  # itself
        assert f"closer to {STATHAM!r} than to {VIN!r}'s own photos" in o.reason
        # a lookalike of someone not yet involved: Bruce Willis #4 is 0.403 from Statham #5, a new identity → refused
        (w,) = Enroller(gallery, pipeline).enrol(WILLIS, [photos[WILLIS][3]])
        assert w.status == "refused" and w.lookalike["identity"] == STATHAM


def test_lookalike_pairs_are_exact_and_incremental():
    rng = np.random.default_rng(14)
    scorer = Scorer("cosine", 0.5)
    base = rng.normal(size=(40, 16)).astype(np.float32)
    vecs = np.concatenate([base + 0.1 * rng.normal(size=base.shape).astype(np.float32) for _ in range(3)])
    iids = np.tile(np.arange(40), 3)
    vecs[5] = base[7] + 0.05 * rng.normal(size=16)  # a template of identity 5 that looks like identity 7
    tids = np.arange(len(vecs)) + 100
    full = find_pairs(scorer, tids, iids, vecs)
    # brute force reference: best cross-identity score per identity pair, among the passing ones
    s = scorer.compare(vecs, vecs)
    want = {}
    for i in range(len(vecs)):
        for j in range(len(vecs)):
            if iids[i] < iids[j] and s[i, j] >= 0.5:
                key = (int(iids[i]), int(iids[j]))
                want[key] = max(want.get(key, -2.0), float(s[i, j]))
    assert (5, 7) in want
    assert set(full) == set(want) and all(full[k].score == pytest.approx(want[k], abs=1e-5) for k in want)
    # incremental: the same pairs when the templates arrive in two batches
    la = Lookalikes(scorer)
    half = len(vecs) // 2
    la.update(tids[:half], iids[:half], vecs[:half])
    la.update(tids, iids, vecs)
    assert set(la.pairs) == set(want) and all(la.pairs[k].score == pytest.approx(want[k], abs=1e-5) for k in want)
    assert 7 in la.partners()[5]
    # removing identity 7 drops its pairs; a stricter threshold only filters
    keep = iids != 7
    la.update(tids[keep], iids[keep], vecs[keep])
    assert all(7 not in key for key in la.pairs)
    strict = Scorer("cosine", 0.9)
    assert la.covers(strict) and not la.covers(Scorer("cosine", 0.3))
    la.restrict(strict)
    assert all(p.score >= 0.9 for p in la.pairs.values())


def test_the_daemon_follows_lookalikes_enrolled_by_another_process(tmp_path):
    pack = PackBinding("default", 8, "euclidean")
    e = np.eye(8, dtype=np.float32)
    with Gallery(tmp_path / "g") as writer:
        writer.enrol("alice", e[0][None], pack)
        writer.enrol("bob", e[1][None], pack)
        live = LiveGallery(Gallery(tmp_path / "g", pack=pack))
        scorer = Scorer("euclidean", 0.6)
        assert live.lookalikes(scorer) == {}
        writer.enrol("bob", (e[0] + 0.5 * e[2])[None], pack)  # bob's second photo is 0.5 from alice's
    assert live.refresh()
    ids = {i.name: i.id for i in live.gallery.identities()}
    assert live.lookalikes(scorer) == {ids["alice"]: frozenset({ids["bob"]}), ids["bob"]: frozenset({ids["alice"]})}
    assert live.lookalikes(Scorer("euclidean", 0.4)) == {}  # stricter: the pair no longer passes
    live.close()


def test_gallery_list_with_a_missing_config_names_it(tmp_path):
    result = run_cli("gallery", "list", "--lookalikes", "--gallery", str(tmp_path / "none"), "--config",
                     str(tmp_path / "c.yaml"))
    assert result.code == 2 and "c.yaml" in result.stderr and "Traceback" not in result.stderr


def test_photos_are_labelled_as_the_collage_shows():
    # guards tests/bald_guys.py: 6 photos per identity, names recoverable from the file names
    from bald_guys import FACES

    assert sorted({name for *_, name in FACES}) == sorted([VIN, STATHAM, WILLIS, "Dwayne Johnson"])
    assert all(sum(1 for *_, n in FACES if n == name) == 6 for *_, name in FACES)
    assert identity_of(Path("Jason_Statham-3.png")) == STATHAM
