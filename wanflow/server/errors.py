"""Errors as the API answers them: ``{"detail": message}`` (with OpenAI's ``{"error": {...}}`` on ``/v1``), never a
stack trace; and the bearer-token check."""

from __future__ import annotations

import logging
import secrets

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)


def bearer(token: str | None):
    def check(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("access_token", "")
        if not secrets.compare_digest(given.encode(), token.encode()):
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


def _error_body(request: Request, status: int, message: str) -> dict:
    body = {"detail": message}
    if request.url.path.startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        body["error"] = {"message": message, "type": kind, "code": str(status)}
    return body


def install_error_handlers(app: FastAPI) -> None:
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(_error_body(request, exc.status_code, str(exc.detail)), exc.status_code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_error_body(request, 422, validation_message(exc.errors())), 422)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(_error_body(request, 500, "internal server error"), 500)
