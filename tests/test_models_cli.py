"""`facegate models prepare|list` and the model cache: checksums, corrupt and truncated files, atomic rebuilds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from facegate.packs.cache import ensure_prepared, pack_state, prepare_pack
from facegate.packs.manifest import load_manifest
from tests.cli_util import assert_user_error, run_cli

DEFAULT = load_manifest("dlib")  # the pack whose recogniser is the dlib .dat file


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> dict[str, str]:
    """A private cache folder and an extra manifests folder for custom packs."""
    env = {"FACEGATE_CACHE_DIR": str(tmp_path / "cache"), "FACEGATE_MODELS_DIR": str(tmp_path / "manifests")}
    (tmp_path / "manifests").mkdir()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _write_pack(folder: Path, name: str, edit) -> Path:
    """A copy of the dlib manifest under another name, changed by ``edit(dict)``."""
    raw = yaml.safe_load(Path(DEFAULT.manifest_path).read_text())
    raw["name"] = name
    edit(raw)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_prepare_and_list(isolated):
    result = run_cli("models", "prepare", "--pack", "default", env=isolated)
    assert result.code == 0, result.stderr
    pack = result.json()["packs"][0]
    assert pack["pack"] == "default" and Path(pack["recogniser"]).is_file()
    state = json.loads((Path(isolated["FACEGATE_CACHE_DIR"]) / "packs/default/prepared.json").read_text())
    built = Path(state["files"]["recogniser"]["path"])
    assert hashlib.sha256(built.read_bytes()).hexdigest() == state["files"]["recogniser"]["sha256"]
    listing = run_cli("models", "list", env=isolated)
    assert listing.code == 0
    default = next(row for row in listing.json() if row["pack"] == "default")
    assert default["state"] == "prepared" and "CC0" in default["licences"]["recogniser"]


def test_corrupt_converted_model_is_rebuilt_with_a_warning(isolated, caplog):
    prepared = prepare_pack(DEFAULT)
    original = prepared.recogniser.read_bytes()
    prepared.recogniser.write_bytes(original[: len(original) // 2])  # truncated by a crash or a disk fault
    assert pack_state(DEFAULT) == "stale"
    with caplog.at_level("WARNING"):
        again = ensure_prepared(DEFAULT)
    assert again.recogniser.read_bytes() == original
    assert any(str(prepared.recogniser) in r.getMessage() for r in caplog.records)


def test_wrong_checksum_names_the_file(isolated, tmp_path):
    _write_pack(tmp_path / "manifests", "badsum", lambda raw: raw["recogniser"].update(sha256="0" * 64))
    result = run_cli("models", "prepare", "--pack", "badsum", env=isolated)
    assert_user_error(result, "dlib_face_recognition_resnet_model_v1.dat", "sha256", code=1)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_dat_file(isolated, tmp_path, damage):
    from facegate.packs.manifest import source_path

    data = source_path(DEFAULT.recogniser.source, DEFAULT.manifest_path).read_bytes()
    if damage == "truncate":
        bad = data[: len(data) // 3]
    else:
        bad = bytearray(data)
        bad[300:310] = b"\xff" * 10  # inside the input layer record
        bad = bytes(bad)
    dat = tmp_path / f"resnet_{damage}.dat"
    dat.write_bytes(bad)
    digest = hashlib.sha256(bad).hexdigest()
    _write_pack(tmp_path / "manifests", f"dat{damage}",
                lambda raw: raw["recogniser"].update(source={"file": str(dat)}, sha256=digest))
    result = run_cli("models", "prepare", "--pack", f"dat{damage}", env=isolated)
    assert_user_error(result, str(dat), code=1)


def test_corrupt_onnx_detector(isolated, tmp_path):
    onnx_file = tmp_path / "broken.onnx"
    onnx_file.write_bytes(b"\x08\x07garbage that is not a protobuf graph" * 20)
    digest = hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    _write_pack(tmp_path / "manifests", "badonnx",
                lambda raw: raw["detector"].update(source={"file": str(onnx_file)}, sha256=digest))
    image = tmp_path / "x.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    result = run_cli("detect", str(image), "--pack", "badonnx", env=isolated)
    assert_user_error(result, "broken.onnx", code=1)


def test_missing_model_file(isolated, tmp_path):
    _write_pack(tmp_path / "manifests", "missing",
                lambda raw: raw["detector"].update(source={"file": str(tmp_path / "gone.onnx")}))
    result = run_cli("models", "prepare", "--pack", "missing", env=isolated)
    assert_user_error(result, "gone.onnx", code=1)


def test_unknown_pack_and_invalid_manifest(isolated, tmp_path):
    result = run_cli("models", "prepare", "--pack", "nosuchpack", env=isolated)
    assert_user_error(result, "nosuchpack", "known packs", code=2)
    _write_pack(tmp_path / "manifests", "typo", lambda raw: raw["detector"].update(scor_threshold=0.5))
    result = run_cli("models", "prepare", "--pack", "typo", env=isolated)
    assert_user_error(result, "typo.yaml", "detector.scor_threshold", code=2)
    listing = run_cli("models", "list", env=isolated)
    assert listing.code == 0
    assert next(r for r in listing.json() if r["pack"] == "typo")["state"] == "invalid"


def test_copied_manifest_with_the_same_name_gets_its_own_cache_folder(isolated, tmp_path):
    """An integrator's edited copy keeps `name: dlib`; preparing it must not overwrite the real pack's cache."""
    copy = tmp_path / "elsewhere" / "mine.yaml"
    copy.parent.mkdir()
    raw = yaml.safe_load(Path(DEFAULT.manifest_path).read_text())
    raw["detector"]["score_threshold"] = 0.9
    copy.write_text(yaml.safe_dump(raw))
    original = prepare_pack(DEFAULT)
    mine = prepare_pack(load_manifest(copy))
    assert mine.directory != original.directory and mine.directory.name.startswith("dlib@")
    assert pack_state(DEFAULT) == "prepared"


def test_prepare_loads_the_graphs_and_reports_a_mismatching_model(isolated, tmp_path):
    """A detector manifest pointing at a recogniser passes the checksum but cannot work: prepare must say so."""
    recogniser = Path(__file__).resolve().parents[2] / "shared" / "models" / "recognition" / "MobileFaceNet.onnx"
    if not recogniser.exists():
        pytest.skip(f"needs {recogniser} (the shared models folder), which is absent on this machine")
    digest = hashlib.sha256(recogniser.read_bytes()).hexdigest()
    _write_pack(tmp_path / "manifests", "wronggraph",
                lambda raw: raw["detector"].update(source={"file": str(recogniser)}, sha256=digest))
    single = run_cli("models", "prepare", "--pack", "wronggraph", env=isolated)
    assert_user_error(single, "MobileFaceNet.onnx", code=1)
    everything = run_cli("models", "prepare", env=isolated)
    assert everything.code == 1 and "Traceback" not in everything.stderr
    states = {p["pack"]: p["state"] for p in everything.json()["packs"]}
    assert states["wronggraph"] == "invalid" and states["default"] == "prepared"


def test_threads_must_be_positive():
    result = run_cli("detect", "x.jpg", "--threads", "0")
    assert result.code == 2 and "must be at least 1" in result.stderr and "Traceback" not in result.stderr
