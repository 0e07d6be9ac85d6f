import numpy as np
import pytest

from adapters import RouteConfig, ShardStore, UnknownSampleError, synth_people
from tests.embeddings import hash_embed


@pytest.fixture
def store(make_store):
    return make_store(synth_people(12, seed=4, facts_per_person=2), shards=3,
                      validation=synth_people(4, seed=77, facts_per_person=2))


def test_forgetting_retrains_only_the_shards_that_held_the_samples(store):
    before = {v.shard: v.id for v in store.current_versions()}
    victim = store.lineage.shard_samples(2)[0]
    results = store.forget_samples([victim.id])
    assert [r.shard for r in results] == [2]
    after = {v.shard: v.id for v in store.current_versions()}
    assert after[0] == before[0] and after[1] == before[1] and after[2] != before[2]
    assert victim.id in store.lineage.forgotten_ids()


def test_forgetting_an_owner_touches_one_shard(store):
    ids = store.lineage.owner_sample_ids("person-0003")
    assert len(store.lineage.shards_of(ids)) == 1  # group_by_owner keeps owners together


def test_the_loss_table_row_of_a_retrained_shard_is_recomputed(store):
    rows = {v.shard: store.losses.row(v) for v in store.current_versions()}
    assert all(r is not None and r.shape == (8,) for r in rows.values())
    store.forget_samples([store.lineage.shard_samples(1)[0].id])
    versions = {v.shard: v for v in store.current_versions()}
    assert store.losses.row(versions[1]) is not None
    assert (store.losses.row(versions[0]) == rows[0]).all()
    assert len(list(store.losses.root.glob("*.npy"))) == 3  # the stale row is pruned
    assert store.refresh_losses() == []  # nothing left to compute


def test_unknown_ids_change_nothing(store):
    before = [v.id for v in store.current_versions()]
    with pytest.raises(UnknownSampleError):
        store.forget_samples(["person-0000-fact0", "ghost"])
    assert store.lineage.forgotten_ids() == set()
    assert [v.id for v in store.current_versions()] == before


def test_the_raw_text_of_forgotten_samples_is_purged_after_retraining(store):
    victim = store.lineage.shard_samples(0)[0]
    store.forget_samples([victim.id])
    [(prompt,)] = store.lineage._query("SELECT prompt FROM samples WHERE id = ?", (victim.id,))
    assert prompt is None


