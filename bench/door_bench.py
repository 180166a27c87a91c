"""Door-scenario benchmark (issue 16): what an idle camera costs, what deciding once per face saves, and 16 door
cameras on one box, each "before" (the detector on every frame, every face embedded on every frame: every camera's
``motion.enabled: false`` and ``decision.reverify_s: 0``) and "after" (the defaults) in the same run, with the
face_recognition-style peer (dlib HOG + 5-point + ResNet, ``pipeline_bench.bench_peer``) on the same frames.

Part 1, in process, on the same decoded frames (capture times at each clip's own rate, no pacing; the decision stage
runs with a real gallery, Lin-Manuel Miranda enrolled):

* ``idle``: CPU seconds per camera-second of the inference path (change test + gating + detection + tracking +
  decisions) on idle sources, before/after, and of decoding the same frames (what an idle camera costs at best);
  sources: the corridor clip's first 30 s (a person walks in at ~6 s, stands at the table, leaves), the corridor
  clip's empty first 5.5 s, and the stage clip's idle stand-in (the stage clip has no idle stretch: every frame after
  the wide shot holds a detectable face ≥ 40 px; so frame 10 of the wide shot, whose faces are under 40 px, is held
  still for 10 s with Gaussian sensor noise σ = 2 grey levels and written with OpenCV's MPEG-4 part 2 writer into
  the bench's temporary folder);
* ``stage``: the stage clip, before/after/peer: faces found, embeddings per frame, CPU ms per frame, decisions;
  ratios against the peer in CPU time;
* ``decode``: CPU ms to decode one frame of each clip (OpenCV/FFmpeg on the CPU, as the daemon's capture does),
  including the 1080p crowd clip, for sizing the 100-camera 1080p target.

Part 2, ``facegate run`` as a subprocess against a real Mosquitto (Miranda enrolled, door cooldown 0 and
``repeat_after_s`` 0.5 so that grants are frequent enough for latency percentiles; the stage clip's 1.8-4.6 s
looped: 0.94 s of a head seen from behind, then Miranda's close-up, so that every loop is a new passage with one
grant — ``presence_gap_s`` 0.8 is shorter than his absence and ``reverify_s`` 0.5 ("after"; 0 "before") shorter than
the gap; the default gap of 3 s would make the whole looped run one passage with one grant):

* ``busy1``: 1 camera, the stage clip at its own 29.97 frames/s, before/after;
* ``door1``: the stage camera alone at ``fps_limit: 10``, after (the baseline for the door scenario's grants);
* ``door16``: 16 cameras at 10 frames/s, 15 playing the corridor's empty 5.5 s (looped, staggered starts) and 1
  the stage clip, before/after: grants audited vs received at the subscriber and per minute, latency capture →
  subscriber p50/p99 over every event, daemon CPU in cores (process CPU s / wall s), frames dropped, peak RSS;
* peak RSS per added camera: (door16 after − door1 after) / 15;
* ``--scale N`` instead: N cameras playing the 1080p crowd clip at 10 frames/s (the 100-camera target's shape on a
  GPU box, ``bench/gpu_check.sh``): frames offered, delivered (decoded), processed, latency, CPU, RSS.

Targets (issue 16): door16 every grant arrives, p99 ≤ 150 ms, CPU within the 2 cores; stage clip ≥ ×5 the peer in
CPU time with no fewer faces; busy1 p99 ≤ 80 ms.

Run::

    python bench/door_bench.py --threads 1 --json bench/out/door.json       # ~10 min on 2 cores
    python bench/door_bench.py --quick                                      # smoke run, figures meaningless
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_bench import (  # noqa: E402
    MIRANDA_PHOTO,
    VIDEOS,
    _cpu_s,
    _mosquitto,
    _subscribe,
    _vm_hwm_mib,
    bench_peer,
    read_frames,
    start_daemon,
)

STAGE = VIDEOS / "stage_clip_640x360.mp4"
CORRIDOR = VIDEOS / "corridor" / "one-by-one-person-detection.mp4"
CROWD = VIDEOS / "crowd_walking_1080p.mp4"
MIRANDA = "Lin-Manuel Miranda"
#: The corridor clip is empty until a person enters at about 5.9 s (frame 59, measured with the change test).
CORRIDOR_EMPTY_S = 5.5


def still_clip(path: Path, seconds: float, fps: float = 10.0, sigma: float = 2.0) -> Path:
    """Frame 10 of the stage clip (the wide shot, faces under 40 px) held still for ``seconds`` with Gaussian
    sensor noise (``sigma`` grey levels, per pixel and frame, seed 16), written with OpenCV's MPEG-4 part 2 writer."""
    frame = read_frames(STAGE, 11)[10]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
    if not writer.isOpened():
        sys.exit("OpenCV cannot write an MPEG-4 video here")
    rng = np.random.default_rng(16)
    for _ in range(round(seconds * fps)):
        noisy = frame.astype(np.float32) + rng.normal(0.0, sigma, frame.shape).astype(np.float32)
        writer.write(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))
    writer.release()
    return path


