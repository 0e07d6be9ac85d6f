import gc
import json

import pytest
import torch
from safetensors.torch import load_file

from adapters import MixtureCache, MixtureError, ShardStore, combine, synth_people
from adapters.registry import CONFIG, WEIGHTS


def deltas(adapter_dir) -> dict[str, torch.Tensor]:
    """Per LoRA layer: scaling * B @ A, the update the adapter adds to the base weight."""
    config = json.loads((adapter_dir / CONFIG).read_text())
    state = load_file(adapter_dir / WEIGHTS)
    scale = config["lora_alpha"] / config["r"]
    return {k.replace(".lora_A.weight", ""): scale * state[k.replace("lora_A", "lora_B")] @ state[k]
            for k in state if ".lora_A." in k}


def test_mixture_delta_is_the_weighted_sum_of_shard_deltas_on_every_layer(make_store, tmp_path):
    store = make_store(synth_people(12, seed=3, facts_per_person=2), shards=3)
    weights = {0: 0.5, 1: 0.3, 2: 0.2}
    mixture = store.mixture(weights)
    mixed = deltas(mixture.path)
    shards = {k: deltas(store.current(k).path) for k in weights}
    assert len(mixed) == 2 * 7  # every projection of both layers
    for layer, delta in mixed.items():
        expected = sum(w * shards[k][layer] for k, w in weights.items())
        error = (delta - expected).norm() / expected.norm()
        assert error < 1e-5, (layer, error)
    config = json.loads((mixture.path / CONFIG).read_text())
    assert config["r"] == 3 * 8 and config["lora_alpha"] == 24


def test_mixtures_are_named_by_content_and_cached(make_store, people):
    store = make_store(people)
    a = store.mixture({0: 0.5, 1: 0.5})
    b = store.mixture({0: 0.5, 1: 0.5})
    c = store.mixture({0: 0.25, 1: 0.75})
    assert (a.name, a.path) == (b.name, b.path) and a.name != c.name
    assert (a.built, b.built, c.built) == (True, False, True)  # the second is a cache hit


def test_cache_evicts_the_least_recently_used(make_store, people, tmp_path):
    store = make_store(people)
    cache = MixtureCache(tmp_path / "small", "test", capacity=2)
    versions = store.current_versions()
    first = cache.get([(versions[0], 1.0)])
    cache.get([(versions[1], 1.0)])
    cache.get([(versions[0], 1.0)])  # touch: now the most recent
    cache.get([(versions[0], 0.5), (versions[1], 0.5)])
    assert [p.name for p in cache.entries()][0] == first.name
    assert len(cache.entries()) == 2


def test_a_sweep_after_a_republish_deletes_superseded_mixtures_not_pinned_ones(make_store, people):
    store = make_store(people)
    both = store.mixture({0: 0.5, 1: 0.5})
    in_flight = store.mixture({0: 1.0})
    only_other = store.mixture({1: 1.0})
    store.mixtures.pin(in_flight.name)  # an engine is about to read it
    store.forget_samples([store.lineage.shard_samples(0)[0].id])
    assert both.path.exists()  # retraining deletes nothing a server may be using

    assert store.sweep_mixtures() == [both.name]
    assert in_flight.path.exists() and only_other.path.exists()
    store.mixtures.unpin(in_flight.name)
    assert store.sweep_mixtures() == [in_flight.name]
    assert store.mixture({0: 0.5, 1: 0.5}).name != both.name


def test_combining_nothing_is_an_error():
    with pytest.raises(MixtureError, match="at least one"):
        combine([])


def test_a_sweep_never_touches_another_live_processs_mixtures_and_cleans_a_dead_ones(
        make_store, people):
    store = make_store(people)
    replica = ShardStore(store.root, mixtures="replica-b")  # another server on the same store
    theirs = replica.mixture({0: 1.0})
    replica.mixtures.pin(theirs.name)  # in flight there
    ours = store.mixture({0: 1.0})
    store.forget_samples([store.lineage.shard_samples(0)[0].id])

    assert store.sweep_mixtures() == [ours.name]
    assert theirs.path.exists()  # its process lives and holds its folder
    replica.mixtures.unpin(theirs.name)
    del replica  # the replica is gone (a process that died drops its lock the same way)
    gc.collect()
    assert store.sweep_mixtures() == [theirs.name]
    assert not theirs.path.exists()
