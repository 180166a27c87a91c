"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``) → plain numpy → ONNX graph.

facegate reads the file itself (dlib is never imported) and builds an ONNX graph with a dynamic batch dimension that
ONNX Runtime runs ~40× faster than dlib's own CPU code. Facts used here are from ``../shared/notes/dlib-models.md``
§1, §2 and §5, verified byte-for-byte against dlib 20.0.1; the network definition is dlib's
``examples/dnn_face_recognition_ex.cpp`` (``anet_type``), the layer formats are ``dlib/dnn/layers.h``,
``dlib/dnn/core.h`` (``add_layer``/``add_tag_layer``/``add_skip_layer`` serialisation), ``dlib/dnn/input.h``
(``input_rgb_image_sized``) and ``dlib/dnn/loss.h`` (``loss_metric_``).

The file does not record its topology (tag/skip wrappers store no ids, ``add_prev`` does not say which tag it adds),
so the topology is hard-coded (``_topology``) and every record is checked against it: name, hyper-parameters and
tensor shapes. A corrupt or truncated file raises ``ModelError`` naming the file.

Model contract (graph built by ``build_resnet_onnx``):

* input ``chips``: uint8 ``[N, 150, 150, 3]``, **RGB** (not facegate's usual BGR), NHWC — 150×150 face chips
  aligned as dlib's ``get_face_chip(img, shape, size=150, padding=0.25)`` does (notes §4, ``packs/align.py``);
* output ``descriptors``: float32 ``[N, 128]``, the raw fc output (no L2 normalisation; norms ≈ 1.2–1.6),
  compared with the Euclidean distance; dlib's same-person threshold is 0.6 (stored in the file's loss layer).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from facegate.errors import ModelError
from facegate.fileio import write_atomic
from facegate.packs.dlib_serial import DlibReader

log = logging.getLogger(__name__)

INPUT_NAME = "chips"
OUTPUT_NAME = "descriptors"
CHIP_SIZE = 150
DESCRIPTOR_SIZE = 128
OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; pinned so the bytes do not change with the onnx package's default
PRODUCER_NAME = "facegate.packs.dlib_resnet"
PRODUCER_VERSION = "1"  # bump when the graph built from the same file changes

# dlib's layer_mode enum (dlib/dnn/layers.h): affine_ in CONV_MODE has one gamma/beta per channel.
_CONV_MODE = 0
# dlib's fc_bias_mode enum: fc_no_bias (the descriptor's last layer) is FC_NO_BIAS.
_FC_NO_BIAS = 1


# ---------------------------------------------------------------------------------------------------------------
# Layers as plain numpy parameters, in forward order.


@dataclass(frozen=True)
class Conv:
    """``con_``: cross-correlation with zero padding; weight float32 (out, in, kh, kw), bias float32 (out,) or None.

    Output size is 1 + (in + 2·pad − k) // stride (notes §2.2). ``relu`` is dlib's ``con_6`` fused-ReLU flag.
    """

    weight: np.ndarray
    bias: np.ndarray | None
    stride: int
    pad: int
    relu: bool = False


@dataclass(frozen=True)
class Affine:
    """``affine_`` (CONV_MODE): y = x·gamma[c] + beta[c]; gamma, beta float32 (C,).

    ``enabled`` False: dlib's ``fuse_layers`` folded it into the preceding conv (``affine_2`` disabled flag, params
    cleared; dlib/dnn/visitors.h): an identity, gamma and beta empty.
    """

    gamma: np.ndarray
    beta: np.ndarray
    enabled: bool = True


@dataclass(frozen=True)
class Relu:
    """``relu_``: max(x, 0); ``enabled`` False (``relu_2`` disabled, fused into a ``con_6`` use_relu) = identity."""

    enabled: bool = True


@dataclass(frozen=True)
class MaxPool:
    """``max_pool_``: window×window, stride, no padding in this network (floor output size)."""

    window: int
    stride: int
    pad: int


@dataclass(frozen=True)
class AvgPool:
    """``avg_pool_``: window×window mean; ``window == 0`` is ``avg_pool_everything`` (mean over the whole map)."""

    window: int
    stride: int
    pad: int


@dataclass(frozen=True)
class Tag:
    """``tagN``: remembers the current tensor under id ``n`` (no data in the file)."""

    n: int


@dataclass(frozen=True)
class Skip:
    """``skipN``: the current tensor becomes the one last tagged ``n`` (no data in the file)."""

    n: int


