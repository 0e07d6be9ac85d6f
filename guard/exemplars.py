"""Exemplars of pending forget items: prompts near one are flagged at once, with no refit.

An entry is the embeddings of one forget item's prompts and responses (vectors only, never its
text) and its own similarity threshold, keyed by the item's id (a forget request). Readers use
an immutable snapshot, so adding or removing an entry never blocks a check in flight.
"""

from __future__ import annotations

import threading

import numpy as np

from .errors import GuardError


class ExemplarIndex:
    def __init__(self, dim: int):
        self.dim = dim
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[np.ndarray, float]] = {}  # key -> ((n, D), threshold)
        # ((M, D) rows, (M,) threshold of each row's entry, owner key of each row)
        self._snapshot = (np.zeros((0, dim), np.float32), np.zeros(0, np.float32), [])

    def add(self, key: str, vectors: np.ndarray, threshold: float) -> None:
        """Flag texts whose similarity to any of `vectors` (n, D) exceeds `threshold`."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) == 0:
            raise GuardError(f"exemplar {key!r}: expected (n >= 1, {self.dim}) vectors, got "
                             f"{vectors.shape}")
        with self._lock:
            self._entries[key] = (vectors.astype(np.float32), float(threshold))
            self._rebuild()

    def remove(self, key: str) -> bool:
        """Drop an entry (its forget request is exact now); False if there was none."""
        with self._lock:
            found = self._entries.pop(key, None) is not None
            self._rebuild()
        return found

    def _rebuild(self) -> None:
        keys = list(self._entries)
        rows = [self._entries[k][0] for k in keys]
        self._snapshot = (
            np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32),
            np.array([self._entries[k][1] for k in keys for _ in self._entries[k][0]],
                     np.float32),
            [k for k in keys for _ in self._entries[k][0]])

    def keys(self) -> list[str]:
        return list(self._entries)

    def get(self, key: str) -> np.ndarray | None:
        """The (n, D) vectors of an entry."""
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def threshold(self, key: str) -> float:
        return self._entries[key][1]

    def nearest(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """For each of (N, D) unit vectors: (N,) cosine similarity to the nearest exemplar row
        (-1 when there is none), (N,) its margin over that row's threshold (the largest margin
        over any row: > 0 means flagged), and the key of the entry with that margin."""
        rows, thresholds, owners = self._snapshot
        n = len(vectors)
        if len(rows) == 0:
            return np.full(n, -1.0, np.float32), np.full(n, -np.inf), [None] * n
        sims = vectors @ rows.T  # (N, M)
        margins = sims - thresholds  # (N, M)
        best = margins.argmax(axis=1)  # (N,)
        return (sims.max(axis=1), margins[np.arange(n), best], [owners[i] for i in best])

    def passed(self, vectors: np.ndarray) -> frozenset[str]:
        """The keys of every entry whose threshold one of (N, D) unit vectors passes (`nearest`
        names only the one with the largest margin per vector)."""
        rows, thresholds, owners = self._snapshot
        if len(rows) == 0 or len(vectors) == 0:
            return frozenset()
        passed = (vectors @ rows.T > thresholds).any(axis=0)  # (N, M) -> (M,)
        return frozenset(owners[i] for i in np.flatnonzero(passed))

    def near(self, vectors: np.ndarray, within: float) -> frozenset[str]:
        """The keys of the entries with a row within `within` of the similarity of the row most
        similar to each of (N, D) unit vectors."""
        rows, _, owners = self._snapshot
        if len(rows) == 0 or len(vectors) == 0:
            return frozenset()
        sims = vectors @ rows.T  # (N, M)
        near = (sims >= sims.max(axis=1, keepdims=True) - within).any(axis=0)  # (M,)
        return frozenset(owners[i] for i in np.flatnonzero(near))

    def __len__(self) -> int:
        return len(self._entries)
