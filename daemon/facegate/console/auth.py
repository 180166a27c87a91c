"""Authentication and roles of the console's API: ``require(role)`` is a FastAPI dependency that answers 401 without
a valid token (``Authorization: Bearer <token>``, ``console/tokens.py``) and 403 when the token's role is below
``role``. It is declared as the OpenAPI ``bearerAuth`` security scheme, so clients and Schemathesis see which routes
need it (all of ``/api``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from facegate.console.tokens import ROLES, TokenRecord, role_rank
from facegate.errors import ConfigError

log = logging.getLogger(__name__)

#: Answers every ``/api`` route may give (documented in the OpenAPI schema of each router).
RESPONSES: dict[int | str, dict] = {
    400: {"description": "a request the gallery refuses (invalid name or group, …), or a bad Content-Length"},
    401: {"description": "no token, or an unknown or revoked one"},
    403: {"description": "the token's role is too low, or a cross-origin request"},
    411: {"description": "a request body without Content-Length"},
    413: {"description": "a request body over the upload limits"},
    503: {"description": "the tokens file is unusable (see the console's log)"},
}

bearer = HTTPBearer(auto_error=False, scheme_name="bearerAuth",
                    description="A console token, created with `facegate admin token create --name NAME --role ROLE`")


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _no_unknown_query(request: Request) -> None:
    """A query parameter the route does not declare is an error (422, as FastAPI reports its own), not silently
    ignored: a misspelt filter (``?tpye=grant``) must not return the whole log as if it had filtered it."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    unknown = sorted(set(request.query_params.keys()) - _query_names(dependant))
    if unknown:
        raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", name), "input": None,
                                       "msg": "unknown query parameter"} for name in unknown])


def require(role: str) -> Callable[..., TokenRecord]:
    """A dependency returning the caller's ``TokenRecord`` when it holds ``role`` or a higher one."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    def check(request: Request,
              cred: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> TokenRecord:
        if cred is None:
            raise HTTPException(401, "a token is required: send Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})
        try:
            record = request.app.state.console.tokens.verify(cred.credentials)
        except ConfigError as exc:  # fail closed: an unusable tokens file lets nobody in
            log.error("event=tokens_file_unusable error=%r", str(exc))
            raise HTTPException(503, "the console's tokens file is unusable; see the console's log") from None
        if record is None:
            log.warning("event=auth_refused path=%s reason=unknown_or_revoked_token", request.url.path)
            raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
        if role_rank(record.role) < role_rank(role):
            raise HTTPException(403, f"this needs the {role} role; token {record.name!r} has the {record.role} role")
        _no_unknown_query(request)
        return record

    return check
