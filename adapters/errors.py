"""The base of every error the adapters package raises: callers catch one type.

Each subclass also derives from the builtin that says what kind of failure it is (LookupError
for something that does not exist, ValueError for bad input), so generic handlers still work.
"""

from base import LetheError


class AdapterError(LetheError):
    """Base of the errors of `adapters`."""
