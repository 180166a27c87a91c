"""Does the operator console slow the door down? And how fast is the daemon's /metrics with 16 cameras?

Part 1 (issue 15, item 5: "capture→publish p99 with the console open and a client streaming decisions within 10 %
of the figure without it"). One ``facegate run`` on the stage clip (looped, Lin-Manuel Miranda enrolled, every
frame decided: ``repeat_after_s: 0``), a real Mosquitto broker, and a subscriber recording when each event arrives.
The run alternates phases of ``--phase-seconds``: *without* (no console process) and *with* (``facegate admin`` on
the same config, one client reading the live stream and a "page" polling /api/status, /api/cameras and
/api/decisions every second, as the web page does). Latency per event = arrival at the subscriber − the payload's
``captured_at`` (capture → audited → published → delivered). p50/p99 per condition, over all its phases.

Part 2 ("the metrics endpoint answers in under 50 ms with 16 cameras"): one ``facegate run`` with 16 file cameras
of the stage clip (each looped over 4.4 s), then ``--requests`` GETs of ``/metrics``; p50/p99/max in ms.

Run::

    python bench/console_bench.py                          # both parts, ~5 minutes on 2 cores
    python bench/console_bench.py --phase-seconds 20 --phases 2 --json bench/console.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_bench import CLIPS, MIRANDA_PHOTO, _free_port, _mosquitto, _subscribe  # noqa: E402


def _config(work: Path, port: int, cameras: int, gallery: Path, name: str) -> Path:
    key = work / "signing.key"
    key.write_text("c" * 64)
    key.chmod(0o600)
    cfg = {
        "cameras": [{"id": f"cam{i}", "file": str(CLIPS["stage_clip_640x360.mp4"]), "loop": True,
                     "start_s": 2.6, "stop_s": 7.0, "door": "front"} for i in range(cameras)],
        "doors": [{"id": "front", "cooldown_s": 0}],
        "decision": {"repeat_after_s": 0},
        "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": "bench", "client_id": f"bench-{name}"},
        "gallery": {"path": str(gallery)},
        "audit": {"path": str(work / f"audit-{name}.jsonl")},
        "signing": {"key_file": str(key)},
        "service": {"state_dir": str(work / f"state-{name}"), "stdout_events": False},
        "metrics": {"port": _free_port()},
        "admin": {"port": _free_port(), "tokens_file": str(work / "tokens.json")},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start_daemon(config: Path, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "facegate.cli", "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if "event=ready" in log.read_text():
            return proc
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"daemon did not become ready:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


class Console:
    """`facegate admin` plus a streaming client and a polling page, for one phase."""

    def __init__(self, config: Path, token: str, work: Path) -> None:
        self.url = f"http://127.0.0.1:{yaml.safe_load(config.read_text())['admin']['port']}"
        self.token = token
        self.proc = subprocess.Popen([sys.executable, "-m", "facegate.cli", "admin", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=(work / "console.log").open("a"))
        self.stop = threading.Event()
        self.streamed = 0
        self.polls = 0
        for _ in range(300):
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        with httpx.Client(timeout=5, headers={"Authorization": f"Bearer {token}"}) as c:
            for _ in range(600):  # the console loads the enrolment models once at start: measure it running
                if c.get(f"{self.url}/api/status").json().get("models_loaded"):
                    break
                time.sleep(0.1)
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._stream, self._poll)]
        for t in self.threads:
            t.start()

    def _stream(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(timeout=None) as c, c.stream("GET", f"{self.url}/api/decisions/stream",
                                                       headers=headers) as answer:
            for line in answer.iter_lines():
                if self.stop.is_set():
                    return
                self.streamed += line.startswith("data: ")

    def _poll(self) -> None:
        with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {self.token}"}) as c:
            while not self.stop.wait(1.0):
                for path in ("/api/status", "/api/cameras", "/api/decisions?limit=50"):
                    c.get(self.url + path).raise_for_status()
                    self.polls += 1

    def close(self) -> dict:
        self.stop.set()
        _stop(self.proc)
        return {"streamed": self.streamed, "polls": self.polls}


def latency_part(args: argparse.Namespace, work: Path, gallery: Path, port: int) -> dict:
    config = _config(work, port, 1, gallery, "latency")
    token = json.loads(subprocess.run([sys.executable, "-m", "facegate.cli", "admin", "token", "create", "--name",
                                       "bench", "--role", "viewer", "--config", str(config)],
                                      capture_output=True, text=True, check=True).stdout)["token"]
    received: list = []
    client = _subscribe(port, received)
    daemon = _start_daemon(config, work / "daemon-latency.log")
    time.sleep(5)  # let the first tracks settle
    by_condition: dict[str, list[float]] = {"without": [], "with": []}
    console_stats = []
    try:
        for phase in range(args.phases * 2):
            condition = "without" if phase % 2 == 0 else "with"
            console = Console(config, token, work) if condition == "with" else None
            received.clear()
            time.sleep(args.phase_seconds)
            events = list(received)
            if console is not None:
                console_stats.append(console.close())
            lat = [(at - datetime.fromisoformat(e["captured_at"].replace("Z", "+00:00"))).total_seconds() * 1000
                   for e, at in events]
            by_condition[condition] += lat
            print(f"phase {phase + 1} {condition:7s} events={len(lat)} p50={np.percentile(lat, 50):.0f} ms "
                  f"p99={np.percentile(lat, 99):.0f} ms", flush=True)
    finally:
        _stop(daemon)
        client.loop_stop()
    out = {}
    for condition, lat in by_condition.items():
        out[condition] = {"events": len(lat), "p50_ms": round(float(np.percentile(lat, 50)), 1),
                          "p99_ms": round(float(np.percentile(lat, 99)), 1)}
    out["p99_ratio_with_over_without"] = round(out["with"]["p99_ms"] / out["without"]["p99_ms"], 3)
    out["console_clients"] = console_stats
    print(f"capture→publish p99 without console {out['without']['p99_ms']} ms, with console and a streaming "
          f"client {out['with']['p99_ms']} ms (ratio {out['p99_ratio_with_over_without']})", flush=True)
    return out


def metrics_part(args: argparse.Namespace, work: Path, gallery: Path, port: int) -> dict:
    config = _config(work, port, args.cameras, gallery, "metrics")
    url = f"http://127.0.0.1:{yaml.safe_load(config.read_text())['metrics']['port']}/metrics"
    daemon = _start_daemon(config, work / "daemon-metrics.log")
    try:
        time.sleep(5)
        times = []
        with httpx.Client(timeout=10) as c:
            for _ in range(args.requests):
                t0 = time.perf_counter()
                answer = c.get(url)
                times.append(1000 * (time.perf_counter() - t0))
                answer.raise_for_status()
                time.sleep(0.05)
        cameras = answer.text.count("facegate_camera_up{")
    finally:
        _stop(daemon)
    out = {"cameras": cameras, "requests": len(times), "bytes": len(answer.content),
           "p50_ms": round(float(np.percentile(times, 50)), 2), "p99_ms": round(float(np.percentile(times, 99)), 2),
           "max_ms": round(max(times), 2)}
    print(f"/metrics with {cameras} cameras: p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, max {out['max_ms']} ms "
          f"({out['bytes']} bytes)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase-seconds", type=float, default=30.0)
    parser.add_argument("--phases", type=int, default=2, help="pairs of (without, with) phases")
    parser.add_argument("--cameras", type=int, default=16, help="file cameras for the metrics part")
    parser.add_argument("--requests", type=int, default=200, help="GETs of /metrics")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-metrics", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="facegate-console-bench-"))
    gallery = work / "gallery"
    subprocess.run([sys.executable, "-m", "facegate.cli", "enroll", "--gallery", str(gallery), "--name",
                    "Lin-Manuel Miranda", "--group", "staff", str(MIRANDA_PHOTO)], capture_output=True, check=True)
    broker, port = _mosquitto(work)
    result = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    try:
        if not args.skip_latency:
            result["latency"] = latency_part(args, work, gallery, port)
        if not args.skip_metrics:
            result["metrics"] = metrics_part(args, work, gallery, port)
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
