"""API errors, and the one function that maps any exception to OpenAI's error JSON."""

from __future__ import annotations

import logging
import re

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters import UnknownSampleError
from base import DatabaseError

from ..errors import LetheError
from ..forget import QueueError
from .protocol import ErrorInfo, ErrorResponse

log = logging.getLogger("lethe.api")


class APIError(LetheError):
    """An error whose message is written for the API client."""

    http_status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequestError(APIError):
    pass


class ModelNotFoundError(APIError):
    http_status = 404
    code = "model_not_found"


class NotFoundError(APIError):
    http_status = 404
    code = "not_found"


class ConflictError(APIError):
    """The request is valid but the server's state does not allow it (yet)."""

    http_status = 409


class RequestTooLarge(APIError):
    http_status = 413
    code = "request_too_large"


class AuthenticationError(APIError):
    http_status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class StoreUnavailable(APIError):
    """The database of the queue or the lineage cannot be reached: nothing was stored, and no
    request is served without knowing which shards are held (fail closed)."""

    http_status = 503
    type = "service_unavailable"
    code = "store_unavailable"


class EngineFailure(APIError):
    http_status = 500
    type = "internal_server_error"


def error_response(exc: Exception) -> JSONResponse:
    """The one place exceptions become HTTP errors in OpenAI's shape. A LetheError below 500 is
    the client's to fix and says why; any other failure is logged and answered with no detail."""
    if isinstance(exc, UnknownSampleError):  # the one library error a client's input causes
        exc = NotFoundError(str(exc))
    if isinstance(exc, (QueueError, DatabaseError)):  # details for the log, not the client
        log.error("store unavailable: %s", exc)
        exc = StoreUnavailable("the forget store is unavailable: nothing was stored; retry later")
    if isinstance(exc, APIError):
        status, info = exc.http_status, ErrorInfo(message=exc.message, type=exc.type,
                                                  param=exc.param, code=exc.code)
    elif isinstance(exc, LetheError) and exc.http_status < 500:
        status, info = exc.http_status, ErrorInfo(message=str(exc), type="invalid_request_error",
                                                  code=exc.code)
    elif isinstance(exc, RequestValidationError):
        status, info = 400, _validation_info(exc)
    elif isinstance(exc, StarletteHTTPException):
        status = exc.status_code
        info = ErrorInfo(message=str(exc.detail), type="invalid_request_error"
                         if status < 500 else "internal_server_error")
    else:
        log.exception("unhandled error", exc_info=exc)
        status, info = 500, ErrorInfo(message="internal server error",
                                      type="internal_server_error")
    return JSONResponse(ErrorResponse(error=info).model_dump(), status_code=status)


def _validation_info(exc: RequestValidationError) -> ErrorInfo:
    errors = exc.errors()
    if errors[0]["type"] == "json_invalid":
        detail = errors[0].get("ctx", {}).get("error", "")
        return ErrorInfo(message=f"request body is not valid JSON: {detail}".rstrip(": "),
                         type="invalid_request_error", code="invalid_json")
    # A value no member of a union (`prompt`, `content`) accepts fails once per member: the
    # member whose error lies deepest is the one the client meant.
    best = max(errors, key=lambda e: len(e["loc"]))
    loc = _field_path(best["loc"])
    others = {_field_path(e["loc"]) for e in errors} - {loc[:i] for i in range(len(loc) + 1)}
    param = ".".join(map(str, loc)) or None
    message = f"{param}: {best['msg']}" if param else best["msg"]
    if others:
        message += f" (and {len(others)} more error(s))"
    return ErrorInfo(message=message, type="invalid_request_error", param=param)


# A union member or validator in pydantic's `loc` ("function-after[_utf8(), str]",
# "list[int]", "str", "TextPart"), which names no field the client sent.
_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "list", "dict", "none"})


def _field_path(loc: tuple) -> tuple:
    """The fields and indexes of `loc` in the body: its union members and validators left out."""
    return tuple(p for p in loc[1:] if isinstance(p, int) or (
        _FIELD.fullmatch(p) and p not in _TYPE_TAGS))
