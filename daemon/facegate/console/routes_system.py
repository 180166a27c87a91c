"""``/api/status``, ``/api/cameras``, ``/api/doors``, ``/api/pack``, ``/api/health``, ``/api/metrics`` and
``/api/activity``: what the daemon is doing (from its ``state.json``), the pack and security level in force, and
the console's own actions."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from facegate.console.auth import RESPONSES, require
from facegate.console.context import Console
from facegate.console.daemon_state import read_daemon_state
from facegate.console.tokens import TokenRecord
from facegate.runtime.rules import camera_doors

router = APIRouter(tags=["system"], responses=RESPONSES)
Viewer = Annotated[TokenRecord, Depends(require("viewer"))]
Admin = Annotated[TokenRecord, Depends(require("admin"))]
#: Largest metrics answer passed through (bytes).
MAX_METRICS_BYTES = 8 << 20


def _console(request: Request) -> Console:
    return request.app.state.console


def _daemon(console: Console) -> dict[str, Any]:
    return read_daemon_state(console.state_path, console.config.admin.state_stale_s)


@router.get("/status", summary="The daemon (up/down), the caller's token and role, counts")
def status(request: Request, who: Viewer) -> dict[str, Any]:
    console = _console(request)
    d = _daemon(console)
    state = d["state"] or {}
    return {"daemon": d["daemon"], "age_s": d["age_s"], "reason": d["reason"],
            "token": {"name": who.name, "role": who.role},
            "cameras": len(state.get("cameras") or {}), "doors": len(console.config.doors),
            "identities": console.people.stats()["identities"], "snapshots": console.snapshots is not None,
            "models_loaded": console.people.models_loaded, "stream_clients": console.broadcaster.clients,
            "metrics_url": (state.get("metrics") or {}).get("url") if d["daemon"] == "up" else None}


@router.get("/cameras", summary="Cameras with their state, frames/s, last error and last decision")
def cameras(request: Request, who: Viewer) -> dict[str, Any]:
    console = _console(request)
    d = _daemon(console)
    last = console.index.last_by("camera")
    live = (d["state"] or {}).get("cameras") or {}
    rows = []
    for cam in console.config.cameras:
        snap = live.get(cam.id) or {}
        state = snap.get("state") if d["daemon"] == "up" else "unknown (daemon down)"
        rows.append({"id": cam.id, "source": cam.describe(), "door": snap.get("door", cam.door), "state": state,
                     "fps": snap.get("fps"), "frames": snap.get("frames"), "dropped": snap.get("dropped"),
                     "failures": snap.get("failures"), "last_error": snap.get("last_error") or None,
                     "last_frame_age_s": snap.get("last_frame_age_s"), "last_decision": last.get(cam.id)})
    for cid, snap in live.items():  # cameras given on the daemon's command line
        if all(r["id"] != cid for r in rows):
            rows.append({"id": cid, "source": None, **snap, "last_decision": last.get(cid)})
    return {"daemon": d["daemon"], "reason": d["reason"], "cameras": rows}


@router.get("/doors", summary="Doors with their cameras, rules and last decision")
def doors(request: Request, who: Viewer) -> dict[str, Any]:
    console = _console(request)
    d = _daemon(console)
    last = console.index.last_by("door")
    live = {door["id"]: door for door in (d["state"] or {}).get("doors") or []}
    cam_doors = camera_doors(console.config, console.config.cameras)
    rows = []
    for door in console.config.doors:
        cams = sorted(c for c, door_id in cam_doors.items() if door_id == door.id)
        rules = live.get(door.id) or {"id": door.id, "cameras": cams, "allowed_groups": door.allowed_groups,
                                      "cooldown_s": door.cooldown_s, "anti_passback": door.anti_passback,
                                      "exit": door.exit, "schedule": None if door.schedule is None else
                                      door.schedule.model_dump(mode="json")}
        rows.append({**rules, "last_decision": last.get(door.id)})
    return {"daemon": d["daemon"], "reason": d["reason"], "doors": rows}


@router.get("/pack", summary="The model pack and the security level in force (metric, threshold)")
def pack(request: Request, who: Viewer) -> dict[str, Any]:
    console = _console(request)
    d = _daemon(console)
    state = d["state"] or {}
    out = {"daemon": d["daemon"], "configured": {"pack": console.config.pack,
                                                 "threshold": console.config.decision.threshold,
                                                 "k": console.config.decision.k, "n": console.config.decision.n,
                                                 "margin": console.config.decision.margin,
                                                 "liveness": console.config.liveness.enabled}}
    if d["daemon"] == "up":
        out["in_force"] = {"pack": state.get("pack"), "decision": state.get("decision"),
                           "liveness": state.get("liveness")}
    return out


@router.get("/health", summary="Health of the daemon (from its state file) and of the console")
def health(request: Request, who: Viewer) -> dict[str, Any]:
    console = _console(request)
    d = _daemon(console)
    state = d["state"] or {}
    problems = [] if d["daemon"] == "up" else [f"daemon {d['daemon']}: {d['reason']}"]
    daemon_health = state.get("health") if d["daemon"] == "up" else None
    if isinstance(daemon_health, dict) and daemon_health.get("state") not in (None, "ok"):
        problems.append(f"daemon health {daemon_health.get('state')}")
    gallery = state.get("gallery") or {}
    if gallery.get("stale"):
        problems.append("the daemon's gallery is stale (no grants until it refreshes)")
    mqtt = state.get("mqtt")
    if isinstance(mqtt, dict) and not mqtt.get("connected"):
        problems.append("the daemon is not connected to the broker")
    return {"state": "ok" if not problems else "degraded", "problems": problems, "daemon": d["daemon"],
            "daemon_health": daemon_health, "console": {"models_loaded": console.people.models_loaded,
                                                        "audit_log": str(console.audit.path)}}


@router.get("/metrics", summary="The daemon's Prometheus metrics, passed through", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {}}}, 503: {"description": "daemon down or metrics off"}})
def metrics(request: Request, who: Viewer) -> PlainTextResponse:
    d = _daemon(_console(request))
    url = ((d["state"] or {}).get("metrics") or {}).get("url") if d["daemon"] == "up" else None
    if not url or urlsplit(url).scheme != "http":
        raise HTTPException(503, "the daemon is down or serves no metrics (metrics.enabled)")
    try:
        with urllib.request.urlopen(url, timeout=2.0) as answer:  # noqa: S310 - http URL from the daemon's state
            body = answer.read(MAX_METRICS_BYTES)
    except (urllib.error.URLError, OSError) as exc:
        raise HTTPException(503, f"the daemon's metrics at {url} did not answer ({exc})") from None
    return PlainTextResponse(body.decode("utf-8", "replace"), media_type="text/plain; version=0.0.4")


@router.get("/activity", summary="The console's own actions from the audit log, newest first (admin)")
def activity(request: Request, who: Admin,
             limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    return {"actions": _console(request).index.admin_records(limit)}
