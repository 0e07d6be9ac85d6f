"""At most one retrain of a shard at a time, across threads and processes: a retrain that read a
sample before it was tombstoned can never publish after the retrain that forgets it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from adapters import ShardStore, synth_people
from base import open_database
from tests.adapters.conftest import SLOW_TRAIN, trained_on


def test_a_retrain_that_read_a_sample_before_its_tombstone_never_publishes_last(make_store):
    store = make_store(synth_people(6, seed=2, facts_per_person=2), train_config=SLOW_TRAIN)
    shard = 0
    alice, bob = [s.id for s in store.lineage.shard_samples(shard)[:2]]
    store.lineage.tombstone([alice])  # the stale retrain's own reason to train
    started, tombstoned, published = threading.Event(), threading.Event(), threading.Event()

    steps = []

    def stall(step, total, loss):
        # At its first step the stale retrain has read the live samples (bob included): let the
        # forget tombstone him, and give the forget's retrain every chance to publish first.
        steps.append(step)
        if len(steps) == 1:
            started.set()
            tombstoned.wait(30)
            published.wait(3)  # with the lock the forget cannot publish: this times out

    def stale_retrain():
        ShardStore(store.root).train([shard], lambda k: stall if k == shard else None)

    def forget():
        started.wait(30)
        other = ShardStore(store.root)
        other.lineage.tombstone([bob])
        tombstoned.set()
        other.train([shard])
        published.set()
        other.lineage.purge_text([bob])

    threads = [threading.Thread(target=stale_retrain), threading.Thread(target=forget)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert started.is_set() and len(steps) > SLOW_TRAIN.max_steps  # stalled, then trained again
    assert bob not in trained_on(ShardStore(store.root), shard)


def test_a_retrain_in_another_process_and_a_forget_run_one_at_a_time(make_store,
                                                                    database_target):
    # On PostgreSQL the lock is the server's (an advisory lock): the same on every machine.
    database = open_database(database_target)
    store = make_store(synth_people(6, seed=2, facts_per_person=2), train_config=SLOW_TRAIN,
                       database=database)
    shard = 0
    alice, bob = [s.id for s in store.lineage.shard_samples(shard)[:2]]
    store.lineage.tombstone([alice])  # the other process's retrain has real work to do
    staging = store.registry.staging_root
    # What `lethe retrain --shard 0` runs, slowed down per step so that, unserialised, it would
    # publish its stale version (bob included) after the forget's.
    retrain = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from adapters import ShardStore; from base import open_database; "
        "ShardStore(sys.argv[1], database=open_database(sys.argv[2])).train("
        f"[{shard}], lambda k: lambda *a: time.sleep(0.3))"),
        str(store.root), str(database_target)])
    deadline = time.monotonic() + 120
    while not any(p.is_dir() for p in staging.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the other process has read the shard's samples and is training

    [result] = store.forget_samples([bob])
    retrain.wait(timeout=120)

    assert retrain.returncode == 0
    assert bob not in trained_on(store, shard)  # the forget published last
    [receipt] = store.receipt([bob], [result], request="bob", owner=None, prompts=0,
                              coalesced_with=[], worker="test", guard=(None, None)).shards
    assert receipt.forgotten_ids_absent and receipt.new_version == result.version


def test_a_shard_already_trained_on_its_live_samples_is_not_trained_again(make_store):
    # A second worker's retrain after the same tombstones: nothing to change, nothing trained.
    store = make_store(synth_people(6, seed=2, facts_per_person=2))
    bob = store.lineage.shard_samples(0)[0].id
    [first] = store.forget_samples([bob])
    [again] = store.train([0])
    assert first.steps > 0 and again.steps == 0
    assert again.version == first.version == store.current(0).id


def test_a_sample_tombstoned_during_a_retrain_is_in_no_version_it_publishes(make_store):
    # The tombstone does not wait for the shard's lock (and a lock can be lost with a database
    # connection): the tombstone advances the shard's generation, so the retrain's publish, a
    # compare-and-set on the generation it read before the samples, loses.
    store = make_store(synth_people(6, seed=2, facts_per_person=2), train_config=SLOW_TRAIN)
    alice, bob = [s.id for s in store.lineage.shard_samples(0)[:2]]
    store.lineage.tombstone([alice])  # what this retrain is for
    attempts, publish = [], store.lineage.publish

    def record(shard, version, generation):
        won = publish(shard, version, generation)
        attempts.append((store.registry.version(shard, version).manifest["sample_ids"], won))
        return won

    store.lineage.publish = record

    def forget_bob_midway(step, total, loss):
        if bob not in store.lineage.forgotten_ids():
            store.lineage.tombstone([bob])  # after the retrain read bob as live

    [result] = store.train([0], lambda k: forget_bob_midway)
    assert store.lineage.forgotten_ids() == {alice, bob}
    [(stale, lost), (fresh, won)] = attempts
    assert bob in stale and not lost  # trained on bob, refused
    assert bob not in fresh and won
    assert result.version == store.current(0).id
    assert [v.id for v in store.registry.versions(0)] == [result.version]  # the stale one: gone
