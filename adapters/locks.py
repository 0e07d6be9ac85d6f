"""Locks across processes, held by a file descriptor: `flock(2)` (exclusive, or shared).

The kernel drops a lock when its holder exits, SIGKILL included, so a dead holder never blocks
anyone and no lease has to run out. flock locks belong to an open file, so two threads of one
process that each open the file exclude each other too. (One host; across hosts a shard's retrain
lock is PostgreSQL's, database.py.)
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing), waiting for it if need be."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class shared_lock:
    """A shared lock on `path` (created if missing), held until `release` or until this object
    is collected or its process exits: says "alive" to `is_locked` callers, excludes no other
    holder of a shared lock."""

    def __init__(self, path: Path):
        self._fd = None
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    __del__ = release


def is_locked(path: Path) -> bool:
    """Whether a live process holds `path`'s lock, exclusive or shared (False when there is no
    such file)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
