"""One place that creates ONNX Runtime sessions (providers, threads, clear errors for bad model files) and checks
a session's inputs and outputs against what the manifest expects.

CUDA is used when ``onnxruntime-gpu`` is installed and a GPU is present; CPU always works. The provider really
obtained is logged (ONNX Runtime silently falls back to CPU when CUDA cannot start).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from facegate.errors import ModelError, UsageError
from facegate.limits import thread_count_problem

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int64)": np.int64}


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build offers it, then CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def make_session(
    model: str | Path | bytes,
    name: str,
    providers: Sequence[str] | None = None,
    intra_op_threads: int | None = None,
) -> ort.InferenceSession:
    """Create an ``InferenceSession`` for a model file path or serialised bytes.

    ``name`` names the model in errors and logs. ``intra_op_threads`` None lets ONNX Runtime choose; otherwise it
    must pass ``facegate.limits.thread_count_problem`` (1 … this process's CPUs), the check every command makes.
    Raises ``UsageError`` for a bad thread count, ``ModelError`` naming the model when the file is missing,
    truncated or not a valid ONNX graph.
    """
    if intra_op_threads is not None and (problem := thread_count_problem(intra_op_threads)):
        raise UsageError(f"threads: {problem}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    # 4 = fatal only. ORT warns about shape inference on some third-party graphs (we check shapes), and it would
    # print an error line per failed run on stderr: a model failing at run time is reported by the inference stage
    # once per episode (runtime/health.py), and load errors are raised and named below.
    options.log_severity_level = 4
    providers = list(providers or default_providers())
    if isinstance(model, str | Path) and not Path(model).is_file():
        raise ModelError(f"{name}: model file {model} not found; run `facegate models prepare`")
    try:
        source = model if isinstance(model, bytes) else str(model)
        session = ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises several private exception types for bad graphs
        where = "" if isinstance(model, bytes) else f" ({model})"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{name}{where}: not a loadable ONNX model: {first_line[:300]}; the file is corrupt or truncated: "
            "run `facegate models prepare --force` or replace it"
        ) from None
    got = session.get_providers()
    log.info("model=%s providers=%s requested=%s", name, ",".join(got), ",".join(providers))
    return session


def check_io(
    session: ort.InferenceSession,
    name: str,
    inputs: Sequence[tuple[str | None, int, str]],
    outputs: Sequence[tuple[str | None, int, str]],
) -> None:
    """Check a session's inputs/outputs against what a manifest expects.

    Each expectation is (name or None for any, rank, ORT type such as ``tensor(float)``), in graph order.
    Raises ``ModelError`` naming the model and the mismatch.
    """
    for kind, got, want in (("inputs", session.get_inputs(), inputs), ("outputs", session.get_outputs(), outputs)):
        if len(got) != len(want):
            raise ModelError(
                f"{name}: graph has {len(got)} {kind} ({', '.join(g.name for g in got)}), the manifest expects "
                f"{len(want)}; is this the right model file for this pack?"
            )
        for arg, (want_name, want_rank, want_type) in zip(got, want, strict=True):
            if want_name is not None and arg.name != want_name:
                raise ModelError(f"{name}: {kind[:-1]} named {arg.name!r}, expected {want_name!r}")
            if len(arg.shape) != want_rank:
                raise ModelError(f"{name}: {kind[:-1]} {arg.name!r} has shape {arg.shape}, expected rank {want_rank}")
            if arg.type != want_type:
                raise ModelError(f"{name}: {kind[:-1]} {arg.name!r} has type {arg.type}, expected {want_type}")


def model_label(label: str, model: str | Path | bytes) -> str:
    """How errors and logs name a model: its kind label, plus the file when it was loaded from one."""
    return label if isinstance(model, bytes) else f"{label} ({model})"



def io_bound_runner(session: ort.InferenceSession, input_name: str, output_name: str):
    """``run(batch) -> output`` through ONNX Runtime's IO binding (``InferenceSession.io_binding``): the input is
    copied once into an ``OrtValue`` on the session's device (CUDA device 0 when CUDA is the session's first
    provider, else the CPU) and the output is allocated there by ONNX Runtime, then copied back to a numpy array.

    On CUDA this avoids ONNX Runtime's own staging copies of a numpy input; on the CPU it runs the same code path
    for no gain (so it can be tested without a GPU). ``batch``: the float32 input array; returns a float32 array.
    Used by bench/embed_bench.py ``--io-binding``; the daemon does not use it.
    """
    device = "cuda" if session.get_providers()[:1] == ["CUDAExecutionProvider"] else "cpu"
    binding = session.io_binding()

    def run(batch: np.ndarray) -> np.ndarray:
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(batch), device, 0)
        binding.bind_ortvalue_input(input_name, value)
        binding.bind_output(output_name, device, 0)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    return run


def float16_model(path: str | Path) -> bytes:
    """A float16 copy of the ONNX model at ``path`` whose inputs and outputs stay float32, as serialised bytes:
    onnxconverter-common's ``convert_float_to_float16(model, keep_io_types=True)`` (the ``gpu`` extra installs it).

    fp16 halves the weights' memory and uses the tensor cores of a GPU; on the CPU it brings nothing (ONNX Runtime
    1.32 ran the dlib ResNet's fp16 copy at about its float32 speed here, embeddings within 3e-4 of float32).
    Raises ``ModelError`` when onnxconverter-common is not installed or the conversion fails. Used by
    bench/embed_bench.py ``--fp16``; the daemon does not use it.
    """
    import onnx

    try:
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError:
        raise ModelError("fp16 needs onnxconverter-common: pip install -e '.[gpu]'") from None
    model = onnx.load(str(path))
    # the graph's own Cast nodes (e.g. uint8 chips → float) keep their float32 output: the converter retypes their
    # outputs but not their ``to`` attribute, and inserts a float32 → float16 Cast after a blocked node itself
    casts = [n.name for n in model.graph.node if n.op_type == "Cast"]
    try:
        converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=casts)
    except Exception as exc:  # the converter raises assorted errors for graphs it cannot handle
        raise ModelError(f"{path}: cannot convert to float16: {exc}") from None
    return converted.SerializeToString()