@dataclass(frozen=True)
class AddPrev:
    """``add_prevN``: current + tagged ``n``; mismatched shapes add as zero-padded at the end (notes §2.3)."""

    n: int


@dataclass(frozen=True)
class Fc:
    """``fc_no_bias``: y = flatten(x) · weight; weight float32 (inputs, outputs) as stored (W[i][o])."""

    weight: np.ndarray


Layer = Conv | Affine | Relu | MaxPool | AvgPool | Tag | Skip | AddPrev | Fc


@dataclass
class DlibResnetParams:
    """Everything needed to run dlib's face descriptor, as plain numbers.

    * ``means``: float32 (3,), per-channel means in **R, G, B** order (122.782, 117.001, 104.298); the network
      input is (pixel − mean)/256 (notes §2.4);
    * ``chip_size``: 150 (input rows = cols);
    * ``layers``: forward order, including ``Tag``/``Skip`` markers (108 layers + 22 markers);
    * ``margin``, ``distance_threshold``: from dlib's ``loss_metric_`` (0.04, 0.6); 0.6 is dlib's recommended
      same-person Euclidean threshold;
    * ``source_name``, ``source_sha256``: the file read (base name) and the sha256 hex of its bytes.
    """

    means: np.ndarray
    chip_size: int
    layers: list[Layer]
    margin: float
    distance_threshold: float
    source_name: str = ""
    source_sha256: str = ""
    parameter_count: int = field(default=0)


# ---------------------------------------------------------------------------------------------------------------
# The hard-coded topology (dlib examples/dnn_face_recognition_ex.cpp, notes §2.3), forward order.
# Entries: ("con", filters, kernel, stride), ("affine",), ("relu",), ("max_pool", window, stride),
# ("avg_pool", window, stride) with window 0 = avg_pool_everything, ("tag", n), ("skip", n), ("add_prev", n),
# ("fc", outputs).


def _block(n: int, stride: int) -> list[tuple]:
    return [("con", n, 3, stride), ("affine",), ("relu",), ("con", n, 3, 1), ("affine",)]


def _ares(n: int) -> list[tuple]:
    return [("tag", 1), *_block(n, 1), ("add_prev", 1), ("relu",)]


def _ares_down(n: int) -> list[tuple]:
    return [("tag", 1), *_block(n, 2), ("tag", 2), ("skip", 1), ("avg_pool", 2, 2), ("add_prev", 2), ("relu",)]


def _topology() -> list[tuple]:
    ops: list[tuple] = [("con", 32, 7, 2), ("affine",), ("relu",), ("max_pool", 3, 2)]
    ops += _ares(32) * 3  # level4
    ops += _ares_down(64) + _ares(64) * 3  # level3
    ops += _ares_down(128) + _ares(128) * 2  # level2
    ops += _ares_down(256) + _ares(256) * 2  # level1
    ops += _ares_down(256)  # level0
    ops += [("avg_pool", 0, 1), ("fc", DESCRIPTOR_SIZE)]
    return ops


TOPOLOGY: tuple[tuple, ...] = tuple(_topology())


def _default_pad(kernel: int, stride: int) -> int:
    """dlib's default padding: k//2 at stride 1, else 0 (``con_``/pooling template defaults in layers.h)."""
    return kernel // 2 if stride == 1 else 0


def _out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return 1 + (size + 2 * pad - kernel) // stride


# ---------------------------------------------------------------------------------------------------------------
# Reading.


def _read_tail(r: DlibReader, version: int, innermost: bool, index: int) -> None:
    """The wrapper fields after a layer's details: 3 bools and gradient/cache tensors (unused at inference)."""
    what = f"layer {index} state"
    for _ in range(3):
        r.bool(what)
    r.tensor(f"layer {index} x_grad")
    r.tensor(f"layer {index} cached_output")
    if innermost:
        r.tensor(f"layer {index} grad_final")
        if version >= 3:
            factor = r.uint(f"layer {index} sample_expansion_factor")
            if factor != 1:
                raise r.fail(f"sample_expansion_factor {factor}, expected 1")
    elif version >= 2:
        r.tensor(f"layer {index} params_grad")


def _expect(r: DlibReader, what: str, got: object, want: object) -> None:
    if got != want:
        raise r.fail(f"{what} is {got}, expected {want}")


