"""SQLite as Lethe's stores use it (the lineage in adapters/, the forget queue in serving/),
through database.py.

A connection per call: safe from any thread or process. WAL, so readers run beside a writer.
`synchronous=FULL` by default: a committed transaction survives power loss (NORMAL may lose the
last commits). `secure_delete` on every connection: deleted or overwritten content is zeroed in
its page, not left in free space. After a purge, `checkpoint` copies the log into the database
and truncates it, so the WAL file keeps no frame from before the purge.

The truncation must wait for every reader of the WAL, and while it waits no writer gets in: a
long reader (a backup, an operator's `sqlite3` shell) would stall the purge and every write. So
each try waits only CHECKPOINT_TRY_SECONDS, writers go between tries, and after
CHECKPOINT_SECONDS in all the purge is left pending: `finish_checkpoints` (the forget worker,
each round) tries it again until the reader is gone, and the next purge's checkpoint does too.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator, Literal

Synchronous = Literal["FULL", "NORMAL"]

log = logging.getLogger("lethe.sqlite")

CHECKPOINT_SECONDS = 5.0  # a purge's checkpoint waits for readers at most this long in all
CHECKPOINT_TRY_SECONDS = 0.05  # one try's wait for readers, which holds new writers back
CHECKPOINT_PAUSE_SECONDS = 0.2  # between tries: the writers held back by the last one go first

_pending: set[Path] = set()  # databases whose WAL may still hold frames from before a purge
_pending_lock = threading.Lock()


def connect(path: Path, synchronous: Synchronous = "FULL") -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)  # autocommit outside BEGIN
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA secure_delete=ON")  # SQLite's default is off
    return db


def checkpoint(path: Path, synchronous: Synchronous = "FULL",
               seconds: float | None = None) -> bool:
    """Move every committed frame of the WAL into the database and truncate the WAL to zero
    bytes; whether it did. A reader of the WAL in another connection holds it up: tried again
    for `seconds` in all (None: CHECKPOINT_SECONDS; 0: once), each try holding new writers back
    at most CHECKPOINT_TRY_SECONDS; then left pending (`checkpoint_pending`), logged."""
    path = Path(path)
    deadline = time.monotonic() + (CHECKPOINT_SECONDS if seconds is None else seconds)
    with closing(connect(path, synchronous)) as db:
        db.execute(f"PRAGMA busy_timeout = {round(CHECKPOINT_TRY_SECONDS * 1000)}")
        while not _truncate(db):
            if time.monotonic() + CHECKPOINT_PAUSE_SECONDS > deadline:
                with _pending_lock:
                    new = path not in _pending
                    _pending.add(path)
                if new:
                    log.warning("%s: a reader holds the WAL, which keeps frames from before a "
                                "purge until it is truncated; tried again by the forget "
                                "worker's rounds and the next purge", path)
                return False
            time.sleep(CHECKPOINT_PAUSE_SECONDS)
    with _pending_lock:
        done_late = path in _pending
        _pending.discard(path)
    if done_late:
        log.info("%s: the WAL is truncated; the purge held up by a reader is complete", path)
    return True


def _truncate(db: sqlite3.Connection) -> bool:
    """One wal_checkpoint(TRUNCATE); whether the WAL is empty now."""
    try:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.OperationalError as e:  # a writer or another checkpoint held on past the try
        if e.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return False
        raise
    return not busy


def checkpoint_pending(path: Path) -> bool:
    """Whether a purge's checkpoint of `path` in this process gave up, and none succeeded since."""
    with _pending_lock:
        return Path(path) in _pending


def finish_checkpoints() -> list[Path]:
    """Try once more each checkpoint this process left pending; the databases still pending."""
    with _pending_lock:
        _pending.difference_update([p for p in _pending if not p.exists()])  # deleted: nothing held
        paths = sorted(_pending)
    return [path for path in paths if not checkpoint(path, seconds=0)]


@contextmanager
def transaction(path: Path, synchronous: Synchronous = "FULL") -> Iterator[sqlite3.Connection]:
    """A write transaction, taken at once (BEGIN IMMEDIATE); rolled back on any error."""
    with closing(connect(path, synchronous)) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except Exception:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
