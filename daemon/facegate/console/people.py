"""The console's gallery actions — the same code as the CLI (``Gallery``, ``Enroller``), each audited.

The console opens the daemon's gallery folder (``gallery.path``) like ``facegate enroll`` does; the daemon follows
every change within ``gallery.refresh_s``. Enrolment runs the pack's models in the console process (one ONNX
Runtime thread, loaded in the background at start and on first use), one enrolment at a time. Uploaded photos are
written to a private temporary folder (0700) only for the enrolment and deleted right after: no photo is kept.

Every change is appended to the audit log as an admin record naming the token (``runtime/audit.admin_record``)
after it was made; when that append fails the change stands and the caller answers with an error saying so.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

from facegate.console.uploads import SUFFIX, Photo
from facegate.errors import GalleryError
from facegate.gallery import Gallery
from facegate.gallery.store import Identity
from facegate.runtime.audit import AuditLog, admin_record

log = logging.getLogger(__name__)


class AuditFailed(Exception):  # noqa: N818 - the change was made; only its record is missing
    """The change was made but its admin record could not be appended to the audit log."""


class NotFoundError(GalleryError):
    """An identity id that is not in the gallery."""


class People:
    """Gallery actions for the API. ``pack`` and ``threads`` load the enrolment pipeline (``FacePipeline.load``);
    ``audit`` receives the admin records. Thread-safe."""

    def __init__(self, folder: Path, pack: str, audit: AuditLog, threads: int = 1) -> None:
        self.folder = folder
        self.pack = pack
        self.threads = threads
        self.audit = audit
        self.gallery = Gallery(folder)
        self._pipeline: Any = None
        self._pipeline_error: str | None = None
        self._load_lock = threading.Lock()
        self._enrol_lock = threading.Lock()

    # -- models --------------------------------------------------------------------------------------------------
    def pipeline(self) -> Any:
        """The enrolment pipeline, loaded once. Raises the loader's ``FacegateError`` (pack, model files)."""
        with self._load_lock:
            if self._pipeline is None:
                from facegate.pipeline import FacePipeline

                self._pipeline = FacePipeline.load(self.pack, threads=self.threads, with_liveness=False)
        return self._pipeline

    def preload(self) -> None:
        """Load the models in a background thread so that the first enrolment does not wait (errors are kept for
        ``status`` and raised again on use)."""
        def load() -> None:
            try:
                self.pipeline()
            except Exception as exc:
                self._pipeline_error = str(exc)
                log.error("event=console_models_failed pack=%s error=%r", self.pack, str(exc))

        threading.Thread(target=load, name="console-models", daemon=True).start()

    @property
    def models_loaded(self) -> bool:
        return self._pipeline is not None

    # -- reads ---------------------------------------------------------------------------------------------------
    def identities(self) -> list[Identity]:
        self.gallery.refresh()
        return self.gallery.identities()

    def identity(self, identity_id: int) -> Identity:
        """The identity with this numeric id, with its templates' quality records. Raises ``NotFoundError``."""
        self.gallery.refresh()
        for ident in self.gallery.identities():
            if ident.id == identity_id:
                return self.gallery.identity(ident.name)
        raise NotFoundError(f"no identity with id {identity_id} in the gallery; list them with GET /api/identities")

    def stats(self) -> dict[str, Any]:
        self.gallery.refresh()
        return self.gallery.stats()

    # -- writes --------------------------------------------------------------------------------------------------
    def _audit(self, action: str, token: str, target: Any, **details: Any) -> None:
        try:
            self.audit.append(admin_record(action, token, target, **details))
        except OSError as exc:
            log.error("event=admin_audit_failed action=%s token=%s error=%r", action, token, str(exc))
            raise AuditFailed(f"{action} was done but could not be written to the audit log {self.audit.path} "
                              f"({exc}); fix the audit log before making further changes") from None

    def enrol(self, name: str, groups: list[str], photos: list[Photo], token: str, *, force: bool = False,
              action: str = "identity.enrol", source: dict[str, Any] | None = None) -> dict[str, Any]:
        """Enrol ``photos`` (checked by ``uploads.check_photos``) as templates of ``name`` (created if new) with
        ``groups`` merged in, through the quality gates and the duplicate check (``force`` skips the latter).
        Returns ``{"identity", "enrolled", "skipped", "refused", "results": [per photo: file, status, reason,
        quality]}``. Raises ``GalleryError`` for an invalid name or group (before any model runs)."""
        from facegate.gallery.enrol import Enroller
        from facegate.gallery.validate import groups_problem, name_problem

        problem = name_problem(name) or groups_problem(groups)
        if problem:
            raise GalleryError(problem)
        name = name.strip()
        pipeline = self.pipeline()
        with self._enrol_lock, tempfile.TemporaryDirectory(prefix="facegate-enrol-") as tmp:
            paths = []
            for i, photo in enumerate(photos):
                path = Path(tmp) / f"{i}{SUFFIX[photo.kind]}"
                path.write_bytes(photo.data)
                paths.append(path)
            self.gallery.refresh()
            enroller = Enroller(self.gallery, pipeline, force=force)
            outcomes = enroller.enrol(name, paths, groups)
            self.gallery.save()
        results = []
        for photo, path, outcome in zip(photos, paths, outcomes, strict=True):
            row = outcome.to_json()
            row["file"] = photo.name
            if row.get("reason"):  # the temporary file's path means nothing to the operator
                row["reason"] = row["reason"].replace(str(path), repr(photo.name))
            row.pop("identity", None)
            results.append(row)
        counts = {s: sum(r["status"] == s for r in results) for s in ("enrolled", "skipped", "refused")}
        ident = None
        with contextlib.suppress(GalleryError):
            ident = self.gallery.identity(name)
        report = {"identity": ident.to_json() if ident else None, **counts, "results": results}
        if counts["enrolled"]:
            self._audit(action, token, {"id": ident.id if ident else None, "name": name}, groups=groups,
                        force=force, **counts, **({"source": source} if source else {}))
        return report

    def update(self, identity_id: int, token: str, *, name: str | None = None,
               groups: list[str] | None = None) -> Identity:
        """Rename and/or set the groups of an identity (``Gallery.update``); audited."""
        before = self.identity(identity_id)
        after = self.gallery.update(before.name, name=name, groups=groups)
        self.gallery.save()
        self._audit("identity.update", token, {"id": after.id, "name": before.name},
                    **({"new_name": after.name} if name is not None else {}),
                    **({"groups": after.groups} if groups is not None else {}))
        return after

    def remove(self, identity_id: int, token: str, *, compact: bool = False) -> dict[str, Any]:
        """Erase an identity (``Gallery.remove``: the CLI's ``facegate gallery remove``) and, with ``compact``, also
        rewrite the index and database without the erased bytes (``facegate gallery compact``); audited."""
        ident = self.identity(identity_id)
        removed = self.gallery.remove(ident.name)  # names are unique; an id could also be a name
        out: dict[str, Any] = {"removed": removed.name, "identity_id": removed.id, "templates": removed.templates}
        if compact:
            out["compact"] = self.gallery.compact()
        self.gallery.save()
        self._audit("identity.remove", token, {"id": removed.id, "name": removed.name},
                    templates=removed.templates, compact=compact)
        return out

    def compact(self, token: str) -> dict[str, Any]:
        """``facegate gallery compact``; audited."""
        self.gallery.refresh()
        result = self.gallery.compact()
        self._audit("gallery.compact", token, None, index_items_dropped=result.get("index_items_dropped"))
        return result

    def close(self) -> None:
        self.gallery.close()
