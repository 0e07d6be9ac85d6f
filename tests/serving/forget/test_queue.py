"""The forget queue: durable, idempotent, leased; a dead worker's requests are taken again."""

import sqlite3
import time

import pytest

from serving.forget import SQLiteQueue, UnknownRequestError


@pytest.fixture
def queue(tmp_path):
    return SQLiteQueue(tmp_path / "forget.db")


def lease(queue, worker="w1", seconds=60.0, max_attempts=3, retry_after=0.0):
    return queue.lease(worker, seconds, max_attempts, retry_after)


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


def test_a_failed_request_is_retried_until_its_attempts_run_out(queue):
    a, _ = queue.submit(None, ["a"], [])
    for attempt in (1, 2):
        [taken] = lease(queue, max_attempts=2)
        assert taken.attempts == attempt
        queue.fail("w1", [a.id], "TrainingError: boom")
    failed = queue.get(a.id)
    assert failed.state == "failed" and failed.reason == "TrainingError: boom"
    assert lease(queue, max_attempts=2) == []  # stays failed
    assert lease(queue, max_attempts=3, retry_after=60.0) == []  # not before retry_after
    assert [r.id for r in lease(queue, max_attempts=3)] == [a.id]
