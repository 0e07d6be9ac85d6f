"""Fenced publication: a retrain publishes only if its shard's generation is what it read before
the live samples, so neither a lost lock, a stopped lock holder nor a SIGKILL at the publish can
put a forgotten sample back into what a shard serves."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading

import pytest

from adapters import ShardStore, synth_people
from adapters.registry import weights_hash
from base import open_database
from tests.adapters.conftest import SLOW_TRAIN, trained_on

SHARD = 0


def open_store(store: ShardStore, target, **kw) -> ShardStore:
    """Another process's view of `store`: a ShardStore of its own on the same database."""
    return ShardStore(store.root, database=open_database(target), **kw)


@pytest.mark.postgres
def test_a_retrain_whose_lock_connection_was_cut_never_publishes_forgotten_data(
        make_store, postgres_url):
    # The review's repro: worker A has trained (bob live when it read the shard) and pauses
    # before publishing; its idle lock connection is terminated (idle_session_timeout, a load
    # balancer, a failover), so worker B takes the lock, forgets bob, publishes and purges.
    # A then resumes: its publish must lose.
    store = make_store(synth_people(6, seed=2, facts_per_person=2), train_config=SLOW_TRAIN,
                       database=open_database(postgres_url))
    alice, bob = [s.id for s in store.lineage.shard_samples(SHARD)[:2]]
    store.lineage.tombstone([alice])  # A's own reason to retrain
    trained, resume = threading.Event(), threading.Event()
    results = {}

    def pause_at_the_last_step(step, total, loss):
        if step == total:
            trained.set()
            resume.wait(120)

    def worker_a():
        a = open_store(store, postgres_url)
        [results["a"]] = a.train([SHARD], lambda k: pause_at_the_last_step)

    thread = threading.Thread(target=worker_a)
    thread.start()
    assert trained.wait(120)
    with store.lineage.database.read() as db:  # cut A's lock connection
        cut = db.execute("SELECT pg_terminate_backend(pid) FROM pg_locks "
                         "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
                         ).fetchall()
    assert cut == [(True,)]
    b = open_store(store, postgres_url, shard_wait=30)
    [results["b"]] = b.forget_samples([bob])
    assert bob not in trained_on(b, SHARD)
    resume.set()
    thread.join(120)

    assert bob not in trained_on(store, SHARD)  # A's version, trained on bob, never served
    assert results["a"].version == results["b"].version == store.current(SHARD).id
    assert all(bob not in v.manifest["sample_ids"] for v in store.registry.versions(SHARD))
    [receipt] = store.receipt([bob], [results["b"]], request="bob", owner=None, prompts=0,
                              coalesced_with=[], worker="test", guard=(None, None)).shards
    assert receipt.forgotten_ids_absent and receipt.new_version == results["b"].version


def test_a_stopped_lock_holder_does_not_block_a_forget_past_the_wait(make_store,
                                                                     database_target, caplog):
    # A worker SIGSTOPped while it holds a shard's lock keeps it (its process, its connection
    # and its flock are all alive). A forget waits for it `shard_wait` seconds, then retrains
    # anyway, fenced by the generation.
    store = make_store(synth_people(6, seed=2, facts_per_person=2),
                       database=open_database(database_target))
    bob = store.lineage.shard_samples(SHARD)[0].id
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from base import open_database; "
        "lock = open_database(sys.argv[1]).exclusive('shard-0000', 5); "
        "assert lock.__enter__(); print('held', flush=True); time.sleep(600)"),
        str(database_target)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGSTOP)
        forget = threading.Thread(target=lambda: open_store(
            store, database_target, shard_wait=1.0).forget_samples([bob]))
        with caplog.at_level(logging.WARNING, logger="lethe.store"):
            forget.start()
            forget.join(120)
        assert not forget.is_alive()
        assert "training it anyway" in caplog.text
        assert bob not in trained_on(store, SHARD)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("kill", ["before", "after"])
def test_a_worker_killed_at_the_publish_leaves_the_old_or_the_new_version_whole(
        make_store, database_target, kill):
    # SIGKILL just before or just after the compare-and-set that publishes: what serves is
    # then the old version or the new one, each whole, and never a version trained on a
    # forgotten sample; a retrain afterwards settles the shard on the new one.
    store = make_store(synth_people(6, seed=2, facts_per_person=2),
                       database=open_database(database_target))
    old = store.current(SHARD)
    bob = store.lineage.shard_samples(SHARD)[0].id
    store.lineage.tombstone([bob])
    child = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; from adapters import ShardStore; from base import open_database; "
        "store = ShardStore(sys.argv[1], database=open_database(sys.argv[2])); "
        "publish = store.lineage.publish\n"
        "def killed(*args):\n"
        "    if sys.argv[3] == 'after': publish(*args)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "store.lineage.publish = killed; store.train([0])"),
        str(store.root), str(database_target), kill])
    assert child.returncode == -signal.SIGKILL

    reopened = open_store(store, database_target)
    serving = reopened.current(SHARD)
    assert serving.id == old.id if kill == "before" else serving.id != old.id
    assert weights_hash(serving.path) == serving.id and serving.manifest["version"] == serving.id
    if kill == "after":
        assert bob not in serving.manifest["sample_ids"]
    [result] = reopened.train([SHARD])
    assert bob not in trained_on(reopened, SHARD)
    assert (result.steps == 0) == (kill == "after")  # after: published already, nothing to do
    assert not old.path.exists()  # trained on bob: collected, even when nothing was trained


def test_a_store_published_before_the_lineage_held_the_pointer_serves_the_same(make_store):
    # Such a store named each shard's version in adapters/shard-NNNN/CURRENT.
    store = make_store(synth_people(6, seed=2, facts_per_person=2))
    before = {v.shard: v.id for v in store.current_versions()}
    for shard, version in before.items():
        (store.registry.root / f"shard-{shard:04d}" / "CURRENT").write_text(version + "\n")
    with store.lineage.database.write() as db:
        db.execute("UPDATE shards SET version = NULL, generation = 0")

    reopened = ShardStore(store.root)
    assert {v.shard: v.id for v in reopened.current_versions()} == before
    assert list(store.registry.root.glob("shard-*/CURRENT")) == []


def test_a_tombstone_advances_the_generation_of_the_shards_it_changes(make_store,
                                                                      database_target):
    store = make_store(synth_people(6, seed=2, facts_per_person=2), train=False,
                       database=open_database(database_target))
    lineage = store.lineage
    first, second = [s.id for s in lineage.shard_samples(SHARD)[:2]]
    other = 1 - SHARD
    before = {k: lineage.generation(k) for k in (SHARD, other)}
    lineage.tombstone([first, second])
    lineage.tombstone([first])  # again: nothing changes, nothing advances
    assert {k: lineage.generation(k) for k in (SHARD, other)} == {SHARD: before[SHARD] + 1,
                                                                  other: before[other]}
    # A publish that read the old generation loses; one that read the new one wins, once.
    assert not lineage.publish(SHARD, "v1", before[SHARD])
    assert lineage.publish(SHARD, "v2", before[SHARD] + 1)
    assert not lineage.publish(SHARD, "v3", before[SHARD] + 1)
    assert lineage.current_versions()[SHARD] == "v2"
