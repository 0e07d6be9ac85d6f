"""The errors the server and the CLI raise. Every error of Lethe (serving, and the libraries
adapters and guard) derives from `base.LetheError`, which carries its CLI exit code and its HTTP
status: the CLI (`serving/cli`) and the API's error mapper (`serving/api/errors.py`) each handle
that one type.
"""

from __future__ import annotations

from base import LetheError

__all__ = ["ConfigError", "LetheError", "UsageError"]


class UsageError(LetheError, ValueError):
    """The command or its configuration must change (a bad key, flag or name)."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration key is unknown or has a bad value; the message names the key."""
