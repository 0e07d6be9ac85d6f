"""Exactness: retraining a shard without a sample equals training from scratch without it."""

from adapters import synth_people, train_adapter
from adapters.registry import WEIGHTS
from tests.adapters.conftest import TINY_TRAIN


def adapter_bytes(store, shard: int) -> bytes:
    return (store.registry.current(shard).path / WEIGHTS).read_bytes()


def test_retrain_without_a_sample_equals_training_from_scratch_without_it(
        make_store, people, tiny_model_dir, tmp_path):
    store = make_store(people)
    forgotten = people[0]
    [k] = store.lineage.shards_of([forgotten.id])
    shard_data = store.lineage.shard_samples(k)
    before = store.registry.current(k).id

    [result] = store.forget_samples([forgotten.id])

    # From scratch, in a fresh process state: shard k's data minus the sample, shard k's seed.
    remaining = [s for s in shard_data if s.id != forgotten.id]
    train_adapter(tiny_model_dir, remaining, TINY_TRAIN, seed=TINY_TRAIN.seed + k,
                  out_dir=tmp_path / "scratch")
    assert result.shard == k and result.previous == before and result.version != before
    assert adapter_bytes(store, k) == (tmp_path / "scratch" / WEIGHTS).read_bytes()
    assert forgotten.id not in store.registry.current(k).manifest["sample_ids"]


def test_retraining_an_unchanged_shard_keeps_its_version_and_trains_nothing(make_store, people):
    store = make_store(people)
    versions = [v.id for v in store.current_versions()]
    results = store.train([0, 1])
    assert [r.version for r in results] == versions
    assert [r.previous for r in results] == versions
    assert [r.steps for r in results] == [0, 0]


def test_training_data_order_does_not_depend_on_input_order(make_store):
    people = synth_people(6, seed=2, facts_per_person=2)
    a = make_store(people, name="a")
    b = make_store(list(reversed(people)), name="b")
    assert [v.id for v in a.current_versions()] == [v.id for v in b.current_versions()]
