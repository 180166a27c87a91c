"""``/api/decisions``: the decision log (the audit log, paged and filtered), the live stream (server-sent events),
one decision, its snapshot, reviews ("this was not X") and enrolment of a decision's face."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as FPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from facegate.console.audit_reader import Query as LogQuery
from facegate.console.auth import RESPONSES, require
from facegate.console.context import Console
from facegate.console.routes_people import EnrolReport
from facegate.console.stream import event_stream
from facegate.console.tokens import TokenRecord
from facegate.console.uploads import check_photos
from facegate.gallery.validate import MAX_GROUP_CHARS, MAX_NAME_CHARS
from facegate.runtime.audit import admin_record
from facegate.runtime.snapshots import snapshot_path

router = APIRouter(tags=["decisions"], responses=RESPONSES)
Viewer = Annotated[TokenRecord, Depends(require("viewer"))]
Operator = Annotated[TokenRecord, Depends(require("operator"))]
_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
EventId = Annotated[str, FPath(pattern=_UUID, description="The decision's event_id (uuid4)")]
DecisionType = Literal["grant", "deny", "unknown"]
_RFC3339 = r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d{1,6})?)?(Z|[+-]\d\d:\d\d)$"
_ID = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class Page(BaseModel):
    decisions: list[dict[str, Any]] = Field(description="Audit records {logged_at, topic, event, seq, reviews}, "
                                            "newest first")
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null at the end")


class Review(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Literal["wrong", "correct"] = Field(description="wrong: the decision named the wrong person (or should "
                                                 "not have matched); correct: confirmed")
    note: str = Field("", max_length=500, description="What the operator saw, e.g. 'this was not X, it was Y'")


class SnapshotEnrol(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    groups: list[Annotated[str, Field(min_length=1, max_length=MAX_GROUP_CHARS)]] = Field([], max_length=64)
    force: bool = False


def _console(request: Request) -> Console:
    return request.app.state.console


def _decision(console: Console, event_id: str) -> dict[str, Any]:
    record = console.index.decision(event_id)
    if record is None:
        raise HTTPException(404, f"no decision {event_id} in the audit log")
    return record


@router.get("/decisions", response_model=Page, summary="The decision log, newest first, filtered")
def decisions(request: Request, who: Viewer,
              since: Annotated[str | None, Query(pattern=_RFC3339, description="decided_at ≥ this (RFC 3339 with "
                                                 "an offset, e.g. 2026-05-04T08:00:00Z)")] = None,
              until: Annotated[str | None, Query(pattern=_RFC3339, description="decided_at < this (RFC 3339)")] = None,
              door: _ID = None, camera: _ID = None, type: DecisionType | None = None,  # noqa: A002 - the field's name
              person: Annotated[str | None, Query(max_length=200, description="person id or name")] = None,
              before: Annotated[int | None, Query(ge=0, le=2**62)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Any:
    times = []
    for name, text in (("since", since), ("until", until)):
        try:
            times.append(None if text is None else datetime.fromisoformat(text))
        except ValueError:
            raise HTTPException(400, f"{name}: {text!r} is not a valid time (e.g. 2026-05-01T08:00:00Z)") from None
    rows, nxt = _console(request).index.query(LogQuery(*times, door, camera, type, person, before, limit))
    return {"decisions": rows, "next_before": nxt}


@router.get("/decisions/stream", summary="Live decisions as server-sent events",
            description="`event: decision` (data: the audit record with `seq`) for each new decision, `event: admin` "
            "for each console action; keep-alive comments every 15 s. Filters as for /decisions.",
            response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def stream(request: Request, who: Viewer, door: _ID = None, camera: _ID = None,
                 type: DecisionType | None = None) -> StreamingResponse:  # noqa: A002
    def keep(record: dict[str, Any]) -> bool:
        event = record.get("event")
        if not isinstance(event, dict):
            return True
        return ((door is None or event.get("door") == door) and (camera is None or event.get("camera") == camera)
                and (type is None or event.get("type") == type))

    console = _console(request)
    return StreamingResponse(event_stream(console.broadcaster, keep, request.is_disconnected),
                             media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


@router.get("/decisions/{event_id}", summary="One decision with its reviews",
            responses={404: {"description": "not in the audit log"}})
def decision(request: Request, event_id: EventId, who: Viewer) -> dict[str, Any]:
    record = _decision(_console(request), event_id)
    record["snapshot"] = _snapshot_file(_console(request), event_id) is not None
    return record


def _snapshot_file(console: Console, event_id: str):
    if console.snapshots is None:
        return None
    path = snapshot_path(console.snapshots, event_id)
    return path if path is not None and path.is_file() else None


@router.get("/decisions/{event_id}/snapshot", summary="The face crop kept for a decision (operator)",
            response_class=FileResponse,
            responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "none kept (retention off, "
                                                                                "expired, or no face)"}})
def snapshot(request: Request, event_id: EventId, who: Operator) -> FileResponse:
    path = _snapshot_file(_console(request), event_id)
    if path is None:
        raise HTTPException(404, "no snapshot kept for this decision (snapshots.enabled is off, the retention "
                            "passed, or the decision had no face crop)")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.post("/decisions/{event_id}/review", summary="Record a review of a decision ('this was not X')",
             responses={404: {"description": "not in the audit log"}})
def review(request: Request, event_id: EventId, body: Review, who: Operator) -> dict[str, Any]:
    console = _console(request)
    event = _decision(console, event_id)["event"]
    record = admin_record("decision.review", who.name, event_id, verdict=body.verdict, note=body.note,
                          decision={"type": event.get("type"), "person_name": event.get("person_name"),
                                    "door": event.get("door"), "decided_at": event.get("decided_at")})
    try:
        console.audit.append(record)
    except OSError as exc:
        raise HTTPException(500, f"the review could not be written to the audit log ({exc})") from None
    console.index.refresh()
    return {"recorded": record["admin"], "reviews": console.index.decision(event_id)["reviews"]}


@router.post("/decisions/{event_id}/enrol", response_model=EnrolReport,
             summary="Enrol the face kept for a decision (e.g. a correctly recognised unknown) as an identity",
             responses={404: {"description": "no such decision or no snapshot kept"}})
async def enrol_from_snapshot(request: Request, event_id: EventId, body: SnapshotEnrol, who: Operator) -> Any:
    console = _console(request)
    _decision(console, event_id)
    path = _snapshot_file(console, event_id)
    if path is None:
        raise HTTPException(404, "no snapshot kept for this decision; enable snapshots (snapshots.enabled) or "
                            "enrol with a photo")
    photos = check_photos([(f"snapshot-{event_id}.jpg", path.read_bytes())], max_files=1,
                          max_bytes=console.config.admin.max_upload_bytes)
    return await run_in_threadpool(console.people.enrol, body.name, list(body.groups), photos, who.name,
                                   force=body.force, action="identity.enrol_from_snapshot",
                                   source={"event_id": event_id})
