"""A SQLite database as another program sees it: a reader that holds a read transaction open
(a backup tool, an operator's `sqlite3` shell), and the raw bytes of its files.

    held_reader(path) -> connection in an open read transaction (close it to let go)
    holds(path, text) -> names of the database's files (itself, -wal, -shm) holding `text`
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def held_reader(path: Path) -> sqlite3.Connection:
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the snapshot is taken here
    return reader


def holds(path: Path, text: str) -> list[str]:
    return sorted(p.name for p in Path(path).parent.iterdir()
                  if p.name.startswith(Path(path).name) and p.is_file()
                  and text.encode() in p.read_bytes())
