"""Exemplars of pending forget items: prompts near one are flagged at once, with no refit.

An entry is the embeddings of one forget item's prompts and responses (vectors only, never its
text), keyed by the item's id (a forget request). Readers use an immutable snapshot, so adding
or removing an entry never blocks a check in flight.
"""

from __future__ import annotations

import threading

import numpy as np

from .errors import GuardError


class ExemplarIndex:
    def __init__(self, dim: int):
        self.dim = dim
        self._lock = threading.Lock()
        self._entries: dict[str, np.ndarray] = {}  # key -> (n, D) unit vectors
        self._snapshot = (np.zeros((0, dim), np.float32), [])  # ((M, D) rows, owner key of each)

    def add(self, key: str, vectors: np.ndarray) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) == 0:
            raise GuardError(f"exemplar {key!r}: expected (n >= 1, {self.dim}) vectors, got "
                             f"{vectors.shape}")
        with self._lock:
            self._entries[key] = vectors.astype(np.float32)
            self._rebuild()

    def remove(self, key: str) -> bool:
        """Drop an entry (its forget request is exact now); False if there was none."""
        with self._lock:
            found = self._entries.pop(key, None) is not None
            self._rebuild()
        return found

    def _rebuild(self) -> None:
        keys = list(self._entries)
        rows = [self._entries[k] for k in keys]
        self._snapshot = (np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32),
                          [k for k in keys for _ in range(len(self._entries[k]))])

    def keys(self) -> list[str]:
        return list(self._entries)

    def get(self, key: str) -> np.ndarray | None:
        return self._entries.get(key)

    def nearest(self, vectors: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """For each of (N, D) unit vectors: (N,) cosine similarity to the nearest exemplar row
        (-1 when there is none) and the key of its entry."""
        rows, owners = self._snapshot
        if len(rows) == 0:
            return np.full(len(vectors), -1.0, np.float32), [None] * len(vectors)
        sims = vectors @ rows.T  # (N, M)
        best = sims.argmax(axis=1)  # (N,)
        return sims[np.arange(len(vectors)), best], [owners[i] for i in best]

    def __len__(self) -> int:
        return len(self._entries)
