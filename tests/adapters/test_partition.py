import math

import numpy as np
import pytest

from adapters import partition, partitioner_names, register_partitioner
from adapters.partition import UnknownPartitionerError


def blobs(k: int, per: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k well-separated clusters of `per` points each: (N, dim) points and (N,) true cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 5
    x = np.concatenate([c + rng.normal(size=(per, dim)) * 0.3 for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(k), per)


def test_semantic_partition_recovers_clusters_and_balances_sizes():
    x, truth = blobs(k=4, per=25)
    shard = partition("semantic", x, k=4)
    assert np.bincount(shard, minlength=4).tolist() == [25, 25, 25, 25]
    for j in range(4):  # each shard is one true cluster: homogeneous
        assert len(set(truth[shard == j])) == 1


def test_semantic_partition_caps_shard_size_when_clusters_are_unequal():
    x, _ = blobs(k=2, per=30)
    x = x[:45]  # clusters of 30 and 15 into 3 shards: the cap ceil(45/3)=15 splits the big one
    shard = partition("semantic", x, k=3)
    assert np.bincount(shard).max() <= math.ceil(45 / 3)


@pytest.mark.parametrize("name", ["semantic", "random"])
def test_owner_grouping_keeps_each_owners_samples_in_one_shard(name):
    x, _ = blobs(k=3, per=12)
    owners = [f"owner-{i % 9}" for i in range(len(x))]
    shard = partition(name, x, k=3, groups=owners)
    for owner in set(owners):
        assert len({int(s) for s, o in zip(shard, owners) if o == owner}) == 1


def test_random_partition_is_balanced_and_seeded():
    x, _ = blobs(k=2, per=21)
    a = partition("random", x, k=4, seed=3)
    b = partition("random", x, k=4, seed=3)
    c = partition("random", x, k=4, seed=4)
    assert sorted(np.bincount(a).tolist()) == [10, 10, 11, 11]
    assert (a == b).all() and not (a == c).all()


def test_more_shards_than_owners_is_refused():
    x, _ = blobs(k=2, per=3)
    with pytest.raises(ValueError, match="2 owners into 3 shards"):
        partition("semantic", x, k=3, groups=["a"] * 3 + ["b"] * 3)


def test_registry_refuses_duplicates_and_lists_known_names():
    with pytest.raises(ValueError, match="already registered"):
        register_partitioner("semantic", lambda *a: None)
    with pytest.raises(UnknownPartitionerError, match="registered: random, semantic"):
        partition("kmeans++", np.eye(3), k=2)
    assert partitioner_names() == ["random", "semantic"]
