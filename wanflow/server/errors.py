"""Errors as the API answers them: ``{"detail": message}`` (with OpenAI's ``{"error": {...}}`` on ``/v1``), never a
stack trace; and the bearer-token check.

The token travels in the ``Authorization`` header. Only where a browser cannot send a header (an ``EventSource``, a
``<video src>``) may it come as ``?access_token=``: a URL ends up in logs, histories and ``Referer`` headers, so
every other route refuses it there, and the access log never shows it (``access_log``)."""

from __future__ import annotations

import logging
import secrets

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

log = logging.getLogger(__name__)


# The routes a browser element reads by URL alone: server-sent events, and the video of <video src>.
QUERY_TOKEN_ROUTES = frozenset(
    {"/api/jobs/{job_id}/events", "/api/jobs/{job_id}/video", "/v1/videos/{video_id}/content", "/view"}
)


def check_token(token: str | None) -> None:
    """A token must be something a header can carry: not blank, no spaces at its ends, printable ASCII."""
    if token is None:
        return
    if not token.strip():
        raise ValueError(
            "--token is blank: give a secret (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
        )
    if token != token.strip() or not token.isascii() or not token.isprintable():
        raise ValueError("--token must be printable ASCII without spaces at its ends (a header carries it)")


def has_token(connection: HTTPConnection, token: str | None, query: bool) -> bool:
    """Whether a request (or a websocket) carries ``token``: in ``Authorization: Bearer``, or with ``query`` also as
    ``?access_token=`` (for what a browser opens by URL alone)."""
    if token is None:
        return True
    header = connection.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else None
    if given is None and query:
        given = connection.query_params.get("access_token")
    return given is not None and secrets.compare_digest(given.encode(), token.encode())


def bearer(token: str | None):
    check_token(token)

    def check(request: Request) -> None:
        route = getattr(request.scope.get("route"), "path", None)
        if not has_token(request, token, route in QUERY_TOKEN_ROUTES):
            raise HTTPException(
                401, "missing or wrong token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )

    return check


def validation_message(errors: list) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def error_body(request: Request, status: int, message: str) -> dict:
    body = {"detail": message}
    if request.url.path.startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        body["error"] = {"message": message, "type": kind, "code": str(status)}
    return body


def install_error_handlers(app: FastAPI) -> None:
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(request, exc.status_code, str(exc.detail)), exc.status_code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(request, 422, validation_message(exc.errors())), 422)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(request, 500, "internal server error"), 500)