def clip_fps(path: Path) -> float:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return fps if fps and 1 <= fps <= 240 else 25.0


def decode_ms(path: Path, limit: int) -> float:
    """Process CPU ms per decoded frame (OpenCV's FFmpeg backend, its default threads)."""
    cap = cv2.VideoCapture(str(path))
    c0, n = time.process_time(), 0
    while n < limit and cap.read()[0]:
        n += 1
    cap.release()
    return 1000 * (time.process_time() - c0) / max(1, n)


# ---------------------------------------------------------------------------------------------------------------
# Part 1: in process


class InProcess:
    """The daemon's inference and decision stages without threads: frames are fed with capture times at the clip's
    rate and the decision clock set 30 ms after each capture."""

    def __init__(self, gallery: Path, threads: int | None, providers: list[str] | None,
                 pack: str = "default") -> None:
        from facegate.pipeline import FacePipeline

        self.gallery, self.pack = gallery, pack
        self.pipe = FacePipeline.load(pack, providers=providers, threads=threads, with_liveness=False)
        self.pipe.embed_many([np.zeros((360, 640, 3), np.uint8)], self.pipe.detect([np.zeros((360, 640, 3),
                                                                                              np.uint8)]))

    def run(self, frames: list[np.ndarray], fps: float, *, after: bool, source: Path) -> dict:
        from facegate.config import Config
        from facegate.runtime.capture import Frame, FrameSlots
        from facegate.runtime.decision import DecisionEngine
        from facegate.runtime.gating import ChangeDetector
        from facegate.runtime.inference import InferenceStage
        from facegate.runtime.matching import LiveGallery
        from facegate.runtime.rules import AccessRules

        cfg = Config.model_validate({
            "cameras": [{"id": "cam", "file": str(source), "door": "front", "motion": {"enabled": after}}],
            "doors": [{"id": "front", "cooldown_s": 0}], "gallery": {"path": str(self.gallery)},
            "pack": self.pack, "decision": {"reverify_s": 1.0 if after else 0.0}})
        cam = cfg.cameras[0]
        live = LiveGallery.from_config(cfg, self.pipe)
        clock = {"now": 0.0}
        decisions: list = []
        engine = DecisionEngine.from_config(cfg, pipeline=self.pipe, search=live.search,
                                            rules=AccessRules.from_config(cfg), cameras=cfg.cameras,
                                            sink=decisions.append)
        engine.clock = lambda: clock["now"]
        stage = InferenceStage.from_config(cfg, self.pipe, FrameSlots(), engine.on_result, planner=engine)
        change = ChangeDetector(threshold=cam.motion.threshold, scale_px=cam.motion.scale_px, zone=cam.zone) \
            if after else None
        t0 = 1000.0
        wall0 = datetime(2026, 1, 1, tzinfo=UTC)
        c0 = time.process_time()
        for i, image in enumerate(frames):
            t = t0 + i / fps
            frame = Frame("cam", image, t, wall0 + timedelta(seconds=t), i, cam,
                          None if change is None else change.update(image))
            clock["now"] = t + 0.03
            stage.stats.frames += 1
            if not stage.wants_detection(frame):
                continue
            for result in stage.analyse([frame]):
                engine.on_result(result)
        cpu = time.process_time() - c0
        live.close()
        st = stage.stats
        found = st.faces + st.small_faces + st.outside_zone
        by_type: dict[str, int] = {}
        for d in decisions:
            by_type[d.type] = by_type.get(d.type, 0) + 1
        return {"frames": len(frames), "detected_frames": st.detected, "faces_found": found, "faces_kept": st.faces,
                "embedded": st.embedded, "embeddings_per_frame": st.embedded / len(frames), "cpu_s": cpu,
                "cpu_ms_per_frame": 1000 * cpu / len(frames), "camera_seconds": len(frames) / fps,
                "cpu_per_camera_second": cpu / (len(frames) / fps), "decisions": by_type}


