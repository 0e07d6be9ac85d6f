"""Partitioners: split N samples into K shards, each chosen by name from config.

`semantic` is APA's balanced semantic partition (Hu et al. 2024, Algorithm 1): k-means centres,
then (unit, centre) pairs are assigned greedily in ascending cosine distance, under a cap of
ceil(N/K) samples per shard, so shards are balanced and each is homogeneous. `random` is SISA's.

A unit is one sample, or all samples of one owner when `groups` is given, so that forgetting an
owner touches one shard.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from base import Registry

from .errors import AdapterError


class PartitionError(AdapterError, ValueError):
    """Samples that cannot be split as asked."""


class UnknownPartitionerError(PartitionError, KeyError):
    """No partitioner is registered under the name; the message lists those that are."""


class Partitioner(Protocol):
    def __call__(self, units: np.ndarray, sizes: np.ndarray, k: int, seed: int) -> np.ndarray:
        """units: (U, d) unit vectors; sizes: (U,) samples per unit -> (U,) shard per unit."""


PARTITIONERS: Registry[Partitioner] = Registry("partitioner", PartitionError,
                                               UnknownPartitionerError)
register_partitioner = PARTITIONERS.register
partitioner_names = PARTITIONERS.names


def partition(name: str, embeddings: np.ndarray, k: int, seed: int = 0,
              groups: list[str] | None = None) -> np.ndarray:
    """embeddings: (N, d). Returns the shard of each sample (N,) (the lineage keeps the shards'
    centroids, from their live samples: lineage.py)."""
    split = PARTITIONERS.get(name)
    n = len(embeddings)
    if not 1 <= k <= n:
        raise PartitionError(f"cannot split {n} samples into {k} shards")
    x = _unit(embeddings.astype(np.float64))
    # Units: each sample alone, or each group (owner) as the mean of its samples.
    keys = groups if groups is not None else list(range(n))
    unit_of = {key: u for u, key in enumerate(dict.fromkeys(keys))}
    member = np.array([unit_of[key] for key in keys])  # (N,) unit of each sample
    sizes = np.bincount(member)  # (U,)
    if len(sizes) < k:
        raise PartitionError(f"cannot split {len(sizes)} owners into {k} shards")
    units = _unit(np.stack([x[member == u].mean(axis=0) for u in range(len(sizes))]))
    shard = split(units, sizes, k, seed)[member]  # (N,)
    empty = sorted(set(range(k)) - set(shard.tolist()))
    if empty:
        raise PartitionError(f"partition {name!r} left shard(s) {empty} empty; use fewer shards")
    return shard


def semantic(units: np.ndarray, sizes: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans  # 1.5 s to import: not for every config that names this

    centres = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(units).cluster_centers_
    distance = 1.0 - units @ _unit(centres).T  # (U, K) cosine distance
    cap = math.ceil(sizes.sum() / k)
    load = np.zeros(k, dtype=int)
    shard = np.full(len(units), -1)
    # Greedy over all pairs, nearest first (stable sort: ties in index order, deterministic).
    for flat in np.argsort(distance, axis=None, kind="stable"):
        u, j = divmod(int(flat), k)
        if shard[u] < 0 and load[j] + sizes[u] <= cap:
            shard[u], load[j] = j, load[j] + sizes[u]
    # Owners of unequal size can leave a unit no shard has room for: least-loaded shard takes it.
    for u in np.flatnonzero(shard < 0):
        j = int(np.argmin(load))
        shard[u], load[j] = j, load[j] + sizes[u]
    return shard


def random(units: np.ndarray, sizes: np.ndarray, k: int, seed: int) -> np.ndarray:
    # Units in a seeded random order, each to the shard with fewest samples so far: balanced.
    order = np.random.default_rng(seed).permutation(len(units))
    load = np.zeros(k, dtype=int)
    shard = np.empty(len(units), dtype=int)
    for u in order:
        j = int(np.argmin(load))
        shard[u], load[j] = j, load[j] + sizes[u]
    return shard


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


register_partitioner("semantic", semantic)
register_partitioner("random", random)
