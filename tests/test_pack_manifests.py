"""The bring-your-own pack manifests in models/: they validate, their local files match their sha256 and load through
the registry; and bad manifests (missing file, wrong sha256, a graph that is not what the manifest says) fail at
load with an error naming the model, the file and the mismatch — in the library and on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cli_util import assert_user_error, run_cli
from conftest import need_shared

from facegate.errors import ChecksumError, ModelError
from facegate.packs.cache import prepare_pack, sha256_file
from facegate.packs.manifest import load_manifest, source_path
from facegate.packs.registry import build_detector, build_liveness, build_recogniser
from facegate.pipeline import FacePipeline

ONNX_PACKS = ["yunet-mobilefacenet", "yunet-n-mobilefacenet", "scrfd-mobilefacenet", "retinaface-mobilefacenet"]
ALL_PACKS = [*ONNX_PACKS, "yunet-dlib"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEGATE_CACHE_DIR", str(tmp_path / "cache"))


def _absolute(pack: str) -> dict:
    """The pack's manifest as a dict, local file sources made absolute so it can be written anywhere."""
    manifest = load_manifest(pack)
    raw = yaml.safe_load(Path(manifest.manifest_path).read_text())
    for section in ("detector", "recogniser", "landmarks"):
        spec = getattr(manifest, section)
        if spec is not None and spec.source.file is not None:
            raw[section]["source"] = {"file": str(source_path(spec.source, manifest.manifest_path))}
    if manifest.liveness is not None:
        for entry, spec in zip(raw["liveness"]["models"], manifest.liveness.models, strict=True):
            entry["source"] = {"file": str(source_path(spec.source, manifest.manifest_path))}
    return raw


