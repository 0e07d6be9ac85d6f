"""The FastAPI app: thin routes over OpenAIServing and the forget endpoints; auth, request ids,
errors (api/errors.py), metrics."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engines import EngineError
from ..errors import LetheError
from ..forget import ForgetService, QueueError, WorkerSupervisor
from .errors import AuthenticationError, error_response
from .forget import forget_router
from .limits import BodyLimit
from .protocol import ChatCompletionRequest, CompletionRequest
from .serving import OpenAIServing

log = logging.getLogger("lethe.api")
# Paths for operators only: with any key configured they need an admin key.
ADMIN_PATHS = ("/v1/forget", "/metrics", "/docs", "/redoc", "/openapi.json")


def build_app(serving: OpenAIServing, forget: ForgetService | None,
              worker: WorkerSupervisor | None, *, api_keys: list[str], admin_keys: list[str],
              max_body_bytes: int, lifespan=None) -> FastAPI:
    app = FastAPI(title="Lethe", lifespan=lifespan)
    metrics = serving.metrics
    # /health's store check on a thread of its own: never queued behind guard work or forget
    # submissions, so it answers as fast under load as idle.
    health_pool = ThreadPoolExecutor(1, thread_name_prefix="lethe-health")

    for exc_type in (LetheError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, lambda request, exc: error_response(exc))
    # Inside request_context (added later, so outside this): a 413 has its request id and is
    # counted, and a client without a key is refused before its body is read.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.middleware("http")
    async def request_context(request: Request, call_next):
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        path = request.url.path
        if path.startswith(ADMIN_PATHS) and (api_keys or admin_keys) and not _authorized(
                request, admin_keys):
            # /metrics counts flagged requests: a client that could read it would learn whether
            # the guard fired on its prompt. Forget requests and the API schema are operators'.
            response = error_response(AuthenticationError(
                f"{path} needs an admin key (server.admin_keys)"))
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
    async def health() -> JSONResponse:
        """200 when the engine serves, the forget store answers and the forget worker runs (if
        this server runs one); 503 otherwise, with the part that is down."""
        status = {"engine": "ok", "store": "none" if forget is None else "ok",
                  "worker": "none" if worker is None else "running" if worker.alive else "down",
                  "worker_restarts": 0 if worker is None else worker.restarts}
        try:
            await serving.engine.check_health()
        except EngineError as e:
            log.error("health check failed: %s", e)
            status["engine"] = "down"
        if forget is not None:
            try:  # the queue's database (and the lineage's: one store.url)
                await asyncio.get_running_loop().run_in_executor(health_pool,
                                                                 forget.queue.counts)
            except QueueError as e:
                log.error("health check failed: %s", e)
                status["store"] = "down"
        healthy = "down" not in (status["engine"], status["store"], status["worker"])
        return JSONResponse(status, status_code=200 if healthy else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return serving.models()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return _respond(await serving.completion(body, _tenant(request, api_keys)))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return _respond(await serving.chat(body, _tenant(request, api_keys)))

    app.include_router(forget_router(forget))
    return app


def _respond(result):
    if isinstance(result, AsyncIterator):
        return StreamingResponse(result, media_type="text/event-stream")
    return result


def _bearer(request: Request) -> str | None:
    """The key of an `Authorization: Bearer KEY` header; None without one."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return key if scheme.lower() == "bearer" else None


def _tenant(request: Request, api_keys: list[str]) -> str | None:
    """Who sent an (authorized) request: a digest of its key, which goes no further than here;
    None where /v1/ needs no key (every client is one tenant)."""
    key = _bearer(request)
    if not api_keys or key is None:
        return None
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _authorized(request: Request, api_keys: list[str]) -> bool:
    key = _bearer(request)
    return key is not None and any(hmac.compare_digest(key.encode(), k.encode())
                                   for k in api_keys)