def test_a_shard_whose_samples_are_all_forgotten_serves_nothing(store):
    ids = [s.id for s in store.lineage.shard_samples(0)]
    [result] = store.forget_samples(ids)
    assert result.version is None and result.samples == 0
    assert [v.shard for v in store.current_versions()] == [1, 2]
    assert list((store.registry.root / "shard-0000").glob("*/manifest.json")) == []
    w = store.weights(hash_embed(["Where does anyone live?"])[0], RouteConfig())
    assert set(w) <= {1, 2} and sum(w.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("reuse_unchanged", [False, True])
def test_a_store_derived_without_samples_trains_to_the_exact_forget(store, tmp_path,
                                                                    reuse_unchanged):
    """Training from scratch without the samples (shard 0 emptied, one of shard 2's gone)
    gives, shard for shard, the versions that forgetting them gives; reused, the untouched
    shard 1 is not trained again."""
    ids = [s.id for s in store.lineage.shard_samples(0)] + [store.lineage.shard_samples(2)[0].id]
    reference = ShardStore.derive(tmp_path / "reference", store, set(ids),
                                  reuse_unchanged=reuse_unchanged)
    results = reference.train(reference.lineage.shard_ids())
    assert {r.shard: r.steps > 0 for r in results} == {0: False, 1: not reuse_unchanged, 2: True}
    before = store.router_state()
    store.forget_samples(ids)
    assert [v.shard for v in reference.current_versions()] == [1, 2]
    assert ({v.shard: v.id for v in reference.current_versions()}
            == {v.shard: v.id for v in store.current_versions()})
    # What routing reads (live keys, centroids, loss rows, validation) is, byte for byte, the
    # router of a store that never held the samples; it was not before the forget.
    after, never = store.router_state(), reference.router_state()
    for field in ("centroids", "keys", "key_rows", "validation", "losses"):
        assert getattr(after, field).tobytes() == getattr(never, field).tobytes(), field
    assert after.versions == never.versions and after.digest() == never.digest()
    assert before.digest() != after.digest() and len(before.keys) == len(after.keys) + len(ids)


def test_a_router_read_between_publish_and_purge_holds_nothing_of_the_samples(store, tmp_path):
    """A server may read the router state as soon as the retrain publishes, before the purge
    recomputes the stored centroids: the state comes from the live keys themselves."""
    ids = [store.lineage.shard_samples(2)[0].id]
    reference = ShardStore.derive(tmp_path / "reference", store, set(ids), reuse_unchanged=True)
    reference.train(reference.lineage.shard_ids())
    store.lineage.tombstone(ids)
    store.train([2])  # published; the text, key and stored centroid not purged yet
    assert store.router_state().digest() == reference.router_state().digest()


def test_a_serving_process_drops_the_forgotten_keys_at_its_sync_without_a_request(store):
    """The worker is another process: the server's store learns of the retrain at its sync."""
    server = ShardStore(store.root)
    before = server.router_state()
    victim = store.lineage.shard_samples(1)[0]
    store.forget_samples([victim.id])
    assert server._router is before  # nothing routed meanwhile
    server.sweep_mixtures()  # the server's sync
    assert server._router is not before
    assert server._router.digest() == store.router_state().digest()
    assert len(server._router.keys) == len(before.keys) - 1


def test_a_store_derived_without_every_sample_serves_nothing(store, tmp_path):
    everyone = [s.id for k in store.lineage.shard_ids() for s in store.lineage.shard_samples(k)]
    reference = ShardStore.derive(tmp_path / "reference", store, set(everyone))
    assert [r.version for r in reference.train(reference.lineage.shard_ids())] == [None] * 3
    assert reference.current_versions() == [] and len(reference.router_state().keys) == 0


def test_keys_follow_their_shard_whatever_the_order_of_the_versions(store):
    versions = store.current_versions()[::-1]  # shards 2, 1, 0
    state = store.router_state(versions)
    for row, version in enumerate(versions):
        prompts = [s.prompt for s in store.lineage.shard_samples(version.shard)]
        assert (state.key_rows == row).sum() == len(prompts)
        assert np.allclose(np.sort(state.keys[state.key_rows == row], axis=0),
                           np.sort(hash_embed(prompts), axis=0), atol=1e-6)


def test_nearest_sends_a_training_question_to_the_shard_that_learned_it(store):
    for shard in store.lineage.shard_ids():
        for sample in store.lineage.shard_samples(shard):
            w = store.weights(hash_embed([sample.prompt])[0],
                              RouteConfig(scheme="nearest", quantum=0))
            assert max(w, key=w.get) == shard


def test_a_derived_store_never_reuses_a_version_trained_on_a_tombstoned_sample(store, tmp_path):
    """Tombstoned but not yet retrained: the source's version of shard 1 still holds the
    sample, so the derived store trains that shard itself."""
    store.lineage.tombstone([store.lineage.shard_samples(1)[0].id])
    reference = ShardStore.derive(tmp_path / "reference", store, set(), reuse_unchanged=True)
    assert [v.shard for v in reference.current_versions()] == [0, 2]
    results = reference.train(reference.lineage.shard_ids())
    assert {r.shard: r.steps > 0 for r in results} == {0: False, 1: True, 2: False}


def test_quarantined_shards_get_no_weight_and_reopening_keeps_state(store):
    store.lineage.hold_quarantine("request-a", [1])
    reopened = ShardStore(store.root)
    w = reopened.weights(hash_embed(["What pet does anyone have?"])[0], RouteConfig(scheme="uniform"))
    assert w == {0: 0.5, 2: 0.5}


def test_a_prompt_may_be_answered_by_the_shards_of_requests_it_is_not_about(store):
    """forget.quarantine: matched: a flagged prompt skips every held shard but those that only
    the requests it is known not to be about hold."""
    store.lineage.hold_quarantine("request-a", [1])
    store.lineage.hold_quarantine("request-b", [2])
    assert store.lineage.quarantine_holds() == {"request-a": {1}, "request-b": {2}}
    query, uniform = hash_embed(["What pet does anyone have?"])[0], RouteConfig(scheme="uniform")
    assert store.weights(query, uniform, spared={"request-b"}) == {0: 0.5, 2: 0.5}
    assert store.weights(query, uniform, spared={"request-a", "gone"}) == {0: 0.5, 1: 0.5}
    assert store.weights(query, uniform) == {0: 1.0}  # none spared: every held shard skipped
    assert set(store.weights(query, uniform, avoid_held=False)) == {0, 1, 2}
    store.lineage.hold_quarantine("request-c", [2])  # a request the prompt may be about
    assert store.weights(query, uniform, spared={"request-b"}) == {0: 1.0}


def test_a_shard_leaves_quarantine_only_when_no_request_holds_it(store):
    store.lineage.hold_quarantine("request-a", [1])
    store.lineage.hold_quarantine("request-b", [1, 2])
    store.lineage.release_quarantine(["request-a"])
    assert store.lineage.quarantine_holds() == {"request-b": {1, 2}}  # it still needs both
    store.lineage.release_quarantine(["request-b"])
    assert store.lineage.quarantine_holds() == {}


def test_a_store_opened_for_a_gpu_it_lacks_reads_and_routes_but_refuses_to_train(store):
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU")
    from base import DeviceError

    on_gpu = ShardStore(store.root, device="cuda")  # what `lethe shards` opens, a server too
    assert [v.id for v in on_gpu.current_versions()] == [v.id for v in store.current_versions()]
    victim = on_gpu.lineage.shard_samples(0)[0].id
    with pytest.raises(DeviceError, match="no CUDA GPU.*model.device"):
        on_gpu.forget_samples([victim])
