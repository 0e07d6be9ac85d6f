"""Durable files: a write that is whole or absent after a crash, and content digests."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make the names in a folder (a rename, a new file) as durable as the files' bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush every file under path, then the folders themselves, to disk."""
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(path)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` whole or not at all: a unique temporary name (two writers never
    share one), fsynced, renamed into place, the folder fsynced."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
