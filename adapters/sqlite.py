"""SQLite as Lethe's stores use it (the lineage here; the forget queue in serving/ through the
package surface).

A connection per call: safe from any thread or process. WAL, so readers run beside a writer.
`synchronous=FULL` by default: a committed transaction survives power loss (NORMAL may lose the
last commits).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator, Literal

Synchronous = Literal["FULL", "NORMAL"]


def connect(path: Path, synchronous: Synchronous = "FULL") -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)  # autocommit outside BEGIN
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


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
