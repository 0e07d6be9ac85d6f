"""The forget queue: durable, idempotent, leased; a dead worker's requests are taken again; a
failed one is retried until it completes. Every contract test runs on both backends (a SQLite
file, a real PostgreSQL server)."""

import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from serving.forget import UnknownRequestError, open_queue
from tests.serving.conftest import sqlite_queue


@pytest.fixture
def queue(database_target, tmp_path):
    return open_queue(database_target, "FULL", tmp_path / "secret.key")


def raw(queue, sql, params=()):
    """Rows as stored, through a connection of the queue's own database."""
    with queue.database.read() as db:
        return db.execute(sql, params).fetchall()


def lease(queue, worker="w1", seconds=60.0):
    return queue.lease(worker, seconds)


def test_a_submitted_request_is_durable(queue, database_target, tmp_path):
    request, created = queue.submit("person-1", ["b", "a"], ["Where is Kalo?"])
    assert created and request.state == "received" and request.sample_ids == ["a", "b"]
    reopened = open_queue(database_target, "FULL", tmp_path / "secret.key")  # another process
    assert reopened.get(request.id).prompts == ["Where is Kalo?"]


def test_a_sqlite_queue_commits_with_full_sync(tmp_path):
    queue = sqlite_queue(tmp_path / "forget.db")
    assert raw(queue, "PRAGMA journal_mode") == [("wal",)]
    assert raw(queue, "PRAGMA synchronous") == [(2,)]  # FULL


def test_a_duplicate_request_returns_the_first_one(queue):
    first, _ = queue.submit(None, ["a", "b"], [])
    again, created = queue.submit(None, ["b", "a", "a"], [])
    assert not created and again.id == first.id
    other, created = queue.submit(None, ["a", "b"], ["a prompt"])
    assert created and other.id != first.id


def test_unknown_ids_raise(queue):
    with pytest.raises(UnknownRequestError, match="no forget request with id 'nope'"):
        queue.get("nope")


def test_a_lease_takes_every_waiting_request_once(queue):
    a, _ = queue.submit(None, ["a"], [])
    b, _ = queue.submit(None, ["b"], [])
    queue.mark_guarded(a.id)
    taken = lease(queue)
    assert [r.id for r in taken] == [a.id, b.id]
    assert {r.state for r in taken} == {"retraining"} and {r.attempts for r in taken} == {1}
    assert lease(queue, "w2") == []  # held by w1
    assert list(queue.get(a.id).times) == ["received", "guarded", "retraining"]


def test_a_request_its_server_is_guarding_waits_for_the_guard_not_for_a_dead_server(queue):
    """A server submits a request, then guards it (embedding its texts' forms: seconds under
    load); no worker retrains it in between, so that it is guarded before it is retrained. A
    server that dies before guarding it leaves it to any worker once its time is out."""
    guarding, _ = queue.submit(None, ["a"], [], guard_within=60.0)
    assert lease(queue) == []  # received, its server still guarding it
    queue.mark_guarded(guarding.id)
    assert [r.id for r in lease(queue)] == [guarding.id]
    assert list(queue.get(guarding.id).times) == ["received", "guarded", "retraining"]
    orphan, _ = queue.submit(None, ["b"], [], guard_within=0.05)
    time.sleep(0.1)  # its server died before guarding it
    assert [r.id for r in lease(queue)] == [orphan.id]


def test_a_dead_workers_lease_runs_out_and_heartbeats_keep_a_live_one(queue):
    a, _ = queue.submit(None, ["a"], [])
    lease(queue, "w1", seconds=0.2)
    queue.heartbeat("w1", [a.id], 60.0)
    time.sleep(0.3)
    assert lease(queue, "w2") == []  # renewed by the heartbeat
    queue.heartbeat("w1", [a.id], 0.1)  # the last heartbeat before w1 dies
    time.sleep(0.2)
    [retaken] = lease(queue, "w2")
    assert retaken.id == a.id and retaken.attempts == 2
    queue.complete("w1", {a.id: {"shards": []}})  # w1 lost its lease: ignored
    assert queue.get(a.id).state == "retraining"


def test_completion_records_the_receipt_and_purges_the_prompts(queue):
    a, _ = queue.submit("p", ["a"], ["Where does Kalo live?"])
    lease(queue)
    queue.complete("w1", {a.id: {"shards": [{"shard": 0}]}})
    done = queue.get(a.id)
    assert done.state == "completed" and done.prompts is None
    assert done.receipt == {"shards": [{"shard": 0}]}  # as given: a signed receipt stays valid
    assert set(done.times) == {"received", "retraining", "completed"}
    [(prompts,)] = raw(queue, "SELECT prompts FROM requests")
    assert prompts is None
    assert lease(queue) == []


def test_a_failed_request_is_retried_forever_with_capped_exponential_backoff(queue):
    a, _ = queue.submit(None, ["a"], [])
    waits = []
    for attempt in range(1, 8):
        [taken] = lease(queue)
        assert taken.attempts == attempt
        before = time.time()
        queue.fail("w1", [a.id], "TrainingError: boom", retry_after=0.05, retry_max=0.4)
        failed = queue.get(a.id)
        assert failed.state == "failed" and failed.reason == "TrainingError: boom"
        waits.append(failed.retry_at - before)
        assert lease(queue) == []  # not before its retry is due
        time.sleep(failed.retry_at - time.time() + 0.01)
    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.4, 0.4, 0.4], abs=0.02)
    assert [r.id for r in lease(queue)] == [a.id]  # the 8th attempt: it never gives up


