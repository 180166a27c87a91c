"""What an integrator experiences at the door: latency from the capture of the frame that completed a grant to the
relay's HTTP request arriving, through the whole chain — `facegate run` (Ed25519 signing) → a real Mosquitto →
`facegate door` (verification, replay cache on disk) → a local Shelly Gen2 HTTP relay (tests/shelly_server.py).

For 1 and 4 cameras (the stage clip looped, Lin-Manuel Miranda enrolled, ``cooldown_s: 0`` and
``repeat_after_s: 0.5`` so that grants keep coming), it prints the number of grants, relay actuations, and the p50/p99
latency in ms from ``captured_at`` (wall clock when the frame was read) to the relay request (wall clock at the
server). Grants and actuations are paired in order; a run where they differ in number is reported, not paired.

Run::

    python bench/door_latency_bench.py                      # 30 s per case
    python bench/door_latency_bench.py --seconds 60 --json bench/door_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEGATE_SHARED", REPO.parent / "shared")).resolve()
STAGE = SHARED / "data" / "videos" / "stage_clip_640x360.mp4"
PHOTO = SHARED / "data" / "enroll_examples" / "single" / "lin-manuel-miranda.png"
sys.path.insert(0, str(REPO / "tests"))
from mosquitto import Mosquitto, find_mosquitto  # noqa: E402 (the tests' real-broker and relay helpers)
from shelly_server import ShellyRelay  # noqa: E402


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "facegate.cli", *args], **kw)


def _wait_log(path: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if text in path.read_text():
            return
        time.sleep(0.1)
    sys.exit(f"{path.name}: never logged {text!r}:\n{path.read_text()[-3000:]}")


def run_case(cameras: int, seconds: float, work: Path, gallery: Path, broker: Mosquitto) -> dict:
    case = work / f"cams{cameras}"
    state = case / "state"
    state.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "facegate.cli", "keys", "generate", "--out", str(state), "--name",
                    "event-signing"], check=True, capture_output=True)
    relay = ShellyRelay().start()
    arrivals: list[float] = []
    served = relay.call

    def timed(method: str, params: dict) -> dict:
        if method == "Switch.Set" and params.get("on"):
            arrivals.append(time.time())
        return served(method, params)

    relay.call = timed  # type: ignore[method-assign]
    door_cfg = case / "door.yaml"
    door_cfg.write_text(yaml.safe_dump({
        "door": "front", "mqtt": {"host": broker.host, "port": broker.port, "client_id": f"door{cameras}",
                                  "topic_prefix": "bench"},
        "keys": {"public_keys": [str(state / "event-signing.pub")]}, "checks": {"max_ttl_s": 5, "max_skew_s": 2},
        "replay_cache": {"path": str(case / "replay.db")},
        "output": {"http": {"url": relay.url, "switch_id": 0, "timeout_s": 2}, "pulse_s": 0.2, "max_hold_s": 3}}))
    daemon_cfg = case / "facegate.yaml"
    daemon_cfg.write_text(yaml.safe_dump({
        "cameras": [{"id": f"cam{i}", "file": str(STAGE), "loop": True, "start_s": 2.6 + 0.37 * i, "stop_s": 7.0,
                     "door": "front"} for i in range(cameras)],
        "doors": [{"id": "front", "cooldown_s": 0}], "decision": {"repeat_after_s": 0.5},
        "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": "bench", "client_id": f"bench{cameras}"},
        "gallery": {"path": str(gallery)}, "audit": {"path": str(case / "audit.jsonl")},
        "service": {"state_dir": str(state)}}))
    agent_log, daemon_log = case / "door.log", case / "daemon.log"
    agent = _cli("door", "--config", str(door_cfg), stdout=subprocess.DEVNULL, stderr=agent_log.open("w"))
    daemon = None
    try:
        _wait_log(agent_log, "event=door_agent_ready", agent, 60)
        daemon = _cli("run", "--config", str(daemon_cfg), stdout=(case / "events.jsonl").open("w"),
                      stderr=daemon_log.open("w"))
        _wait_log(daemon_log, "event=ready", daemon, 120)
        started = datetime.now(UTC)
        time.sleep(seconds)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        time.sleep(1.0)  # the last grants reach the relay
    finally:
        for proc in (daemon, agent):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        relay.stop()
    events = [json.loads(line) for line in (case / "events.jsonl").read_text().splitlines() if line.startswith("{")]
    granted = sorted((e for e in events if e["type"] == "grant"
                      and datetime.fromisoformat(e["decided_at"].replace("Z", "+00:00")) >= started),
                     key=lambda e: e["decided_at"])
    moved = [t for t in arrivals if t >= started.timestamp()]
    row: dict = {"cameras": cameras, "seconds": seconds, "grants": len(granted), "actuations": len(moved)}
    if granted and len(granted) == len(moved):
        lat = np.array([1000 * (t - datetime.fromisoformat(g["captured_at"].replace("Z", "+00:00")).timestamp())
                        for g, t in zip(granted, moved, strict=True)])
        row.update(latency_ms_p50=round(float(np.percentile(lat, 50)), 1),
                   latency_ms_p99=round(float(np.percentile(lat, 99)), 1), latency_ms_max=round(float(lat.max()), 1))
    else:
        row["note"] = "grants and actuations differ in number: not paired"
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each case runs after READY")
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    for path in (STAGE, PHOTO):
        if not path.exists():
            sys.exit(f"needs {path} (the shared data folder)")
    binary = find_mosquitto()
    if binary is None:
        sys.exit("needs the mosquitto broker binary (apt-get install mosquitto)")
    work = Path(tempfile.mkdtemp(prefix="facegate-door-bench-"))
    gallery = work / "gallery"
    subprocess.run([sys.executable, "-m", "facegate.cli", "enroll", "--gallery", str(gallery), "--name",
                    "Lin-Manuel Miranda", str(PHOTO)], check=True, capture_output=True)
    broker = Mosquitto(work / "broker", binary)
    broker.start()
    try:
        rows = [run_case(n, args.seconds, work, gallery, broker) for n in args.cameras]
    finally:
        broker.stop()
    out = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(), "cases": rows}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