def _skip_doubles(r: DlibReader, what: str, count: int = 4) -> None:
    for _ in range(count):
        r.float(what)  # learning-rate and weight-decay multipliers: training only


def _read_conv(r: DlibReader, index: int, filters: int, kernel: int, stride: int, channels: int) -> Conv:
    what = f"layer {index} (con)"
    version = r.expect_string("con_4", "con_5", "con_6")
    params = r.tensor(f"{what} params")
    _expect(r, f"{what} num_filters", r.int(what), filters)
    _expect(r, f"{what} kernel", (r.int(what), r.int(what)), (kernel, kernel))
    _expect(r, f"{what} stride", (r.int(what), r.int(what)), (stride, stride))
    pad = _default_pad(kernel, stride)
    _expect(r, f"{what} padding", (r.int(what), r.int(what)), (pad, pad))
    _expect(r, f"{what} filters alias", r.alias_tensor(what), (filters, channels, kernel, kernel))
    biases = r.alias_tensor(what)
    _skip_doubles(r, what)
    use_bias = r.bool(what) if version in ("con_5", "con_6") else True
    use_relu = r.bool(what) if version == "con_6" else False
    n_weights = filters * channels * kernel * kernel
    if use_bias:
        _expect(r, f"{what} biases alias", biases, (1, filters, 1, 1))
    count = n_weights + (filters if use_bias else 0)
    _expect(r, f"{what} params shape", params.shape, (count, 1, 1, 1))
    flat = params.reshape(-1)
    if not np.isfinite(flat).all():
        raise r.fail(f"non-finite values in {what} params")
    weight = flat[:n_weights].reshape(filters, channels, kernel, kernel)
    bias = flat[n_weights:].copy() if use_bias else None
    return Conv(weight=weight.copy(), bias=bias, stride=stride, pad=pad, relu=use_relu)


def _read_affine(r: DlibReader, index: int, channels: int) -> Affine:
    what = f"layer {index} (affine)"
    version = r.expect_string("affine_", "affine_2")
    params = r.tensor(f"{what} params")
    _expect(r, f"{what} gamma alias", r.alias_tensor(what), (1, channels, 1, 1))
    _expect(r, f"{what} beta alias", r.alias_tensor(what), (1, channels, 1, 1))
    _expect(r, f"{what} mode", r.int(what), _CONV_MODE)
    if version == "affine_2" and r.bool(what):
        _expect(r, f"{what} (disabled) params size", params.size, 0)
        empty = np.zeros(0, np.float32)
        return Affine(gamma=empty, beta=empty, enabled=False)
    _expect(r, f"{what} params shape", params.shape, (2 * channels, 1, 1, 1))
    flat = params.reshape(-1)
    if not np.isfinite(flat).all():
        raise r.fail(f"non-finite values in {what} params")
    return Affine(gamma=flat[:channels].copy(), beta=flat[channels:].copy())


def _read_relu(r: DlibReader, index: int) -> Relu:
    version = r.expect_string("relu_", "relu_2")
    return Relu(enabled=not (version == "relu_2" and r.bool(f"layer {index} (relu)")))


def _read_pool(r: DlibReader, index: int, name: str, window: int, stride: int) -> int:
    """``max_pool_2``/``avg_pool_2`` details; returns the padding. ``window`` 0 = ``avg_pool_everything``."""
    what = f"layer {index} ({name})"
    r.expect_string(f"{name}_2")
    _expect(r, f"{what} window", (r.int(what), r.int(what)), (window, window))
    _expect(r, f"{what} stride", (r.int(what), r.int(what)), (stride, stride))
    pad = _default_pad(window, stride) if window else 0
    _expect(r, f"{what} padding", (r.int(what), r.int(what)), (pad, pad))
    return pad


def _read_fc(r: DlibReader, index: int, outputs: int, inputs: int) -> Fc:
    what = f"layer {index} (fc)"
    version = r.expect_string("fc_2", "fc_3")
    _expect(r, f"{what} num_outputs", r.uint(what), outputs)
    _expect(r, f"{what} num_inputs", r.uint(what), inputs)
    params = r.tensor(f"{what} params")
    _expect(r, f"{what} params shape", params.shape, (inputs, outputs, 1, 1))
    _expect(r, f"{what} weights alias", r.alias_tensor(what), (inputs, outputs, 1, 1))
    _expect(r, f"{what} biases alias", r.alias_tensor(what), (0, 0, 0, 0))
    _expect(r, f"{what} bias mode", r.int(what), _FC_NO_BIAS)
    _skip_doubles(r, what)
    if version == "fc_3":
        r.bool(what)  # use_bias: meaningless for FC_NO_BIAS
    weight = params.reshape(inputs, outputs)
    if not np.isfinite(weight).all():
        raise r.fail(f"non-finite values in {what} params")
    return Fc(weight=weight.copy())


