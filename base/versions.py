"""Versioned folders: immutable, content-addressed versions, written through a locked staging
area, and a CURRENT pointer for owners that keep it beside them. The shard adapters' registry
(adapters/registry.py: one folder per shard, the pointer in the lineage's database) and the
guard's classifier (guard/classifier.py: the pointer here) both store through this.

    <root>/<version>/...            one version: its files and manifest.json, never changed in place
    <root>/CURRENT                  the version served, where the owner keeps the pointer here
    <staging>/<pid>-<random>/       a version being written: never seen as a version
    <staging>/<pid>-<random>.lock   held (flock) by its writer while it lives

Storing is atomic: files are written and fsynced under staging, then the folder is renamed into
place. A crash at any point leaves the old version serving and no partial version visible; what
a dead writer left in staging (which may hold data since forgotten) is swept at the next open.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .digests import MANIFEST
from .files import fsync_dir, fsync_tree, write_atomic
from .locks import file_lock, is_locked

POINTER = "CURRENT"


class StagingArea:
    """Folders to write versions into; one area may serve several VersionedDirs on one
    filesystem (the rename into place must not cross filesystems)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # What a dead writer left was never stored: drop it. A live writer holds its folder's
        # lock (a server, a worker and CLI commands may share the area).
        for folder in self.path.iterdir():
            if folder.is_dir() and not is_locked(folder.with_suffix(".lock")):
                shutil.rmtree(folder, ignore_errors=True)
                folder.with_suffix(".lock").unlink(missing_ok=True)

    @contextmanager
    def folder(self) -> Iterator[Path]:
        """A fresh folder to write a version into; removed on exit unless stored."""
        path = self.path / f"{os.getpid()}-{uuid.uuid4().hex}"
        try:
            with file_lock(path.with_suffix(".lock")):  # first: a folder is never seen unlocked
                path.mkdir()
                try:
                    yield path
                finally:
                    shutil.rmtree(path, ignore_errors=True)
        finally:  # the lock file is this folder's alone: gone too, even when the writer failed
            path.with_suffix(".lock").unlink(missing_ok=True)


def _has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


class VersionedDir:
    """The versions under `root`. `staging`: where they are written (default `<root>/.staging`)."""

    def __init__(self, root: Path, staging: StagingArea | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging = staging or StagingArea(self.root / ".staging")

    def path(self, version: str) -> Path:
        return self.root / version

    def store(self, staged: Path, version: str, manifest: dict,
              intact: Callable[[Path], bool] = _has_manifest) -> Path:
        """Write `manifest` (with `version` and, unless given, `created_at`) into the staged
        folder and move it into place as `version`; returns its path. A version of that name
        already in place is reused if `intact(folder)` (the same content stored before), and
        replaced if not (e.g. a crash mid-delete left it damaged)."""
        (staged / MANIFEST).write_text(json.dumps(
            {"created_at": time.time(), **manifest, "version": version}, indent=2, sort_keys=True))
        fsync_tree(staged)
        target = self.path(version)
        try:
            os.rename(staged, target)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if not intact(target):
                shutil.rmtree(target)
                os.rename(staged, target)
        fsync_dir(self.root)
        return target

    def versions(self) -> list[str]:
        """Every stored version, oldest first (by the manifest's `created_at`)."""
        folders = [p for p in self.root.iterdir() if p.is_dir() and _has_manifest(p)]
        folders.sort(key=lambda p: json.loads((p / MANIFEST).read_text())["created_at"])
        return [p.name for p in folders]

    def delete(self, version: str) -> None:
        shutil.rmtree(self.path(version))

    def publish(self, version: str) -> None:
        """Point CURRENT at a stored version (atomic: a crash leaves the old pointer)."""
        write_atomic(self.root / POINTER, version)

    @staticmethod
    def pointer(root: Path) -> str | None:
        """The version CURRENT names under `root`, which this only reads (a folder that does
        not exist is fine); None: nothing published."""
        try:
            return (Path(root) / POINTER).read_text().strip()
        except FileNotFoundError:
            return None
