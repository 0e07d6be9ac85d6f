"""The validation loss table APA's attention reads: loss of each shard adapter on each sample of
a validation set (consented data that is never forgotten). Computed by adapters/train.py's
`adapter_losses`; read without torch (routing a prompt, `lethe shards`).

Rows are files keyed by (shard version, validation-set hash), so a retrained shard simply has no
row yet and only that row is computed; rows of other shards are reused as they are.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from base import write_atomic

from .errors import AdapterError
from .registry import Version


class LossTableError(AdapterError, LookupError):
    """A loss-table row is missing (its version was superseded meanwhile) or not finite."""


class LossTable:
    def __init__(self, root: Path, validation_hash: str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.validation_hash = validation_hash[:16]
        self._rows: dict[str, np.ndarray] = {}  # file name -> row; rows never change once written

    def _path(self, version: Version) -> Path:
        return self.root / f"{version.shard:04d}-{version.id}-{self.validation_hash}.npy"

    def row(self, version: Version) -> np.ndarray | None:
        path = self._path(version)
        if path.name not in self._rows and path.exists():
            self._rows[path.name] = np.load(path)
        return self._rows.get(path.name)

    def put(self, version: Version, losses: np.ndarray) -> None:
        if not np.isfinite(losses).all():
            raise LossTableError(f"validation losses of shard {version.shard} are not finite")
        row = io.BytesIO()
        np.save(row, losses.astype(np.float32))
        write_atomic(self._path(version), row.getvalue())

    def matrix(self, versions: list[Version]) -> np.ndarray:
        """(K, |val|) rows in the order of `versions`; every row must exist."""
        rows = [self.row(v) for v in versions]
        missing = [v.shard for v, r in zip(versions, rows) if r is None]
        if missing:
            raise LossTableError(f"no validation losses for shard(s) {missing} at their current version")
        return np.stack(rows)

    def prune(self, live: list[Version]) -> None:
        keep = {self._path(v).name for v in live}
        for path in self.root.glob("*.npy"):
            if path.name not in keep:
                path.unlink()
                self._rows.pop(path.name, None)
