"""The one base of the errors the server and the CLI raise, and what each interface makes of it.

Every error of the `serving` package derives from `LetheError`, which carries its CLI exit code
and its HTTP status. The CLI (`serving/cli`) and the API's error mapper (`serving/api/errors.py`)
each handle this one type, plus the bases of the two libraries the server calls
(`LIBRARY_ERRORS`: adapters and guard may not import serving, so they have bases of their own).
"""

from __future__ import annotations

from adapters import AdapterError
from guard import GuardError

LIBRARY_ERRORS = (AdapterError, GuardError)


class LetheError(Exception):
    exit_code = 1  # the command ran and failed
    http_status = 500  # the server failed; a client's mistake overrides this with a 4xx
    code: str | None = None  # OpenAI error `code`


class UsageError(LetheError, ValueError):
    """The command or its configuration must change (a bad key, flag or name)."""

    exit_code = 2
