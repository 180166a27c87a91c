"""``/api/identities``: list, show, enrol by photo upload (the quality gates' answer per photo), rename, groups,
remove (the CLI's erasure, optionally compacted) and ``/api/gallery/compact``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi import Path as FPath
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from facegate.console.auth import RESPONSES, require
from facegate.console.context import Console
from facegate.console.tokens import TokenRecord
from facegate.console.uploads import check_photos
from facegate.gallery.validate import MAX_GROUP_CHARS, MAX_NAME_CHARS

router = APIRouter(tags=["people"], responses=RESPONSES)
Viewer = Annotated[TokenRecord, Depends(require("viewer"))]
Operator = Annotated[TokenRecord, Depends(require("operator"))]
Admin = Annotated[TokenRecord, Depends(require("admin"))]
IdentityId = Annotated[int, FPath(ge=1, le=2**62, description="The identity's numeric id")]


class IdentityOut(BaseModel):
    id: int
    name: str
    groups: list[str]
    created_at: str
    updated_at: str
    templates: int
    template_info: list[dict[str, Any]] | None = None


class PhotoResult(BaseModel):
    file: str = Field(description="The upload's file name (as sent, made printable)")
    status: str = Field(description="enrolled | skipped (already a template of this identity) | refused")
    reason: str | None = Field(None, description="Why the photo was refused or skipped (quality gate, duplicate)")
    quality: dict[str, Any] | None = Field(None, description="faces, detector_score, inter_eye_px, sharpness, "
                                           "yaw_ratio of the photo")
    template_id: int | None = None


class EnrolReport(BaseModel):
    identity: IdentityOut | None
    enrolled: int
    skipped: int
    refused: int
    results: list[PhotoResult]


class IdentityPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS, description="New name")
    groups: list[Annotated[str, Field(min_length=1, max_length=MAX_GROUP_CHARS)]] | None = Field(
        None, max_length=64, description="The identity's access groups (replaces the old list)")


def _console(request: Request) -> Console:
    return request.app.state.console


async def _read_photos(console: Console, photos: list[UploadFile]) -> list[tuple[str | None, bytes]]:
    limit = console.config.admin.max_upload_bytes
    files = []
    for upload in photos[: console.config.admin.max_upload_files + 1]:  # one more: check_photos says "too many"
        files.append((upload.filename, await upload.read(limit + 1)))
    files += [(None, b"")] * max(0, len(photos) - len(files))
    return files


@router.get("/identities", summary="Enrolled identities with their groups and template counts")
def list_identities(request: Request, who: Viewer) -> dict[str, Any]:
    people = _console(request).people
    return {"gallery": people.stats(), "identities": [i.to_json() for i in people.identities()]}


@router.get("/identities/{identity_id}", response_model=IdentityOut,
            summary="One identity with its templates' quality records", responses={404: {"description": "no such id"}})
def show_identity(request: Request, identity_id: IdentityId, who: Viewer) -> Any:
    return _console(request).people.identity(identity_id).to_json()


@router.post("/identities", response_model=EnrolReport, summary="Enrol photos as a new or existing identity",
             description="Multipart form: `name`, `groups` (repeatable), `force` (enrol even when the face matches "
             "another identity), `photos` (1 to admin.max_upload_files images, JPEG/PNG/WebP/BMP, each at most "
             "admin.max_upload_bytes). Each photo passes the enrolment quality gates or is refused with the reason.",
             responses={413: {"description": "too many or too large photos"},
                        415: {"description": "not an image"}})
async def enrol(request: Request, who: Operator, name: Annotated[str, Form(min_length=1, max_length=MAX_NAME_CHARS)],
                photos: Annotated[list[UploadFile], File(min_length=1, description="face photos")],
                groups: Annotated[list[str], Form(max_length=64)] = (),  # type: ignore[assignment]
                force: Annotated[bool, Form()] = False) -> Any:
    console = _console(request)
    checked = check_photos(await _read_photos(console, photos), max_files=console.config.admin.max_upload_files,
                           max_bytes=console.config.admin.max_upload_bytes)
    return await run_in_threadpool(console.people.enrol, name, list(groups), checked, who.name, force=force)


@router.post("/identities/{identity_id}/photos", response_model=EnrolReport,
             summary="Add photos (templates) to an identity", responses={404: {"description": "no such id"}})
async def add_photos(request: Request, identity_id: IdentityId, who: Operator,
                     photos: Annotated[list[UploadFile], File(min_length=1, description="face photos")],
                     force: Annotated[bool, Form()] = False) -> Any:
    console = _console(request)
    ident = await run_in_threadpool(console.people.identity, identity_id)
    checked = check_photos(await _read_photos(console, photos), max_files=console.config.admin.max_upload_files,
                           max_bytes=console.config.admin.max_upload_bytes)
    return await run_in_threadpool(console.people.enrol, ident.name, [], checked, who.name, force=force)


@router.patch("/identities/{identity_id}", response_model=IdentityOut, summary="Rename and/or set the groups",
              responses={404: {"description": "no such id"}})
def update_identity(request: Request, identity_id: IdentityId, patch: IdentityPatch,
                    who: Operator) -> Any:
    return _console(request).people.update(identity_id, who.name, name=patch.name, groups=patch.groups).to_json()


@router.delete("/identities/{identity_id}", summary="Erase an identity (as `facegate gallery remove`)",
               description="The templates leave the database and the index at once; the daemon stops recognising "
               "the person within gallery.refresh_s. `compact=true` also rewrites the files without the erased "
               "bytes (as `facegate gallery compact`).", responses={404: {"description": "no such id"}})
def remove_identity(request: Request, identity_id: IdentityId, who: Admin,
                    compact: bool = False) -> dict[str, Any]:
    return _console(request).people.remove(identity_id, who.name, compact=compact)


@router.post("/gallery/compact", summary="Rewrite index and database without erased data (admin)")
def compact(request: Request, who: Admin) -> dict[str, Any]:
    return _console(request).people.compact(who.name)