def part1(args: argparse.Namespace, gallery: Path, work: Path) -> dict:
    rig = InProcess(gallery, args.threads, args.providers, args.pack)
    out: dict = {"idle": [], "stage": [], "decode_ms_per_frame": {}}
    limit = 60 if args.quick else None
    still = still_clip(work / "stage_still_noise.mp4", 3 if args.quick else 10)
    sources = [
        ("corridor, first 30 s", CORRIDOR, read_frames(CORRIDOR, 300 if not args.quick else 60)),
        ("corridor, empty 0-5.5 s ×3", CORRIDOR, read_frames(CORRIDOR, int(CORRIDOR_EMPTY_S * 10)) * 3),
        ("stage frame 10 still + noise σ2", still, read_frames(still, limit)),
    ]
    for name, path, frames in sources:
        fps = clip_fps(path)
        dec = decode_ms(path, len(frames))
        for after in (False, True):
            r = rig.run(frames, fps, after=after, source=path)
            r.update(source=name, case="after" if after else "before",
                     decode_cpu_per_camera_second=dec * fps / 1000)
            out["idle"].append(r)
            print(f"idle {name:34s} {r['case']:6s} frames={r['frames']} detected={r['detected_frames']} "
                  f"cpu/camera-s={r['cpu_per_camera_second'] * 1000:.1f} ms (decode alone "
                  f"{r['decode_cpu_per_camera_second'] * 1000:.1f} ms) {r['decisions']}", flush=True)
    frames = read_frames(STAGE, limit)
    fps = clip_fps(STAGE)
    rows = [dict(rig.run(frames, fps, after=False, source=STAGE), case="facegate before"),
            dict(rig.run(frames, fps, after=True, source=STAGE), case="facegate after")]
    if not args.skip_peer:
        peer = bench_peer(frames)
        peer["cpu_ms_per_frame"] = 1000 * peer["cpu_s"] / peer["frames"]
        for r in rows:
            r["cpu_ratio"] = peer["cpu_s"] / r["cpu_s"]
            r["faces_ratio"] = r["faces_found"] / max(1, peer["faces"])
        rows.append(peer)
    for r in rows:
        print(f"stage {r['case']:28s} frames={r['frames']} faces={r.get('faces_found', r.get('faces'))} "
              f"embedded/frame={r.get('embeddings_per_frame', 0):.2f} cpu_ms/frame={r['cpu_ms_per_frame']:.1f}"
              + (f" ×{r['cpu_ratio']:.2f} cpu vs peer, faces ×{r['faces_ratio']:.2f}" if "cpu_ratio" in r else "")
              + f" {r.get('decisions', '')}", flush=True)
    out["stage"] = rows
    for name, path in (("stage 640x360", STAGE), ("corridor 768x432", CORRIDOR), ("crowd 1920x1080", CROWD)):
        out["decode_ms_per_frame"][name] = decode_ms(path, 100)
    print(f"decode CPU ms/frame: {json.dumps({k: round(v, 2) for k, v in out['decode_ms_per_frame'].items()})}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Part 2: the daemon


def _stage_camera(cid: str, **kw) -> dict:
    return {"id": cid, "file": str(STAGE), "loop": True, "start_s": 1.8, "stop_s": 4.6, "door": "front", **kw}


def _idle_camera(i: int) -> dict:
    return {"id": f"idle{i:02d}", "file": str(CORRIDOR), "loop": True, "start_s": round(0.3 * (i % 15), 2),
            "stop_s": CORRIDOR_EMPTY_S, "door": "front", "fps_limit": 10}


def _audited_grants(audit: Path) -> list[str]:
    """Event ids of the grants in the audit log, in order."""
    from facegate.runtime.audit import read_audit

    if not audit.exists():
        return []
    return [r["event"]["event_id"] for r in read_audit(audit) if r["event"].get("type") == "grant"]


def daemon_run(name: str, cameras: list[dict], *, after: bool, seconds: float, work: Path, gallery: Path,
               port: int, threads: int | None, providers: list[str] | None, pack: str = "default") -> dict:
    key = work / "signing.key"
    key.write_text("b" * 64)
    key.chmod(0o600)
    if not after:
        cameras = [{**c, "motion": {"enabled": False}} for c in cameras]
    tag = f"{name}-{'after' if after else 'before'}"
    audit = work / f"audit-{tag}.jsonl"
    cfg = {
        "cameras": cameras,
        "doors": [{"id": "front", "cooldown_s": 0}],
        "decision": {"repeat_after_s": 0.5, "reverify_s": 0.5 if after else 0.0, "presence_gap_s": 0.8},
        "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": "bench", "client_id": tag},
        "gallery": {"path": str(gallery), "refresh_s": 0},
        "audit": {"path": str(audit)},
        "signing": {"algorithm": "hmac-sha256", "key_file": str(key)},
        "pack": pack, "inference": {"threads": threads, "providers": providers},
        "service": {"state_dir": str(work / "state"), "stdout_events": False, "ready_timeout_s": 60},
    }
    path = work / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    received: list = []
    client = _subscribe(port, received)
    log = work / f"{tag}.log"
    proc = start_daemon(path, log, tag, 180)
    time.sleep(2.0)  # let every camera settle (first frames, warm-up) before measuring
    received.clear()
    grants_before = len(_audited_grants(audit))
    load0 = os.getloadavg()[0]
    cpu0, w0 = _cpu_s(proc.pid), time.monotonic()
    time.sleep(seconds)
    cpu1, w1 = _cpu_s(proc.pid), time.monotonic()
    hwm = _vm_hwm_mib(proc.pid)
    load1 = os.getloadavg()[0]
    time.sleep(0.5)  # events decided in the window still in flight
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    client.loop_stop()
    granted_ids = _audited_grants(audit)[grants_before:]
    got_ids = {e["event_id"] for e, _ in received}
    text = log.read_text()
    stats = [line for line in text.splitlines() if "event=stats" in line][-1]
    fields = dict(kv.split("=", 1) for kv in stats.split() if kv.split("=", 1)[0] in (
        "frames", "detected", "faces", "embedded", "cycle_ms") or kv.startswith("latency_ms_"))
    cams = json.loads(stats.split("cameras=", 1)[1].split(" mqtt=", 1)[0])
    lat = np.array([(at - datetime.fromisoformat(e["captured_at"].replace("Z", "+00:00"))).total_seconds() * 1000
                    for e, at in received])
    by_type: dict[str, int] = {}
    for e, _ in received:
        by_type[e["type"]] = by_type.get(e["type"], 0) + 1
    wall = w1 - w0
    row = {
        "run": name, "case": "after" if after else "before", "cameras": len(cameras), "seconds": round(wall, 1),
        "cpu_cores": (cpu1 - cpu0) / wall, "peak_rss_mib": hwm, "loadavg_1min": [load0, load1],
        "events": len(received), "by_type": by_type,
        "grants_audited": len(granted_ids),
        "grants_received": sum(1 for i in granted_ids if i in got_ids),
        "grants_per_min": 60 * by_type.get("grant", 0) / wall,
        "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
        "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None,
        "latency_ms_max": float(lat.max()) if len(lat) else None,
        "frames_taken": int(fields["frames"]), "frames_detected": int(fields.get("detected", 0)),
        "faces": int(fields["faces"]), "embedded": int(fields.get("embedded", 0)), "cycle_ms": fields["cycle_ms"],
        "delivered": sum(c["frames"] for c in cams.values()), "dropped": sum(c["dropped"] for c in cams.values()),
        # the daemon's own split over its whole life: capture → inference done, capture → audited and queued
        **{f"daemon_{k}": v for k, v in fields.items() if k.startswith("latency_ms_")},
    }
    p50, p99 = row["latency_ms_p50"], row["latency_ms_p99"]
    print(f"daemon {tag:14s} cameras={row['cameras']} cpu={row['cpu_cores']:.2f} cores rss={hwm:.0f} MiB "
          f"events={row['events']} {by_type} grants audited/received={row['grants_audited']}/"
          f"{row['grants_received']} p50={p50 if p50 is None else round(p50)} ms "
          f"p99={p99 if p99 is None else round(p99)} ms taken={row['frames_taken']} "
          f"detected={row['frames_detected']} embedded={row['embedded']}/{row['faces']} "
          f"dropped={row['dropped']}/{row['delivered']} load={load0:.1f}->{load1:.1f}", flush=True)
    return row


