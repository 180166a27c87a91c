"""Limits on enrolment photos uploaded to the console: count per request, size per photo, and type by the file's
first bytes (magic numbers), never by its name or the browser's Content-Type.

Accepted: JPEG (``FF D8 FF``, ISO/IEC 10918-1 SOI marker followed by a marker), PNG (the 8-byte signature of
RFC 2083 §3.1), WebP (``RIFF`` .... ``WEBP``, RFC 9649 §2.5) and BMP (``BM``) — the formats OpenCV decodes for
``facegate enroll``. Anything else is refused before it is decoded. A refusal is an ``UploadRefused`` carrying the
HTTP status (413 too large / too many, 415 wrong type, 400 missing or empty) and a message naming the file and
the limit.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

#: (name, test on the first 12 bytes)
_MAGIC = (
    ("jpeg", lambda b: b[:3] == b"\xff\xd8\xff"),
    ("png", lambda b: b[:8] == b"\x89PNG\r\n\x1a\n"),
    ("webp", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
    ("bmp", lambda b: b[:2] == b"BM"),
)
SUFFIX = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp"}


class UploadRefused(Exception):  # noqa: N818 - a refusal, answered as an HTTP status, not a program error
    """An upload outside the limits; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def sniff(data: bytes) -> str | None:
    """The image type of ``data`` by its magic bytes ("jpeg", "png", "webp", "bmp"), or None."""
    head = data[:12]
    return next((name for name, test in _MAGIC if test(head)), None)


def display_name(filename: str | None, index: int) -> str:
    """A safe label for an uploaded file in answers and the audit log: printable, no path, at most 100 characters
    (``photo<index>`` when nothing is left)."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] not in ("C", "Z") or c == " ").strip()
    return base[:100] or f"photo{index}"


@dataclass(frozen=True)
class Photo:
    """One accepted upload: its display ``name``, ``kind`` (``sniff``) and bytes."""

    name: str
    kind: str
    data: bytes


def check_photos(files: list[tuple[str | None, bytes]], *, max_files: int, max_bytes: int) -> list[Photo]:
    """Apply the limits to (filename, bytes) pairs, all before any is used; returns the accepted photos.
    Raises ``UploadRefused``: 400 for no photo or an empty one, 413 for too many or one too large, 415 for a
    file that is not a JPEG, PNG, WebP or BMP image."""
    if not files:
        raise UploadRefused(400, "no photo: attach at least one image file as 'photos'")
    if len(files) > max_files:
        raise UploadRefused(413, f"{len(files)} photos in one request; at most {max_files} (admin.max_upload_files)")
    photos = []
    for i, (filename, data) in enumerate(files, 1):
        name = display_name(filename, i)
        if not data:
            raise UploadRefused(400, f"{name!r} is empty")
        if len(data) > max_bytes:
            raise UploadRefused(413, f"{name!r} is larger than {max_bytes} bytes (admin.max_upload_bytes)")
        kind = sniff(data)
        if kind is None:
            raise UploadRefused(415, f"{name!r} is not a JPEG, PNG, WebP or BMP image (judged by its first bytes)")
        photos.append(Photo(name, kind, data))
    return photos
