"""What an integrator experiences at the door: latency from the capture of the frame that completed a grant to the
relay's HTTP request arriving, through the whole chain — `facegate run` (Ed25519 signing) → a real Mosquitto →
`facegate door` (verification, replay cache on disk) → a local Shelly Gen2 HTTP relay (tests/shelly_server.py).

For 1 and 4 cameras, each playing a 2.8 s stretch of the stage clip in a loop — 0.94 s of a head seen from behind,
then Lin-Manuel Miranda (enrolled) facing the camera — so that every loop is a new passage and earns one grant
(``presence_gap_s: 0.8`` is shorter than his absence, ``reverify_s: 0.5`` shorter than the gap, ``cooldown_s: 0``),
it prints the number of grants, relay actuations, and the p50/p99/max latency in ms from ``captured_at`` (wall clock
when the frame was read) to the relay request (wall clock at the server), and the door leg alone: from the daemon's
``decided_at`` to the relay request (signing, publish, broker, the agent's verification and replay cache, the HTTP
call). Grants and actuations are paired in order; a run where they differ in number is reported, not paired.
No open-source peer ships a door side to race, so the door leg is set against the whole chain in the same run.

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

sys.path.insert(0, str(REPO / "bench"))
from pipeline_bench import _vm_hwm_mib  # noqa: E402 (the peak-RSS reader the other benches use)


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
        "cameras": [{"id": f"cam{i}", "file": str(STAGE), "loop": True, "start_s": 1.8 + 0.3 * i,
                     "stop_s": 4.6 + 0.3 * i, "door": "front"} for i in range(cameras)],
        "doors": [{"id": "front", "cooldown_s": 0}],
        "decision": {"repeat_after_s": 0.5, "presence_gap_s": 0.8, "reverify_s": 0.5},
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
        peak_mib = {name: None if (mib := _vm_hwm_mib(proc.pid)) is None else round(mib, 1)
                    for name, proc in (("daemon", daemon), ("agent", agent))}
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
    row: dict = {"cameras": cameras, "seconds": seconds, "grants": len(granted), "actuations": len(moved),
                 "peak_rss_mib": peak_mib}
    if granted and len(granted) == len(moved):
        lat = np.array([1000 * (t - datetime.fromisoformat(g["captured_at"].replace("Z", "+00:00")).timestamp())
                        for g, t in zip(granted, moved, strict=True)])
        leg = np.array([1000 * (t - datetime.fromisoformat(g["decided_at"].replace("Z", "+00:00")).timestamp())
                        for g, t in zip(granted, moved, strict=True)])
        row.update(latency_ms_p50=round(float(np.percentile(lat, 50)), 1),
                   latency_ms_p99=round(float(np.percentile(lat, 99)), 1), latency_ms_max=round(float(lat.max()), 1),
                   door_leg_ms_p50=round(float(np.percentile(leg, 50)), 1),
                   door_leg_ms_p99=round(float(np.percentile(leg, 99)), 1),
                   door_leg_share_p50=round(float(np.percentile(leg, 50) / np.percentile(lat, 50)), 3))
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