def _write(tmp_path: Path, raw: dict, name: str = "custom") -> Path:
    raw = dict(raw, name=name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("pack", ALL_PACKS)
def test_manifest_files_match_their_sha256(pack):
    manifest = load_manifest(pack)
    specs = [manifest.detector, manifest.recogniser, *(manifest.liveness.models if manifest.liveness else [])]
    for spec in specs:
        if spec.source.file is None:
            continue
        path = source_path(spec.source, manifest.manifest_path)
        need_shared("models", *Path(path).resolve().relative_to(need_shared("models").resolve()).parts)
        assert sha256_file(path) == spec.sha256, path
        assert spec.licence


@pytest.mark.parametrize("pack", ONNX_PACKS)
def test_packs_prepare_and_load_through_the_registry(pack):
    need_shared("models")
    prepared = prepare_pack(load_manifest(pack))
    detector = build_detector(prepared, threads=1)
    recogniser = build_recogniser(prepared, threads=1)
    liveness = build_liveness(prepared, threads=1)
    assert type(detector).__name__ in ("YuNetDetector", "ScrfdDetector", "RetinaFaceDetector")
    assert type(recogniser).__name__ == "ArcFaceRecogniser" and recogniser.metric == "cosine"
    assert len(liveness.models) == 2 and liveness.threshold == 0.5


def test_scrfd_pack_says_non_commercial():
    manifest = load_manifest("scrfd-mobilefacenet")
    assert "NON-COMMERCIAL" in manifest.description
    assert "non-commercial" in manifest.detector.licence
    listing = run_cli("models", "list")
    assert listing.code == 0, listing.stderr
    assert "non-commercial" in listing.stdout and "scrfd-mobilefacenet" in listing.stdout


def test_missing_file_names_the_file(tmp_path):
    need_shared("models")
    raw = _absolute("yunet-mobilefacenet")
    raw["detector"]["source"] = {"file": str(tmp_path / "nowhere" / "yunet.onnx")}
    with pytest.raises(ModelError, match=r"detector.*nowhere/yunet.onnx not found"):
        FacePipeline.load(_write(tmp_path, raw))


def test_wrong_sha256_names_the_file_and_both_digests(tmp_path):
    need_shared("models")
    raw = _absolute("yunet-mobilefacenet")
    raw["recogniser"]["sha256"] = "ab" * 32
    with pytest.raises(ChecksumError) as err:
        FacePipeline.load(_write(tmp_path, raw))
    message = str(err.value)
    assert "recogniser" in message and "MobileFaceNet.onnx" in message and "ab" * 32 in message


def _pointing_at(tmp_path: Path, section: str, relative: str, **changes) -> Path:
    target = need_shared("models", *relative.split("/"))
    raw = _absolute("yunet-mobilefacenet")
    raw[section]["source"] = {"file": str(target)}
    raw[section]["sha256"] = sha256_file(target)  # the checksum is right: only the graph is wrong
    raw[section].update(changes)
    return _write(tmp_path, raw)


def test_detector_manifest_pointing_at_a_recogniser_fails_at_load(tmp_path):
    with pytest.raises(ModelError) as err:
        FacePipeline.load(_pointing_at(tmp_path, "detector", "recognition/MobileFaceNet.onnx"))
    message = str(err.value)
    assert "YuNet detector" in message and "MobileFaceNet.onnx" in message
    assert "graph has 1 outputs (output0), the manifest expects 12" in message


def test_recogniser_manifest_pointing_at_a_detector_fails_at_load(tmp_path):
    with pytest.raises(ModelError) as err:
        FacePipeline.load(_pointing_at(tmp_path, "recogniser", "detection/retinaface_mv1_0.25.onnx"))
    message = str(err.value)
    assert "ArcFace-class recogniser" in message and "retinaface_mv1_0.25.onnx" in message
    assert "3 outputs" in message


@pytest.mark.parametrize(("changes", "needle"), [
    ({"embedding_size": 512}, "128-d) but the manifest says embedding_size: 512"),
    ({"fixed_batch": False}, "batch fixed to 1"),
    ({"alignment": "dlib_chip_150"}, "alignment 'dlib_chip_150'"),
])
def test_recogniser_manifest_that_does_not_match_the_graph(tmp_path, changes, needle):
    with pytest.raises(ModelError, match="MobileFaceNet.onnx") as err:
        FacePipeline.load(_pointing_at(tmp_path, "recogniser", "recognition/MobileFaceNet.onnx", **changes))
    assert needle in str(err.value)


def test_liveness_manifest_pointing_at_a_detector_fails_at_load(tmp_path):
    target = need_shared("models", "detection", "det_500m.onnx")
    raw = _absolute("yunet-mobilefacenet")
    raw["liveness"]["models"][1]["source"] = {"file": str(target)}
    raw["liveness"]["models"][1]["sha256"] = sha256_file(target)
    with pytest.raises(ModelError, match=r"liveness model \(crop scale 4.0\) .*det_500m.onnx.*9 outputs"):
        FacePipeline.load(_write(tmp_path, raw))


def test_cli_reports_a_mismatching_graph_without_a_traceback(tmp_path):
    manifest = _pointing_at(tmp_path, "detector", "recognition/MobileFaceNet.onnx")
    image = need_shared("data", "enroll_examples", "single", "obama_small.jpg")
    env = {"FACEGATE_CACHE_DIR": str(tmp_path / "cli-cache")}
    for command in ("detect", "liveness"):
        result = run_cli(command, str(image), "--pack", str(manifest), env=env)
        assert_user_error(result, "YuNet detector", "MobileFaceNet.onnx", "expects 12", code=1)


def test_mixed_pack_yunet_with_dlib_resnet_separates_people():
    """yunet-dlib: YuNet's boxes feed dlib's 5-point predictor and chip (the alignment belongs to the recogniser).
    On knn_examples/train every same-person distance is below dlib's 0.6 and every different-person one above
    (measured 2026-11-30: same ≤ 0.413, different ≥ 0.761)."""
    import numpy as np

    from facegate.imaging import load_image

    root = need_shared("data", "enroll_examples", "knn_examples", "train")
    files = sorted(root.glob("*/*"))
    labels = np.array([p.parent.name for p in files])
    pipeline = FacePipeline.load("yunet-dlib", threads=1, with_liveness=False)
    assert type(pipeline.detector).__name__ == "YuNetDetector" and pipeline.metric == "euclidean"
    results = pipeline.analyse([load_image(p) for p in files])
    emb = np.stack([r.data["embeddings"][int(np.argmax(r.widths))] for r in results])
    dist = pipeline.compare(emb, emb)
    same = labels[:, None] == labels[None, :]
    assert dist[same & ~np.eye(len(files), dtype=bool)].max() < pipeline.threshold < dist[~same].min()
