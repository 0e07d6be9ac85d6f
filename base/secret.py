"""Keyed hashes: what Lethe keeps after a purge proves a text's identity without revealing it.

A plain sha256 of a short text ("lives in Emberfold") is found again by hashing guesses. An HMAC
under a secret kept beside the data (32 random bytes, created at first use, mode 0600) can only
be checked by whoever holds the secret: the operator, not a reader of a leaked database.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from .files import fsync_dir

SECRET_BYTES = 32


def load_secret(path: Path) -> bytes:
    """The secret at `path`, created (0600) if it does not exist yet. Written whole to a
    temporary file, then linked into place: a reader never sees a partial secret, and of two
    processes creating it at once one wins and both use its secret."""
    path = Path(path)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(SECRET_BYTES))
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process linked its secret first
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)  # the name as durable as the bytes
    return path.read_bytes()


def keyed_hash(secret: bytes, *parts: str) -> str:
    """HMAC-SHA256 of the parts, joined by the unit separator (U+001F): one text, or the fields
    of a record (a sample's id, owner, prompt and response)."""
    return hmac.new(secret, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()