def part2(args: argparse.Namespace, gallery: Path, work: Path) -> dict:
    broker, port = _mosquitto(work)
    kw = dict(seconds=args.daemon_seconds, work=work, gallery=gallery, port=port, threads=args.threads,
              providers=args.providers, pack=args.pack)
    rows = []
    if args.scale:
        try:  # the 100-camera target's shape: N cameras of 1080p at 10 frames/s, decode included
            crowd = [{"id": f"hd{i:03d}", "file": str(CROWD), "loop": True, "start_s": round(0.04 * (i % 100), 2),
                      "door": "front", "fps_limit": 10} for i in range(args.scale)]
            row = daemon_run(f"scale{args.scale}", crowd, after=True, **kw)
            row["offered_fps"] = 10 * args.scale
            row["processed_fps"] = row["frames_taken"] / row["seconds"]
            print(f"scale: {args.scale} cameras of 1080p offered {row['offered_fps']} frames/s, delivered "
                  f"{row['delivered']}, processed {row['processed_fps']:.0f} frames/s", flush=True)
            return {"runs": [row]}
        finally:
            broker.terminate()
            broker.wait(10)
    try:
        for after in (False, True):
            rows.append(daemon_run("busy1", [_stage_camera("stage")], after=after, **kw))
        rows.append(daemon_run("door1", [_stage_camera("stage", fps_limit=10)], after=True, **kw))
        door = [_stage_camera("stage", fps_limit=10)] + [_idle_camera(i) for i in range(args.idle_cameras)]
        for after in (False, True):
            rows.append(daemon_run("door16", door, after=after, **kw))
    finally:
        broker.terminate()
        broker.wait(10)
    one = next(r for r in rows if r["run"] == "door1")
    many = next(r for r in rows if r["run"] == "door16" and r["case"] == "after")
    per_camera = (many["peak_rss_mib"] - one["peak_rss_mib"]) / max(1, many["cameras"] - one["cameras"])
    print(f"peak RSS per added camera: {per_camera:.1f} MiB ({one['peak_rss_mib']:.0f} MiB with 1 camera, "
          f"{many['peak_rss_mib']:.0f} MiB with {many['cameras']})", flush=True)
    return {"runs": rows, "rss_mib_per_added_camera": per_camera}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--providers", type=lambda s: s.split(","), default=None,
                        help="ONNX Runtime execution providers, comma-separated (default: CUDA if available, CPU)")
    parser.add_argument("--daemon-seconds", type=float, default=30.0, help="measured seconds per daemon run")
    parser.add_argument("--idle-cameras", type=int, default=15, help="idle cameras beside the stage one")
    parser.add_argument("--skip-peer", action="store_true", help="no dlib peer (no ratios)")
    parser.add_argument("--skip-daemon", action="store_true", help="part 1 only")
    parser.add_argument("--skip-inprocess", action="store_true", help="part 2 only")
    parser.add_argument("--quick", action="store_true", help="smoke run: few frames, 5 s per daemon run")
    parser.add_argument("--scale", type=int, default=0, metavar="N",
                        help="part 2 is instead one run of N cameras playing the 1080p crowd clip at 10 frames/s "
                        "(the 100-camera GPU target's shape)")
    parser.add_argument("--pack", default="default", help="model pack of the daemon and the in-process stages "
                        "(default: the built-in fused pack; dlib = the single dlib ResNet)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.daemon_seconds = min(args.daemon_seconds, 5.0)
    for path in (STAGE, CORRIDOR, CROWD, MIRANDA_PHOTO):
        if not path.exists():
            sys.exit(f"needs {path} (the shared data folder)")
    work = Path(tempfile.mkdtemp(prefix="facegate-door-bench-"))
    out: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "when": datetime.now(UTC).isoformat(timespec="seconds"),
                             "loadavg_at_start": os.getloadavg(), "threads": args.threads,
                             "providers": args.providers, "pack": args.pack}}
    try:
        gallery = work / "gallery"
        enrol = subprocess.run([sys.executable, "-m", "facegate.cli", "enroll", "--gallery", str(gallery), "--name",
                                MIRANDA, "--pack", args.pack, str(MIRANDA_PHOTO)], capture_output=True, text=True)
        if enrol.returncode != 0:
            sys.exit(f"enrolment failed: {enrol.stderr}")
        if not args.skip_inprocess:
            out["inprocess"] = part1(args, gallery, work)
        if not args.skip_daemon:
            out["daemon"] = part2(args, gallery, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