def read_dlib_resnet(path: str | Path) -> DlibResnetParams:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` into ``DlibResnetParams``.

    The layout (notes §2.1–2.2): loss header (``loss_metric_2``, margin, threshold); one version int per wrapper from
    the outermost (fc) inwards (130: 2 for layers, 1 for tag/skip, 3 for the innermost); the input layer
    (``input_rgb_image_sized``: R, G, B float means, 150, 150); then the 108 layer records in forward order, each
    details + wrapper tail. The file must end exactly after the last record. The newer record versions dlib writes
    today (``con_5/6``, ``affine_2``, ``relu_2``, ``fc_3``; notes §2.6) are accepted, including layers that dlib's
    ``fuse_layers`` disabled (affine folded into the conv, relu fused via ``use_relu``; from dlib's source, tested
    only against files written by our own test encoder); batch-norm records (``bn_con2``) are not.

    Raises ``ModelError`` naming the file when it is missing, unreadable, truncated, has trailing bytes, or any
    record name, hyper-parameter or shape differs from dlib's face-descriptor network.
    """
    r = DlibReader.open(path)
    digest = hashlib.sha256(r.data).hexdigest()

    _expect(r, "loss layer version", r.int("loss version"), 1)
    r.expect_string("loss_metric_2")
    margin = r.float("loss margin")
    threshold = r.float("loss distance_threshold")

    kinds = [op[0] for op in TOPOLOGY]
    versions = [r.int("layer version") for _ in kinds]
    # versions[0] belongs to the outermost wrapper, i.e. the last forward op.
    for i, (kind, version) in enumerate(zip(reversed(kinds), versions, strict=True)):
        if kind in ("tag", "skip"):
            allowed: tuple[int, ...] = (1,)
        elif i == len(kinds) - 1:
            allowed = (2, 3)  # the wrapper around the input layer; v2 lacks sample_expansion_factor
        else:
            allowed = (1, 2)  # v1 lacks params_grad
        if version not in allowed:
            raise r.fail(f"wrapper version {version} for {kind} (wrapper {i} from the outside), expected {allowed}")
    forward_versions = versions[::-1]

    r.expect_string("input_rgb_image_sized")
    means = np.array([r.float("mean red"), r.float("mean green"), r.float("mean blue")], dtype=np.float32)
    if not np.all((means >= 0) & (means <= 255)):
        raise r.fail(f"input means {means.tolist()} outside 0..255")
    _expect(r, "input size", (r.uint("input rows"), r.uint("input cols")), (CHIP_SIZE, CHIP_SIZE))

    layers: list[Layer] = []
    channels, size = 3, CHIP_SIZE
    tagged: dict[int, tuple[int, int]] = {}
    first_real = min(i for i, k in enumerate(kinds) if k not in ("tag", "skip"))
    for index, op in enumerate(TOPOLOGY):
        kind = op[0]
        if kind == "tag":
            tagged[op[1]] = (channels, size)
            layers.append(Tag(op[1]))
            continue
        if kind == "skip":
            channels, size = tagged[op[1]]
            layers.append(Skip(op[1]))
            continue
        if kind == "con":
            _, filters, kernel, stride = op
            layer: Layer = _read_conv(r, index, filters, kernel, stride, channels)
            channels, size = filters, _out_size(size, kernel, stride, layer.pad)
        elif kind == "affine":
            layer = _read_affine(r, index, channels)
        elif kind == "relu":
            layer = _read_relu(r, index)
        elif kind == "max_pool":
            _, window, stride = op
            pad = _read_pool(r, index, "max_pool", window, stride)
            layer = MaxPool(window, stride, pad)
            size = _out_size(size, window, stride, pad)
        elif kind == "avg_pool":
            _, window, stride = op
            pad = _read_pool(r, index, "avg_pool", window, stride)
            layer = AvgPool(window, stride, pad)
            size = 1 if window == 0 else _out_size(size, window, stride, pad)
        elif kind == "add_prev":
            r.expect_string("add_prev_")
            other_channels, other_size = tagged[op[1]]
            channels, size = max(channels, other_channels), max(size, other_size)
            layer = AddPrev(op[1])
        elif kind == "fc":
            layer = _read_fc(r, index, op[1], channels * size * size)
            channels, size = op[1], 1
        else:  # pragma: no cover - TOPOLOGY is a constant
            raise AssertionError(kind)
        _read_tail(r, forward_versions[index], index == first_real, index)
        layers.append(layer)
    if not r.at_end:
        raise r.fail(f"{len(r.data) - r.pos} unexpected bytes after the last layer record")

    count = sum(
        sum(
            int(a.size) for a in (getattr(layer, f, None) for f in ("weight", "bias", "gamma", "beta")) if a is not None
        )
        for layer in layers
    )
    log.debug("dlib_resnet read file=%s parameters=%d sha256=%s", path, count, digest)
    return DlibResnetParams(
        means=means,
        chip_size=CHIP_SIZE,
        layers=layers,
        margin=margin,
        distance_threshold=threshold,
        source_name=Path(path).name,
        source_sha256=digest,
        parameter_count=count,
    )


# ---------------------------------------------------------------------------------------------------------------
# ONNX graph.


class _GraphBuilder:
    """Collects nodes and initialisers with deterministic names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str, **attrs: object) -> str:
        self._count += 1
        out = f"{prefix}_{self._count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self._count}", **attrs))
        return out


def _fold_affine(conv: Conv, affine: Affine) -> tuple[np.ndarray, np.ndarray]:
    """conv then per-channel x·gamma + beta == conv with weight·gamma[o] and bias·gamma + beta (float64, to f32)."""
    gamma = affine.gamma.astype(np.float64)
    weight = conv.weight.astype(np.float64) * gamma[:, None, None, None]
    bias = np.zeros(len(gamma)) if conv.bias is None else conv.bias.astype(np.float64)
    return weight.astype(np.float32), (bias * gamma + affine.beta.astype(np.float64)).astype(np.float32)


def build_resnet_onnx(params: DlibResnetParams, fold_affine: bool = True) -> onnx.ModelProto:
    """Build the ONNX graph (opset 17) of dlib's face-descriptor network from ``params``.

    Input ``chips``: uint8 ``[N, 150, 150, 3]`` RGB NHWC; output ``descriptors``: float32 ``[N, 128]``; ``N`` is a
    dynamic dimension. Preprocessing is in the graph: Cast → Transpose to NCHW → Sub the float32 R, G, B means →
    Mul 1/256 (dlib's divisor is 256, exactly; notes §2.4). Then Conv (affine folded into it when ``fold_affine``,
    else Mul + Add), Relu, MaxPool, AveragePool, ``add_prev`` as Pad (zeros at the end of C, H, W up to the
    element-wise max shape) then Add — dlib's rule for mismatched shapes, essential at the downsampling blocks
    (notes §2.3) — GlobalAveragePool, Flatten, MatMul with the stored 256×128 matrix.

    The graph is checked with ``onnx.checker`` (full check, with shape inference). For a given onnx version the
    serialised bytes are a function of ``params`` only (fixed IR version, producer strings and node names).
    """
    g = _GraphBuilder()
    size = params.chip_size
    x = g.node("Cast", [INPUT_NAME], "x", to=TensorProto.FLOAT)
    x = g.node("Transpose", [x], "x", perm=[0, 3, 1, 2])
    x = g.node("Sub", [x, g.const("means_rgb", params.means.reshape(1, 3, 1, 1).astype(np.float32))], "x")
    x = g.node("Mul", [x, g.const("inv_256", np.array(1.0 / 256.0, dtype=np.float32))], "x")

    channels = 3
    tagged: dict[int, tuple[str, int, int]] = {}
    layers = params.layers
    i = 0
    while i < len(layers):
        layer = layers[i]
        k = i  # initialiser names carry the layer index
        if isinstance(layer, Conv):
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if fold_affine and isinstance(nxt, Affine) and nxt.enabled and not layer.relu:
                weight, bias = _fold_affine(layer, nxt)
                i += 1
            else:
                weight = layer.weight
                bias = layer.bias if layer.bias is not None else np.zeros(len(layer.weight), np.float32)
            kernel = weight.shape[2]
            x = g.node(
                "Conv",
                [x, g.const(f"conv{k}_w", weight), g.const(f"conv{k}_b", bias)],
                "x",
                kernel_shape=[kernel, kernel],
                strides=[layer.stride, layer.stride],
                pads=[layer.pad] * 4,
            )
            if layer.relu:
                x = g.node("Relu", [x], "x")
            channels, size = weight.shape[0], _out_size(size, kernel, layer.stride, layer.pad)
        elif isinstance(layer, Affine | Relu) and not layer.enabled:
            pass  # fused into the preceding conv by dlib
        elif isinstance(layer, Affine):
            x = g.node("Mul", [x, g.const(f"affine{k}_gamma", layer.gamma.reshape(1, -1, 1, 1))], "x")
            x = g.node("Add", [x, g.const(f"affine{k}_beta", layer.beta.reshape(1, -1, 1, 1))], "x")
        elif isinstance(layer, Relu):
            x = g.node("Relu", [x], "x")
        elif isinstance(layer, MaxPool):
            x = g.node(
                "MaxPool", [x], "x", kernel_shape=[layer.window] * 2, strides=[layer.stride] * 2, pads=[layer.pad] * 4
            )
            size = _out_size(size, layer.window, layer.stride, layer.pad)
        elif isinstance(layer, AvgPool):
            if layer.window == 0:
                x = g.node("GlobalAveragePool", [x], "x")
                size = 1
            else:
                x = g.node(
                    "AveragePool",
                    [x],
                    "x",
                    kernel_shape=[layer.window] * 2,
                    strides=[layer.stride] * 2,
                    pads=[layer.pad] * 4,
                )
                size = _out_size(size, layer.window, layer.stride, layer.pad)
        elif isinstance(layer, Tag):
            tagged[layer.n] = (x, channels, size)
        elif isinstance(layer, Skip):
            x, channels, size = tagged[layer.n]
        elif isinstance(layer, AddPrev):
            other, other_channels, other_size = tagged[layer.n]
            out_channels, out_size = max(channels, other_channels), max(size, other_size)
            operands = []
            for name, c, s in ((x, channels, size), (other, other_channels, other_size)):
                if (c, s) != (out_channels, out_size):
                    pads = np.array([0, 0, 0, 0, 0, out_channels - c, out_size - s, out_size - s], dtype=np.int64)
                    name = g.node("Pad", [name, g.const(f"pad{k}_{len(operands)}", pads)], "x", mode="constant")
                operands.append(name)
            x = g.node("Add", operands, "x")
            channels, size = out_channels, out_size
        elif isinstance(layer, Fc):
            x = g.node("Flatten", [x], "x", axis=1)
            x = g.node("MatMul", [x, g.const(f"fc{k}_w", layer.weight)], "x")
            channels, size = layer.weight.shape[1], 1
        else:  # pragma: no cover - layers come from read_dlib_resnet
            raise TypeError(f"unknown layer {layer!r}")
        i += 1
    g.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name="output"))

    graph = helper.make_graph(
        g.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", params.chip_size, params.chip_size, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", channels])],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        doc_string=(
            "dlib ResNet face descriptor converted by facegate. Input chips: uint8 [N,150,150,3] RGB NHWC, "
            "aligned as dlib get_face_chip(size=150, padding=0.25). Output descriptors: float32 [N,128], "
            "unnormalised; compare with Euclidean distance."
        ),
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model,
        {
            "source": params.source_name,
            "source_sha256": params.source_sha256,
            "metric": "euclidean",
            "distance_threshold": repr(params.distance_threshold),
            "colour_order": "RGB",
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def convert_dlib_resnet(dat_path: str | Path, onnx_path: str | Path) -> str:
    """Read ``dat_path`` (dlib's ``.dat``), write the ONNX graph to ``onnx_path`` atomically; return its sha256 hex.

    Atomic: the bytes go to a temporary file in the destination folder, are fsynced, then ``os.replace`` moves them
    into place (a crash never leaves a half-written model). Raises ``ModelError`` naming the file for a bad
    ``.dat`` file or a destination that cannot be written.
    """
    model = build_resnet_onnx(read_dlib_resnet(dat_path))
    data = model.SerializeToString(deterministic=True)
    onnx_path = Path(onnx_path)
    try:
        write_atomic(onnx_path, data)
    except OSError as exc:
        raise ModelError(
            f"{onnx_path}: cannot write the converted model ({exc.strerror}); check that its folder is writable"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    log.info("dlib_resnet converted src=%s dst=%s sha256=%s bytes=%d", dat_path, onnx_path, digest, len(data))
    return digest
