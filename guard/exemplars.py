"""Exemplars of pending forget items: prompts near one are flagged at once, with no refit.

An entry is the embeddings of one forget item's prompts and responses (vectors only, never its
text) and its own similarity threshold, keyed by the item's id (a forget request). Readers use
an immutable snapshot, so adding or removing an entry never blocks a check in flight.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .errors import GuardError


@dataclass(frozen=True)
class Nearest:
    """N vectors against one snapshot of the entries."""

    similarity: np.ndarray  # (N,) cosine similarity to the nearest row (-1 when there is none)
    margin: np.ndarray  # (N,) the largest margin over any row's threshold (> 0: flagged)
    key: list[str | None]  # the entry with that margin, per vector
    about: frozenset[str]  # the entries that the vectors it flags pass or nearly reach (`within`)
    keys: frozenset[str]  # every entry of the snapshot


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

    def nearest(self, vectors: np.ndarray, within: float = 0.0) -> Nearest:
        """(N, D) unit vectors against the entries as they are now: each one's nearest row and its
        largest margin over a row's threshold; and the entries that the vectors it flags are
        about: every one whose threshold such a vector passes, and every one with a row within
        `within` of its nearest row's similarity."""
        rows, thresholds, owners = self._snapshot
        n = len(vectors)
        if len(rows) == 0:
            return Nearest(np.full(n, -1.0, np.float32), np.full(n, -np.inf), [None] * n,
                           frozenset(), frozenset())
        sims = vectors @ rows.T  # (N, M)
        margins = sims - thresholds  # (N, M)
        best = margins.argmax(axis=1)  # (N,)
        top = sims.max(axis=1)  # (N,)
        margin = margins[np.arange(n), best]  # (N,)
        near = (margins > 0) | (sims >= top[:, None] - within)  # (N, M)
        about = near[margin > 0].any(axis=0)  # (M,) over the vectors it flags
        return Nearest(top, margin, [owners[i] for i in best],
                       frozenset(owners[j] for j in np.flatnonzero(about)), frozenset(owners))

    def __len__(self) -> int:
        return len(self._entries)
