import pytest

from adapters import ShardStore, TrainConfig, synth_people
from tests.embeddings import hash_embed

# Tiny-model training: a few steps, enough to move every LoRA weight.
TINY_TRAIN = TrainConfig(max_steps=3, batch_size=4, max_length=64, epochs=1)
# Enough steps that a retrain lasts a second or two on the tiny model.
SLOW_TRAIN = TrainConfig(max_steps=8, batch_size=4, max_length=64, epochs=40)


def trained_on(store: ShardStore, shard: int) -> set[str]:
    """The sample ids of the version `shard` serves."""
    return set(store.current(shard).manifest["sample_ids"])


@pytest.fixture
def make_store(tmp_path, tiny_model_dir):
    """make_store(samples, shards=2, validation=None, name='store', database=None) -> a trained
    ShardStore (its lineage in `database`, else a SQLite file in the store)."""

    def make(samples, shards=2, validation=None, name="store", train=True, **kw):
        store = ShardStore.create(
            tmp_path / name, samples, hash_embed, shards=shards,
            partitioner=kw.get("partitioner", "semantic"), group_by_owner=kw.get("group_by_owner", True),
            seed=0, model_path=tiny_model_dir, base_model={"sha256": "tiny"},
            train_config=kw.get("train_config", TINY_TRAIN), validation=validation,
            database=kw.get("database"))
        if train:
            store.train(store.lineage.shard_ids())
        return store

    return make


@pytest.fixture
def people():
    return synth_people(8, seed=1, facts_per_person=2)
