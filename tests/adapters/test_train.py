"""Exactness: retraining a shard without a sample equals training from scratch without it; what
one training step computes."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters import ShardStore, synth_people, train_adapter
from adapters.registry import WEIGHTS
from adapters.train import (IGNORE, adapter_losses, collate, encode, epoch_batches,
                            response_nll)
from base import resolve_device
from tests.adapters.conftest import TINY_TRAIN


def adapter_bytes(store, shard: int) -> bytes:
    return (store.current(shard).path / WEIGHTS).read_bytes()


def test_retrain_without_a_sample_equals_training_from_scratch_without_it(
        make_store, people, tiny_model_dir, tmp_path):
    store = make_store(people)
    forgotten = people[0]
    [k] = store.lineage.shards_of([forgotten.id])
    shard_data = store.lineage.shard_samples(k)
    before = store.current(k).id

    [result] = store.forget_samples([forgotten.id])

    # From scratch, in a fresh process state: shard k's data minus the sample, shard k's seed.
    remaining = [s for s in shard_data if s.id != forgotten.id]
    train_adapter(tiny_model_dir, remaining, TINY_TRAIN, seed=TINY_TRAIN.seed + k,
                  out_dir=tmp_path / "scratch")
    assert result.shard == k and result.previous == before and result.version != before
    assert adapter_bytes(store, k) == (tmp_path / "scratch" / WEIGHTS).read_bytes()
    assert forgotten.id not in store.current(k).manifest["sample_ids"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_a_retrain_on_a_device_equals_training_from_scratch_there(
        make_store, people, tiny_model_dir, tmp_path, device):
    """A store opened on a device retrains there, deterministically (exactness holds there),
    records where, and computes the shard's validation losses there (as on the CPU, to float
    rounding)."""
    device = resolve_device(device)
    validation = synth_people(3, seed=9, facts_per_person=2)
    store = ShardStore(make_store(people, validation=validation).root, device=device)
    forgotten = people[0]
    [k] = store.lineage.shards_of([forgotten.id])
    remaining = [s for s in store.lineage.shard_samples(k) if s.id != forgotten.id]

    store.forget_samples([forgotten.id])

    train_adapter(tiny_model_dir, remaining, TINY_TRAIN, seed=TINY_TRAIN.seed + k,
                  out_dir=tmp_path / "scratch", device=device)
    version = store.current(k)
    assert version.manifest["device"] == device
    assert adapter_bytes(store, k) == (tmp_path / "scratch" / WEIGHTS).read_bytes()
    [on_cpu] = adapter_losses(tiny_model_dir, [version.path], validation, TINY_TRAIN.max_length)
    assert np.allclose(store.losses.row(version), on_cpu, rtol=1e-4)


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


def test_an_epoch_takes_every_sample_once_in_batches_of_like_length():
    lengths = [int(n) for n in torch.randint(10, 200, (300,), generator=torch.Generator()
                                             .manual_seed(0))]
    batches = epoch_batches(lengths, 8, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert sorted(map(len, batches)) == [4] + [8] * 37  # 300 = 37 x 8 + 4: one short batch

    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    shuffled = torch.randperm(300, generator=torch.Generator().manual_seed(0)).tolist()
    assert padding(batches) < padding([shuffled[i:i + 8] for i in range(0, 300, 8)]) / 4
    # the same generator state, the same epoch; another, another order
    assert batches == epoch_batches(lengths, 8, torch.Generator().manual_seed(0))
    assert batches != epoch_batches(lengths, 8, torch.Generator().manual_seed(1))


def test_the_response_loss_is_the_models_own_loss_on_the_response_tokens(tiny_model_dir, people):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    batch = collate([encode(tokenizer, s, 64) for s in people[:4]], tokenizer.eos_token_id)
    with torch.no_grad():
        nll, rows = response_nll(model, batch)
        expected = model(**batch).loss  # logits at every position, the ignored ones dropped
    assert torch.allclose(nll.mean(), expected, atol=1e-6)
    assert rows.tolist() == sorted(rows.tolist()) and set(rows.tolist()) == {0, 1, 2, 3}
    assert len(nll) == int((batch["labels"][:, 1:] != IGNORE).sum())