def test_asking_again_for_a_failed_request_makes_it_due_at_once(queue):
    a, _ = queue.submit(None, ["a"], ["q"])
    lease(queue)
    queue.fail("w1", [a.id], "OSError: disk full", retry_after=600, retry_max=600)
    assert lease(queue) == []
    again, created = queue.submit(None, ["a"], ["q"])
    assert again.id == a.id and not created
    assert [r.id for r in lease(queue)] == [a.id]


def test_counts_per_state_and_the_keyed_dedup_hash(queue):
    a, _ = queue.submit(None, ["a"], ["Where does Kalo live?"])
    queue.submit(None, ["b"], [])
    lease(queue)
    queue.complete("w1", {a.id: {"shards": []}})
    assert queue.counts() == {"received": 0, "guarded": 0, "retraining": 1, "completed": 1,
                              "failed": 0}
    [(key,)] = raw(queue, "SELECT key FROM requests WHERE id = ?", (a.id,))
    plain = json.dumps([["a"], ["Where does Kalo live?"]])
    assert key != hashlib.sha256(plain.encode()).hexdigest()  # not a guessable plain hash


def test_a_queue_file_of_an_older_version_is_migrated_forward(tmp_path):
    old = sqlite3.connect(tmp_path / "forget.db")  # schema version 1: no shards column yet
    old.executescript(
        "CREATE TABLE requests (id TEXT PRIMARY KEY, key TEXT NOT NULL UNIQUE, owner TEXT, "
        "sample_ids TEXT NOT NULL, prompts TEXT, state TEXT NOT NULL, attempts INTEGER NOT NULL "
        "DEFAULT 0, reason TEXT, times TEXT NOT NULL, lease_owner TEXT, lease_until REAL, "
        "failed_at REAL, receipt TEXT, seq INTEGER NOT NULL, retry_at REAL);"
        "INSERT INTO requests (id, key, sample_ids, prompts, state, times, seq) VALUES "
        "('fgt-old', 'k', '[\"a\"]', '[]', 'received', '{}', 1);"
        "PRAGMA user_version = 1;")
    old.close()
    queue = sqlite_queue(tmp_path / "forget.db")
    new, _ = queue.submit(None, ["b"], [], shards=[3])
    assert [r.id for r in queue.list()] == ["fgt-old", new.id]
    assert raw(queue, "SELECT version FROM lethe_schema WHERE component = 'queue'") == [(2,)]
    assert [r.id for r in lease(queue)] == ["fgt-old"]  # unknown shards: a group of its own


def test_the_secret_key_is_private(queue, tmp_path):
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600


def test_a_lease_takes_one_shard_group_and_leaves_other_shards_to_other_workers(queue):
    a, _ = queue.submit(None, ["a"], [], shards=[0])
    b, _ = queue.submit(None, ["b"], [], shards=[1])
    ab, _ = queue.submit(None, ["c"], [], shards=[1, 2])
    d, _ = queue.submit(None, ["d"], [], shards=[0])
    assert [r.id for r in lease(queue, "w1")] == [a.id, d.id]  # shard 0's requests together
    assert [r.id for r in lease(queue, "w2")] == [b.id, ab.id]  # shards 1 and 2, at once
    assert lease(queue, "w3") == []


def test_a_request_on_a_shard_another_worker_retrains_waits_for_that_lease(queue):
    a, _ = queue.submit(None, ["a"], [], shards=[0])
    lease(queue, "w1", seconds=0.3)
    late, _ = queue.submit(None, ["b"], [], shards=[0, 1])
    other, _ = queue.submit(None, ["c"], [], shards=[2])
    assert [r.id for r in lease(queue, "w2")] == [other.id]  # not shard 0 while w1 holds it
    queue.complete("w1", {a.id: {"shards": []}})
    assert [r.id for r in lease(queue, "w2")] == [late.id]


def test_two_processes_leasing_at_once_never_take_a_request_twice(queue, database_target,
                                                                  tmp_path):
    ids = {queue.submit(None, [f"s{i}"], [], shards=[i % 4])[0].id for i in range(40)}
    code = ("import json, sys; from pathlib import Path; from serving.forget import open_queue; "
            "q = open_queue(sys.argv[1], 'FULL', Path(sys.argv[2])); taken = []\n"
            "for _ in range(20): taken += [r.id for r in q.lease(sys.argv[3], 60)]\n"
            "print(json.dumps(taken))")
    workers = [subprocess.Popen([sys.executable, "-c", code, str(database_target),
                                 str(tmp_path / "secret.key"), f"w{n}"], stdout=subprocess.PIPE)
               for n in range(2)]
    taken = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    assert not set(taken[0]) & set(taken[1])
    assert set(taken[0]) | set(taken[1]) == ids


@pytest.mark.postgres
@pytest.mark.latency
def test_a_submission_on_one_replica_wakes_another_at_once(postgres_url, tmp_path):
    queue = open_queue(postgres_url, "FULL", tmp_path / "secret.key")
    other = open_queue(postgres_url, "FULL", tmp_path / "secret.key")
    other.wait(0.01)  # listening from here on
    threading.Timer(0.2, queue.submit, (None, ["a"], [])).start()
    start = time.monotonic()
    assert other.wait(5.0) is True
    assert time.monotonic() - start < 2.0
