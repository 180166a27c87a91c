"""Daemon pipeline benchmark: facegate against the face_recognition-style peer on the shared videos, same run.

Part 1, throughput on the same decoded frames (no capture pacing):

* facegate: ``FacePipeline`` (the ``dlib`` pack: the peer's recogniser; the built-in ``default`` pack runs
  MobileFaceNet as well, ≈ 3× the embedding time) detect → align → embed per frame, one frame per call as the
  daemon does with one camera (``batch 1``) and four frames per call as it does with four cameras (``batch 4``);
* peer: what ageitgey/face_recognition runs by default, via dlib-bin: HOG frontal face detector with one
  upsampling, 5-point shape predictor, ResNet descriptor (``compute_face_descriptor``), on RGB frames.

It prints frames/s, faces/s, faces found and process CPU seconds per frame for each, and the ratios
(facegate / peer). The CPU-time ratio stays meaningful on a busy shared machine; wall-time ratios do not.

Part 2, the running daemon (``facegate run`` as a subprocess, real Mosquitto on a free port, the stage clip
played in real time and looped, Lin-Manuel Miranda enrolled so grants happen): for 1 and 4 cameras, frames/s
and faces/s actually processed, the daemon's peak RSS (``VmHWM``), and the latency from the capture of the frame
that completed a decision (payload ``captured_at``, wall clock at the read) to its arrival at an MQTT subscriber
(p50/p99 over every event).

Targets (issue 5): p99 decision latency ≤ 100 ms with one camera; ≥ 5× the peer's frames/s on the stage clip and
≥ 10× on the 1080p crowd clip, with no fewer faces found.

Run::

    python bench/pipeline_bench.py                     # everything (several minutes on 2 cores)
    python bench/pipeline_bench.py --skip-peer --daemon-seconds 20 --json bench/pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEGATE_SHARED", REPO.parent / "shared")).resolve()
VIDEOS = SHARED / "data" / "videos"
CLIPS = {
    "stage_clip_640x360.mp4": VIDEOS / "stage_clip_640x360.mp4",
    "crowd_walking_1080p.mp4": VIDEOS / "crowd_walking_1080p.mp4",
}
MIRANDA_PHOTO = SHARED / "data" / "enroll_examples" / "single" / "lin-manuel-miranda.png"


def read_frames(path: Path, limit: int | None) -> list[np.ndarray]:
    """Decoded BGR frames of a video (all, or the first ``limit``)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while limit is None or len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        sys.exit(f"{path}: no frames decoded")
    return frames


def _timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


# ---------------------------------------------------------------------------------------------------------------
# Part 1: throughput on the same frames


def bench_facegate(frames: list[np.ndarray], batch: int, threads: int | None, min_face_px: int = 0,
                   providers: list[str] | None = None, pack: str = "dlib") -> dict:
    """Detect every face; embed those at least ``min_face_px`` wide (0 = all), as the daemon's inference stage does
    with ``decision.min_face_px``. ``faces`` counts faces found; ``embedded`` those recognised. ``providers``: ONNX
    Runtime execution providers (None: CUDA when available, then CPU). ``pack``: ``dlib`` (the same recogniser as
    the dlib peer) or ``default`` (the fused built-in pack: both recognisers)."""
    from facegate.pipeline import FacePipeline

    pipe = FacePipeline.load(pack, providers=providers, threads=threads, with_liveness=False)
    pipe.embed_many(frames[:2], pipe.detect(frames[:2]))  # warm-up
    faces = embedded = 0

    def run() -> None:
        nonlocal faces, embedded
        for i in range(0, len(frames), batch):
            chunk = frames[i : i + batch]
            dets = pipe.detect(chunk)
            faces += sum(len(d) for d in dets)
            if min_face_px:
                dets = [d[d.widths >= min_face_px] for d in dets]
            emb = pipe.embed_many(chunk, dets)
            embedded += sum(len(e) for e in emb)

    wall, cpu = _timed(run)
    case = f"facegate batch {batch}" + (f" min {min_face_px}px" if min_face_px else "")
    return {"case": case, "frames": len(frames), "faces": faces, "embedded": embedded, "wall_s": wall,
            "cpu_s": cpu, "providers": pipe.providers}


