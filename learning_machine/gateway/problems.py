"""The gateway's one error handler: every failure becomes RFC 9457 problem details (JSON), never a stack
trace. Our own errors carry their status; framework errors are mapped onto the same shape."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from learning_machine.errors import AuthenticationError, BadRequestError, LearningMachineError, encodable, safe_text

log = logging.getLogger("learning_machine.gateway")
PROBLEM_JSON = "application/problem+json"


def as_platform_error(exc: Exception) -> LearningMachineError:
    """Any exception as a :class:`LearningMachineError` (unknown ones as a bare 500, details kept out)."""
    if isinstance(exc, LearningMachineError):
        return exc
    if isinstance(exc, RequestValidationError):
        errors = [{"field": safe_text(".".join(str(p) for p in e.get("loc", ()) if p != "body") or "<body>", 100),
                   "value": encodable(e.get("input")), "rule": e.get("type", ""),
                   "message": safe_text(str(e.get("msg", "")))} for e in exc.errors()[:100]]
        return BadRequestError("the request body is not valid JSON of the expected shape", detail=errors)
    if isinstance(exc, StarletteHTTPException):
        error = LearningMachineError(str(exc.detail))
        error.status = exc.status_code
        error.code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return error
    error = LearningMachineError("internal error; the gateway log has the details (search for the request id)")
    return error


def problem_response(exc: Exception, request_id: str | None = None, instance: str | None = None) -> JSONResponse:
    error = as_platform_error(exc)
    body: dict[str, Any] = error.to_problem()
    if instance:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, AuthenticationError) else None
    try:
        return JSONResponse(body, status_code=error.status, headers=headers, media_type=PROBLEM_JSON)
    except (ValueError, TypeError):  # UnicodeEncodeError is a ValueError
        # Every value we echo passes through errors.encodable; this is the last line, never the route.
        return JSONResponse(encodable(body), status_code=error.status, headers=headers, media_type=PROBLEM_JSON)


async def handle(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    if isinstance(exc, LearningMachineError) and exc.status < 500:
        log.info("%s %s -> %s %s (request %s)", request.method, request.url.path, exc.status, exc.code, request_id)
    elif isinstance(exc, RequestValidationError):
        # Rules and fields only: the values may be a patient's, and they are the client's to see, not the log's.
        rules = sorted({f"{'.'.join(str(p) for p in e.get('loc', ()))[:60]}:{e.get('type')}" for e in exc.errors()})
        log.info("%s %s -> 422 %s (request %s)", request.method, request.url.path, ", ".join(rules[:10]), request_id)
    elif isinstance(exc, (LearningMachineError, StarletteHTTPException)):
        log.warning("%s %s -> %s (request %s)", request.method, request.url.path, exc, request_id)
    else:
        log.error("%s %s failed (request %s)", request.method, request.url.path, request_id, exc_info=exc)
    return problem_response(exc, request_id, request.url.path)


def install(app: FastAPI) -> None:
    """Route every kind of error through :func:`handle`."""
    for kind in (LearningMachineError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, handle)
