"""Durable files: a write that is whole or absent after a crash, a file or folder made once per
place by whichever process comes first, and content digests."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable

from .locks import file_lock

log = logging.getLogger("lethe.files")


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


def made_once(target: Path, make: Callable[[Path], None]) -> Path:
    """`target`, a file or a folder, made if it is missing by `make(path)` at a fresh path beside
    it, flushed and renamed into place: whole or absent after a crash. Of processes that need it
    at once (a server, its worker and CLI commands on a cold cache), one makes it while the
    others wait on `<target>.lock` and then read it; what a killed maker left is swept by the
    next one."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(target.name + ".lock")):
        if target.exists():
            return target
        ours = re.compile(re.escape(f".{target.name}.") + r"[0-9a-f]{32}\.part")
        for stale in target.parent.iterdir():  # a dead maker's: a live one would hold the lock
            if ours.fullmatch(stale.name):
                _remove(stale)
        log.info("making %s (once)", target)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        try:
            make(tmp)
            if tmp.is_dir():
                fsync_tree(tmp)
            else:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, target)
            fsync_dir(target.parent)
        finally:
            _remove(tmp)
    return target


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