def bench_peer(frames: list[np.ndarray]) -> dict:
    import dlib
    import face_recognition_models

    models = Path(face_recognition_models.__file__).parent / "models"
    detector = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    rec = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    rgb = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames]
    faces = 0

    def run() -> None:
        nonlocal faces
        for img in rgb:
            rects = detector(img, 1)
            for r in rects:
                rec.compute_face_descriptor(img, sp(img, r))
            faces += len(rects)

    wall, cpu = _timed(run)
    return {"case": "peer dlib HOG+5pt+ResNet", "frames": len(frames), "faces": faces, "wall_s": wall, "cpu_s": cpu}


def throughput(args: argparse.Namespace) -> list[dict]:
    rows = []
    for name, path in CLIPS.items():
        frames = read_frames(path, args.max_frames)
        results = [bench_facegate(frames, b, args.threads, m, args.providers)
                   for m in (0, args.min_face_px) for b in args.batches]
        peer = None if args.skip_peer else bench_peer(frames)
        every = results + ([peer] if peer else [])
        for r in every:
            r["clip"] = name
            r["fps"] = r["frames"] / r["wall_s"]
            r["faces_per_s"] = r["faces"] / r["wall_s"]
            r["cpu_ms_per_frame"] = 1000 * r["cpu_s"] / r["frames"]
        for r in every:
            if peer and r is not peer:
                r["fps_ratio"] = r["fps"] / peer["fps"]
                r["cpu_ratio"] = peer["cpu_s"] / r["cpu_s"]
                r["faces_ratio"] = r["faces"] / max(1, peer["faces"])
            rows.append(r)
            print(f"{name:26s} {r['case']:26s} frames={r['frames']:4d} faces={r['faces']:4d} "
                  f"embedded={r.get('embedded', r['faces']):4d} "
                  f"fps={r['fps']:7.2f} faces/s={r['faces_per_s']:7.2f} cpu_ms/frame={r['cpu_ms_per_frame']:7.1f}"
                  + (f"  ×{r['fps_ratio']:.1f} fps, ×{r['cpu_ratio']:.1f} cpu, faces ×{r['faces_ratio']:.2f}"
                     if "fps_ratio" in r else ""), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Part 2: the running daemon


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mosquitto(work: Path) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    sys.exit("mosquitto did not start")


def _subscribe(port: int, received: list) -> object:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2)

    def on_message(c, u, msg) -> None:
        if msg.topic.endswith("/event"):
            received.append((json.loads(msg.payload), datetime.now(UTC)))

    client.on_connect = lambda c, u, f, r, p: c.subscribe("bench/#", qos=1)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def start_daemon(config: Path, log: Path, what: str, timeout_s: float) -> subprocess.Popen:
    """``facegate run --config config`` with its log in ``log``, once it logged READY; exits the bench naming
    ``what`` (with the log's tail) when it does not within ``timeout_s``."""
    proc = subprocess.Popen([sys.executable, "-m", "facegate.cli", "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if "event=ready" in log.read_text():
            return proc
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"{what}: daemon did not become ready:\n{log.read_text()[-3000:]}")


def _vm_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cpu_s(pid: int) -> float | None:
    """utime + stime of a process (s), from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_run(cameras: int, seconds: float, work: Path, gallery: Path, port: int, threads: int | None,
               providers: list[str] | None = None) -> dict:
    stage = CLIPS["stage_clip_640x360.mp4"]
    key = work / "signing.key"
    key.write_text("b" * 64)
    key.chmod(0o600)
    cfg = {
        "cameras": [{"id": f"cam{i}", "file": str(stage), "loop": True, "start_s": 2.6 + 0.37 * i, "stop_s": 7.0,
                     "door": "front"} for i in range(cameras)],
        "doors": [{"id": "front", "cooldown_s": 0}],
        "decision": {"repeat_after_s": 0.5},
        "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": "bench", "client_id": f"bench{cameras}"},
        "gallery": {"path": str(gallery)},
        "audit": {"path": str(work / f"audit{cameras}.jsonl")},
        "signing": {"algorithm": "hmac-sha256", "key_file": str(key)},
        "inference": {"threads": threads, "providers": providers},
        "service": {"state_dir": str(work / "state"), "stdout_events": False},
    }
    path = work / f"daemon{cameras}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    received: list = []
    client = _subscribe(port, received)
    log = work / f"daemon{cameras}.log"
    proc = start_daemon(path, log, f"{cameras} camera(s)", 120)
    t_ready = time.monotonic()
    received.clear()  # count from READY on
    cpu0 = _cpu_s(proc.pid)
    time.sleep(seconds)
    hwm = _vm_hwm_mib(proc.pid)
    cpu1 = _cpu_s(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    elapsed = time.monotonic() - t_ready
    client.loop_stop()
    text = log.read_text()
    stats = [line for line in text.splitlines() if "event=stats" in line][-1]
    fields = dict(kv.split("=", 1) for kv in stats.split() if kv.startswith(("frames=", "faces=", "cycle_ms=",
                                                                            "latency_ms_")))
    lat = np.array([(at - datetime.fromisoformat(e["captured_at"].replace("Z", "+00:00"))).total_seconds() * 1000
                    for e, at in received])
    by_type: dict[str, int] = {}
    for e, _ in received:
        by_type[e["type"]] = by_type.get(e["type"], 0) + 1
    row = {
        "cameras": cameras, "seconds": round(elapsed, 1),
        "frames_processed": int(fields["frames"]), "faces": int(fields["faces"]),
        "fps": int(fields["frames"]) / elapsed, "faces_per_s": int(fields["faces"]) / elapsed,
        "peak_rss_mib": hwm, "events": len(received), "by_type": by_type,
        "cpu_ms_per_frame": (1000 * (cpu1 - cpu0) / max(1, int(fields["frames"]))) if cpu0 is not None else None,
        "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
        "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None,
        "latency_ms_max": float(lat.max()) if len(lat) else None,
        # the daemon's own split: capture → inference done, capture → audited and queued for MQTT
        "daemon_cycle_ms": fields.get("cycle_ms"),
        **{f"daemon_{k}": v for k, v in fields.items() if k.startswith("latency_ms_")},
    }
    p50, p99 = row["latency_ms_p50"], row["latency_ms_p99"]
    print(f"daemon cameras={cameras} fps={row['fps']:.1f} faces/s={row['faces_per_s']:.1f} "
          f"cpu_ms/frame={row['cpu_ms_per_frame']:.0f} rss={hwm:.0f} MiB events={len(received)} {by_type} "
          f"latency p50={p50 if p50 is None else round(p50)} ms p99={p99 if p99 is None else round(p99)} ms "
          f"(daemon: cycle {fields.get('cycle_ms')} ms, inferred p50/p99 {fields.get('latency_ms_inferred_p50')}/"
          f"{fields.get('latency_ms_inferred_p99')} ms, emitted p50/p99 {fields.get('latency_ms_emitted_p50')}/"
          f"{fields.get('latency_ms_emitted_p99')} ms)", flush=True)
    return row


def daemon_part(args: argparse.Namespace) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="facegate-bench-"))
    gallery = work / "gallery"
    enrol = subprocess.run([sys.executable, "-m", "facegate.cli", "enroll", "--gallery", str(gallery), "--name",
                            "Lin-Manuel Miranda", str(MIRANDA_PHOTO)], capture_output=True, text=True)
    if enrol.returncode != 0:
        sys.exit(f"enrolment failed: {enrol.stderr}")
    broker, port = _mosquitto(work)
    try:
        return [daemon_run(n, args.daemon_seconds, work, gallery, port, args.threads, args.providers)
                for n in (1, 4)]
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-frames", type=int, default=None, help="use only the first N frames of each clip")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--providers", type=lambda s: [p for p in s.split(",") if p], default=None,
                        help="ONNX Runtime execution providers, e.g. CUDAExecutionProvider,CPUExecutionProvider "
                        "(default: CUDA when available, then CPU)")
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",") if b], default=[1, 4],
                        help="frames per detection call in part 1, comma-separated (default 1,4)")
    parser.add_argument("--min-face-px", type=int, default=40,
                        help="the daemon's decision.min_face_px for the 'min' cases (default 40, as config)")
    parser.add_argument("--skip-peer", action="store_true", help="skip the dlib peer (no ratios)")
    parser.add_argument("--skip-daemon", action="store_true", help="skip part 2")
    parser.add_argument("--skip-throughput", action="store_true", help="skip part 1")
    parser.add_argument("--daemon-seconds", type=float, default=30.0, help="how long each daemon run lasts")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    for path in [*CLIPS.values(), MIRANDA_PHOTO]:
        if not path.exists():
            sys.exit(f"needs {path} (the shared data folder)")
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "when": datetime.now(UTC).isoformat(timespec="seconds"), "providers": args.providers}}
    if not args.skip_throughput:
        out["throughput"] = throughput(args)
    if not args.skip_daemon:
        out["daemon"] = daemon_part(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
