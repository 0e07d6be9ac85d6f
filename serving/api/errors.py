"""Typed API errors. The app maps each to OpenAI's error JSON with its HTTP status."""

from __future__ import annotations


class APIError(Exception):
    status_code = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequestError(APIError):
    pass


class ModelNotFoundError(APIError):
    status_code = 404
    code = "model_not_found"


class NotFoundError(APIError):
    status_code = 404
    code = "not_found"


class ConflictError(APIError):
    """The request is valid but the server's state does not allow it (yet)."""

    status_code = 409


class AuthenticationError(APIError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class EngineFailure(APIError):
    status_code = 500
    type = "internal_server_error"
