"""The FastAPI app: thin routes over OpenAIServing, auth, request ids, errors, metrics."""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters import UnknownSampleError

from ..engines import EngineError
from ..forget import ForgetService
from ..pipeline import GuardRefusal
from ..queue import ForgetRequest, UnknownRequestError
from .errors import APIError, AuthenticationError, ConflictError, InvalidRequestError, NotFoundError
from .protocol import (ChatCompletionRequest, CompletionRequest, ErrorInfo, ErrorResponse,
                       ForgetBody, ForgetStatus)
from .serving import OpenAIServing

log = logging.getLogger("lethe.api")


def error_response(exc: Exception) -> JSONResponse:
    """The one place exceptions become HTTP errors in OpenAI's shape."""
    if isinstance(exc, GuardRefusal):  # policy `refuse`: the convention of hosted APIs
        exc = InvalidRequestError(str(exc), code="content_filter")
    elif isinstance(exc, (UnknownSampleError, UnknownRequestError)):
        exc = NotFoundError(str(exc))
    if isinstance(exc, APIError):
        status, info = exc.status_code, ErrorInfo(message=exc.message, type=exc.type,
                                                  param=exc.param, code=exc.code)
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
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return ErrorInfo(message=f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": "),
                         type="invalid_request_error", code="invalid_json")
    loc = [str(p) for p in first["loc"] if p != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {first['msg']}" if param else first["msg"]
    if len(exc.errors()) > 1:
        message += f" (and {len(exc.errors()) - 1} more error(s))"
    return ErrorInfo(message=message, type="invalid_request_error", param=param)


def build_app(serving: OpenAIServing, forget: ForgetService | None, *, api_keys: list[str],
              admin_keys: list[str], lifespan=None) -> FastAPI:
    app = FastAPI(title="Lethe", lifespan=lifespan)
    metrics = serving.metrics

    for exc_type in (APIError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, lambda request, exc: error_response(exc))

    @app.middleware("http")
    async def request_context(request: Request, call_next):
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        path = request.url.path
        if path.startswith("/v1/forget") and (api_keys or admin_keys) and not _authorized(
                request, admin_keys):
            response = error_response(AuthenticationError(
                "forget requests need an admin key (server.admin_keys)"))
        elif api_keys and path.startswith("/v1/") and not _authorized(request,
                                                                      api_keys + admin_keys):
            response = error_response(AuthenticationError("Invalid or missing API key"))
        else:
            try:
                response = await call_next(request)
            except Exception as e:  # errors raised past FastAPI's handlers
                response = error_response(e)
        response.headers["X-Request-Id"] = request_id
        route = request.scope.get("route")
        metrics.requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health() -> Response:
        try:
            await serving.engine.check_health()
        except EngineError as e:
            log.error("health check failed: %s", e)
            return Response(status_code=503)
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return serving.models()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        return _respond(await serving.completion(body))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        return _respond(await serving.chat(body))

    def forget_service() -> ForgetService:
        if forget is None:
            raise ConflictError("this server has no shard store to forget from: train one with "
                                "`lethe train`, then restart the server", code="no_shard_store")
        return forget

    @app.post("/v1/forget", status_code=202)
    async def submit_forget(body: ForgetBody) -> ForgetStatus:
        request, _ = await asyncio.to_thread(forget_service().submit, body.owner,
                                             body.sample_ids, body.prompts)
        return _status(request)

    @app.get("/v1/forget/{request_id}")
    async def forget_status(request_id: str) -> ForgetStatus:
        return _status(forget_service().queue.get(request_id))

    @app.get("/v1/forget/{request_id}/receipt")
    async def forget_receipt(request_id: str) -> dict:
        request = forget_service().queue.get(request_id)
        if request.receipt is None:
            raise ConflictError(f"forget request {request_id} has no receipt until it is "
                                f"completed (state: {request.state})", code="not_completed")
        return request.receipt

    return app


def _status(request: ForgetRequest) -> ForgetStatus:
    return ForgetStatus(**request.public())


def _respond(result):
    if isinstance(result, AsyncIterator):
        return StreamingResponse(result, media_type="text/event-stream")
    return result


def _authorized(request: Request, api_keys: list[str]) -> bool:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and any(
        hmac.compare_digest(key.encode(), k.encode()) for k in api_keys
    )
