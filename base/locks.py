"""Locks across processes, held by a file descriptor: `flock(2)` (exclusive, or shared).

The kernel drops a lock when its holder exits, SIGKILL included, so a dead holder never blocks
anyone and no lease has to run out. flock locks belong to an open file, so two threads of one
process that each open the file exclude each other too. (One host; across hosts a shard's retrain
lock is PostgreSQL's: database.py.)
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


@contextmanager
def file_lock(path: Path, wait: float | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on `path` (created if missing) for the block, waiting for it at
    most `wait` seconds (None: as long as it takes); yields whether it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if wait is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        else:
            yield poll(lambda: _try_flock(fd), wait)
    finally:
        os.close(fd)  # releases the lock


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def poll(attempt: Callable[[], bool], wait: float, every: float = 0.05) -> bool:
    """Call `attempt` every `every` seconds until it returns True (then True) or `wait` seconds
    have passed (then False)."""
    deadline = time.monotonic() + wait
    while not attempt():
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
    return True


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
