"""Adapter registry: immutable, content-addressed versions of each shard's adapter.

Layout under `root`:

    shard-0002/<version>/adapter_config.json, adapter_model.safetensors, manifest.json
    .staging/<pid>-<random>/  adapters being written; never served; a dead writer's are swept
    .staging/<pid>-<random>.lock   held (flock) by the writer while it lives

A version id is the hash of the adapter's weights file, so training the same data twice gives the
same id. Storing is atomic: files are written and fsynced under .staging, then the folder is
renamed into place. Which version a shard serves is not here but in the lineage's database
(lineage.py: `publish`, a compare-and-set there), so a crash at any point leaves the old version
serving and no partial version visible. A version folder found in place is reused only if its
weights hash to its name; a damaged one is replaced. (Stores published before the pointer moved
to the database kept it in shard-0002/CURRENT: `legacy_pointers`.)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from base import MANIFEST, fsync_dir, fsync_tree, sha256_file

from .errors import AdapterError
from .locks import file_lock, is_locked

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


class RegistryError(AdapterError, RuntimeError):
    """A staged adapter is incomplete, or a shard has no published version."""


LEGACY_POINTER = "CURRENT"


@dataclass(frozen=True)
class Version:
    shard: int
    id: str
    path: Path

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / MANIFEST).read_text())


def weights_hash(adapter_dir: Path) -> str:
    return sha256_file(adapter_dir / WEIGHTS)[:16]


def _intact(folder: Path, version_id: str) -> bool:
    """A published version folder whose weights still hash to its name, with its manifest."""
    try:
        return weights_hash(folder) == version_id and (folder / MANIFEST).is_file()
    except FileNotFoundError:
        return False


class AdapterRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.staging_root = self.root / ".staging"
        self.staging_root.mkdir(parents=True, exist_ok=True)
        # What a dead writer left in staging was never published: drop it. A live writer holds
        # its folder's lock (a server, a worker and CLI commands may share the registry).
        for path in self.staging_root.iterdir():
            if path.is_dir() and not is_locked(path.with_suffix(".lock")):
                shutil.rmtree(path, ignore_errors=True)
                path.with_suffix(".lock").unlink(missing_ok=True)

    def shard_dir(self, shard: int) -> Path:
        return self.root / f"shard-{shard:04d}"

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder to write an adapter into; removed on exit unless published."""
        path = self.staging_root / f"{os.getpid()}-{uuid.uuid4().hex}"
        with file_lock(path.with_suffix(".lock")):  # first: a folder is never seen unlocked
            path.mkdir()
            try:
                yield path
            finally:
                shutil.rmtree(path, ignore_errors=True)
        path.with_suffix(".lock").unlink(missing_ok=True)

    def store(self, shard: int, staged: Path, manifest: dict) -> Version:
        """Move a staged adapter into place as a version of `shard` (serving it is the
        lineage's `publish`); returns it.

        If the same weights were stored before, that version is reused (its id is the hash).
        """
        missing = [name for name in (WEIGHTS, CONFIG) if not (staged / name).is_file()]
        if missing:
            raise RegistryError(f"staged adapter {staged} lacks {', '.join(missing)}")
        version_id = weights_hash(staged)
        shard_dir = self.shard_dir(shard)
        shard_dir.mkdir(exist_ok=True)
        target = shard_dir / version_id
        (staged / MANIFEST).write_text(json.dumps(
            {**manifest, "shard": shard, "version": version_id}, indent=2, sort_keys=True))
        fsync_tree(staged)
        try:
            os.rename(staged, target)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if not _intact(target, version_id):  # damaged (e.g. a crash mid-delete): replace
                shutil.rmtree(target)
                os.rename(staged, target)
            # else: the same weights were published before; that version is reused as it is
        fsync_dir(shard_dir)
        return Version(shard, version_id, target)

    def version(self, shard: int, version_id: str) -> Version:
        return Version(shard, version_id, self.shard_dir(shard) / version_id)

    def legacy_pointers(self) -> dict[int, str]:
        """Shard id -> the version its `CURRENT` file names, in a store published before the
        lineage held the pointer (`drop_legacy_pointers` once the lineage has them)."""
        return {int(p.parent.name.split("-")[1]): p.read_text().strip()
                for p in self.root.glob(f"shard-*/{LEGACY_POINTER}")}

    def drop_legacy_pointers(self) -> None:
        for pointer in self.root.glob(f"shard-*/{LEGACY_POINTER}"):
            pointer.unlink(missing_ok=True)

    def versions(self, shard: int) -> list[Version]:
        """Every stored version of a shard, oldest first (none for a shard never published:
        a store derived without all of its samples, e.g. the evaluation's reference)."""
        folder = self.shard_dir(shard)
        if not folder.is_dir():
            return []
        dirs = [p for p in folder.iterdir() if (p / MANIFEST).is_file()]
        dirs.sort(key=lambda p: json.loads((p / MANIFEST).read_text())["created_at"])
        return [Version(shard, p.name, p) for p in dirs]

    def collect_garbage(self, shard: int, keep: int, forgotten: set[str], current: str | None
                        ) -> list[Version]:
        """Delete versions other than `current` (None: the shard serves nothing): any trained on
        a forgotten sample, and all but the newest `keep` others. Returns what was deleted."""
        old = [v for v in self.versions(shard) if v.id != current]
        tainted = [v for v in old if forgotten.intersection(v.manifest["sample_ids"])]
        clean = [v for v in old if v not in tainted]
        doomed = tainted + clean[:max(0, len(clean) - keep)]
        for v in doomed:
            shutil.rmtree(v.path)
        return doomed
