"""SQLite as Lethe's stores use it (the lineage here; the forget queue in serving/ through the
package surface).

A connection per call: safe from any thread or process. WAL, so readers run beside a writer.
`synchronous=FULL` by default: a committed transaction survives power loss (NORMAL may lose the
last commits). `secure_delete` on every connection: deleted or overwritten content is zeroed in
its page, not left in free space. After a purge, `checkpoint` copies the log into the database
and truncates it, so the WAL file keeps no frame from before the purge.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator, Literal

Synchronous = Literal["FULL", "NORMAL"]


def connect(path: Path, synchronous: Synchronous = "FULL") -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)  # autocommit outside BEGIN
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA secure_delete=ON")  # SQLite's default is off
    return db


def checkpoint(path: Path, synchronous: Synchronous = "FULL", attempts: int = 50) -> None:
    """Move every committed frame of the WAL into the database and truncate the WAL to zero
    bytes. A reader in another connection can hold it up: retried for ~5 s, then given up
    silently, leaving the WAL to the next checkpoint (SQLite's own, or the next purge's)."""
    with closing(connect(path, synchronous)) as db:
        for _ in range(attempts):
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.1)


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
