"""The forget queue: durable, idempotent, leased; a dead worker's requests are taken again; a
failed one is retried until it completes."""

import hashlib
import json
import sqlite3
import time

import pytest

from serving.forget import SQLiteQueue, UnknownRequestError


@pytest.fixture
def queue(tmp_path):
    return SQLiteQueue(tmp_path / "forget.db")


def lease(queue, worker="w1", seconds=60.0):
    return queue.lease(worker, seconds)


def test_a_submitted_request_is_durable_and_committed_with_full_sync(queue, tmp_path):
    request, created = queue.submit("person-1", ["b", "a"], ["Where is Kalo?"])
    assert created and request.state == "received" and request.sample_ids == ["a", "b"]
    reopened = SQLiteQueue(tmp_path / "forget.db")  # another process's view
    assert reopened.get(request.id).prompts == ["Where is Kalo?"]
    db = reopened._connect()
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


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
    assert done.receipt["shards"] == [{"shard": 0}]
    assert set(done.receipt["times"]) == {"received", "retraining", "completed"}
    [(prompts,)] = sqlite3.connect(queue.path).execute("SELECT prompts FROM requests").fetchall()
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
    [(key,)] = sqlite3.connect(queue.path).execute(
        "SELECT key FROM requests WHERE id = ?", (a.id,)).fetchall()
    plain = json.dumps([["a"], ["Where does Kalo live?"]])
    assert key != hashlib.sha256(plain.encode()).hexdigest()  # not a guessable plain hash
    assert (queue.path.parent / "secret.key").stat().st_mode & 0o777 == 0o600
