"""The request body limit: a body past `server.max_body_bytes` is answered 413 before the app
reads it whole or parses it, whether the client declared its length or sent it chunked."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import RequestTooLarge, error_response


class BodyLimit:
    """ASGI middleware: refuses a declared Content-Length past the limit at once; otherwise
    reads the body, counting, and refuses it as soon as the count passes the limit. A body
    within it is replayed to the app, then `receive` is the server's again (disconnects)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        body = bytearray()
        message = await receive()
        while message["type"] == "http.request":  # else the client left: the app sees that
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": bytes(body), "more_body": False}
                break
            message = await receive()
        await self.app(scope, _replay(message, receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(RequestTooLarge(
            f"the request body is larger than this server's limit of {self.max_bytes} bytes "
            "(server.max_body_bytes)"))(scope, receive, send)


def _replay(first: Message, receive: Receive) -> Receive:
    """`receive` that gives `first` (the whole body, or the disconnect), then the server's."""
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
