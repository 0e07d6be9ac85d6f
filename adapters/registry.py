"""Adapter registry: immutable, content-addressed versions of each shard's adapter.

Layout under `root`:

    shard-0002/<version>/adapter_config.json, adapter_model.safetensors, manifest.json
    .staging/<pid>-<random>/  adapters being written; never served; a dead writer's are swept
    .staging/<pid>-<random>.lock   held (flock) by the writer while it lives

A version id is the hash of the adapter's weights file, so training the same data twice gives the
same id. Each shard's folder is a `base.VersionedDir`: stored atomically through .staging. Which
version a shard serves is not here but in the lineage's database (lineage.py: `publish`, a
compare-and-set there), so a crash at any point leaves the old version serving and no partial
version visible. A version folder found in place is reused only if its weights hash to its
name; a damaged one is replaced. (Stores published before the pointer moved
to the database kept it in shard-0002/CURRENT: `legacy_pointers`.)
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from base import MANIFEST, StagingArea, VersionedDir, sha256_file

from .errors import AdapterError

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


def _intact(folder: Path) -> bool:
    """A version folder whose weights still hash to its name, with its manifest."""
    try:
        return weights_hash(folder) == folder.name and (folder / MANIFEST).is_file()
    except FileNotFoundError:
        return False


class AdapterRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.staging_root = self.root / ".staging"
        self._staging = StagingArea(self.staging_root)  # one for every shard

    def shard_dir(self, shard: int) -> Path:
        return self.root / f"shard-{shard:04d}"

    def _versions_of(self, shard: int) -> VersionedDir:
        return VersionedDir(self.shard_dir(shard), self._staging)

    def staging(self) -> AbstractContextManager[Path]:
        """A fresh folder to write an adapter into; removed on exit unless stored."""
        return self._staging.folder()

    def store(self, shard: int, staged: Path, manifest: dict) -> Version:
        """Move a staged adapter into place as a version of `shard` (serving it is the
        lineage's `publish`); returns it.

        If the same weights were stored before, that version is reused (its id is the hash).
        """
        missing = [name for name in (WEIGHTS, CONFIG) if not (staged / name).is_file()]
        if missing:
            raise RegistryError(f"staged adapter {staged} lacks {', '.join(missing)}")
        version_id = weights_hash(staged)
        path = self._versions_of(shard).store(staged, version_id, {**manifest, "shard": shard},
                                              intact=_intact)
        return Version(shard, version_id, path)

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
        if not self.shard_dir(shard).is_dir():
            return []
        return [self.version(shard, v) for v in self._versions_of(shard).versions()]

    def collect_garbage(self, shard: int, keep: int, forgotten: set[str], current: str | None
                        ) -> list[Version]:
        """Delete versions other than `current` (None: the shard serves nothing): any trained on
        a forgotten sample, and all but the newest `keep` others. Returns what was deleted."""
        old = [v for v in self.versions(shard) if v.id != current]
        tainted = [v for v in old if forgotten.intersection(v.manifest["sample_ids"])]
        clean = [v for v in old if v not in tainted]
        doomed = tainted + clean[:max(0, len(clean) - keep)]
        for v in doomed:
            self._versions_of(shard).delete(v.id)
        return doomed
