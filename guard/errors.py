"""The base of every error the guard package raises: callers catch one type."""

from base import LetheError


class GuardError(LetheError):
    """A guard that cannot be trained, loaded, fitted or applied; the message says why."""


class GuardNameError(GuardError, ValueError):
    """An embedder or classifier name that is not registered, or registered twice."""
