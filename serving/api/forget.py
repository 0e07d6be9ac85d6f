"""The forget endpoints: submit a request, read its state, read its signed receipt; and the key
that receipts are signed with (GET /v1/receipts/key: public, so any API key reads it).

The app's middleware admits only admin keys here (when any key is configured). The API answers
202 only once the request is durable and the guard enforces it (serving/forget/service.py).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter

from ..embedder import embed_first
from ..forget import ForgetRequest, ForgetService
from .errors import ConflictError
from .protocol import ForgetBody, ForgetStatus


def forget_router(forget: ForgetService | None) -> APIRouter:
    router = APIRouter()
    # Submissions (the store's writes and the guard's new exemplar) on threads of their own, never
    # queued behind the chats' guard checks or tokenizing, and embedding before them
    # (serving/embedder.py); two, so one slow store write does not hold up the next submission.
    pool = ThreadPoolExecutor(2, thread_name_prefix="lethe-forget", initializer=embed_first)

    def service() -> ForgetService:
        if forget is None:
            raise ConflictError("this server has no shard store to forget from: train one with "
                                "`lethe train`, then restart the server", code="no_shard_store")
        return forget

    @router.post("/v1/forget", status_code=202)
    async def submit_forget(body: ForgetBody) -> ForgetStatus:
        request, _ = await asyncio.get_running_loop().run_in_executor(
            pool, service().submit, body.owner, body.sample_ids, body.prompts)
        return _status(request)

    @router.get("/v1/forget/{request_id}")
    async def forget_status(request_id: str) -> ForgetStatus:
        return _status(service().get(request_id))

    @router.get("/v1/forget/{request_id}/receipt")
    async def forget_receipt(request_id: str) -> dict:
        request = service().get(request_id)
        if request.receipt is None:
            raise ConflictError(f"forget request {request_id} has no receipt until it is "
                                f"completed (state: {request.state})", code="not_completed")
        return request.receipt

    @router.get("/v1/receipts/key")
    async def receipt_key() -> dict:
        """The Ed25519 public key of receipts (base/receipts.py), for `lethe receipt verify`."""
        return service().receipt_key

    return router


def _status(request: ForgetRequest) -> ForgetStatus:
    return ForgetStatus(**request.public())
