"""The console's ASGI application (FastAPI): the JSON API under ``/api``, its OpenAPI schema, the web page.

Security rules, all enforced here or in ``console/auth.py``:

* every ``/api`` route needs a token (``Authorization: Bearer``) of a sufficient role; the only routes without one
  are the static page (no data in it) and ``/healthz`` (answers ``{"status": "ok"}``, nothing else);
* no cookies are read or set, so a page of another site cannot make the browser send a credential (no CSRF); in
  addition a state-changing request whose ``Origin`` is neither this console nor in ``admin.cors_origins`` is
  refused (403);
* CORS is closed unless ``admin.cors_origins`` lists origins (then only those, without credentials);
* request bodies are capped (``Content-Length`` required on uploads, at most ``max_upload_files`` ×
  ``max_upload_bytes`` plus 1 MiB); photos are checked by ``console/uploads.py``;
* answers carry ``Cache-Control: no-store``, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``
  and, for the page, a Content-Security-Policy allowing only this origin's scripts (no inline script).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facegate import __version__
from facegate.console import routes_decisions, routes_people, routes_system
from facegate.console.auth import require
from facegate.console.context import Console
from facegate.console.people import AuditFailed, NotFoundError
from facegate.console.uploads import UploadRefused
from facegate.errors import FacegateError

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: Extra body bytes allowed beyond the photos (multipart headers, form fields).
BODY_OVERHEAD = 1 << 20
#: Content-Security-Policy of every answer: this origin only, no inline script, no framing.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def create_app(console: Console) -> FastAPI:
    """The application serving ``console``; the follower of the live stream runs while the app runs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(console.broadcaster.run())
        try:
            yield
        finally:
            from facegate.console.stream import stop_task

            await stop_task(task)

    app = FastAPI(title="facegate operator console", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None,
                  description="The operator console's API. Every /api route needs `Authorization: Bearer <token>` "
                  "(create one with `facegate admin token create`). Roles: viewer < operator < admin.")
    app.state.console = console
    admin = console.config.admin
    max_body = admin.max_upload_files * admin.max_upload_bytes + BODY_OVERHEAD
    allowed_origins = set(admin.cors_origins)

    app.add_middleware(Guard, max_body=max_body, allowed_origins=allowed_origins)
    if allowed_origins:  # added after Guard, so it is the outer one and answers preflights
        app.add_middleware(CORSMiddleware, allow_origins=sorted(allowed_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods; list every route's (RFC 9110)
            methods: set[str] = set()
            for route in app.router.routes:
                if route.matches(request.scope)[0] != Match.NONE:
                    methods |= set(getattr(route, "methods", None) or ())
            headers["Allow"] = ", ".join(sorted(methods))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(UploadRefused)
    async def _refused(request: Request, exc: UploadRefused) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(AuditFailed)
    async def _unaudited(request: Request, exc: AuditFailed) -> JSONResponse:
        return _error(500, str(exc))

    @app.exception_handler(FacegateError)
    async def _facegate(request: Request, exc: FacegateError) -> JSONResponse:
        return _error(404 if isinstance(exc, NotFoundError) else 400, str(exc))

    for module in (routes_people, routes_decisions, routes_system):
        app.include_router(module.router, prefix="/api")

    @app.get("/api/openapi.json", tags=["system"], summary="This API's OpenAPI schema")
    async def openapi(who: Annotated[Any, Depends(require("viewer"))]) -> dict[str, Any]:
        return app.openapi()

    @app.get("/healthz", tags=["system"], summary="Liveness probe of the console process (reveals nothing else)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class Guard:
    """ASGI middleware: the Origin and body-size rules for state-changing requests, and the security headers of
    every answer (see the module docstring). Pure ASGI, so that streamed answers (the live stream) pass through
    untouched."""

    def __init__(self, app: ASGIApp, *, max_body: int, allowed_origins: set[str]) -> None:
        self.app = app
        self.max_body = max_body
        self.allowed = allowed_origins

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        headers = Headers(scope=scope)
        method = scope["method"]
        # every query parameter of this API is one value: a repeated one would be read as its last copy, so that
        # an invalid first copy passed unseen (found by Schemathesis: camera=<invalid>&camera=null accepted)
        names = [k for k, _ in QueryParams(scope.get("query_string", b"")).multi_items()]
        if repeated := sorted({k for k in names if names.count(k) > 1}):
            # FastAPI's validation-error shape (the schema every 422 of this API declares)
            return JSONResponse({"detail": [{"loc": ["query", repeated[0]], "type": "value_error", "input": None,
                                             "msg": f"query parameter {repeated[0]!r} given more than once; give "
                                                    "each at most once"}]}, status_code=422)
        if method not in _UNSAFE:
            return None
        origin = headers.get("origin")
        if origin and origin != "null" and not _same_host(origin, headers.get("host")) and origin not in self.allowed:
            return _error(403, f"cross-origin {method} from {origin} refused (not in admin.cors_origins)")
        length = headers.get("content-length")
        if length is None:
            return _error(411, "send a Content-Length (chunked uploads are not accepted)") \
                if headers.get("transfer-encoding") else None
        if not length.isdigit():
            return _error(400, "Content-Length is not a number")
        if int(length) > self.max_body:
            return _error(413, f"request body of {length} bytes; at most {self.max_body} (admin.max_upload_files × "
                          "admin.max_upload_bytes + 1 MiB)")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                h = MutableHeaders(scope=message)
                if "cache-control" not in h:
                    h["Cache-Control"] = "no-store"
                h["X-Content-Type-Options"] = "nosniff"
                h["Referrer-Policy"] = "no-referrer"
                h["X-Frame-Options"] = "DENY"
                h["Content-Security-Policy"] = CSP
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _same_host(origin: str, host: str | None) -> bool:
    """``Origin`` names this console's host (scheme ignored: a TLS-terminating proxy forwards plain HTTP)."""
    try:
        return urlsplit(origin).netloc.lower() == (host or "").lower()
    except ValueError:
        return False


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)

