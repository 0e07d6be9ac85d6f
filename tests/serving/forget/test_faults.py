"""Forgetting stays exact and private under faults: a dead worker is restarted, failures are
retried until they clear, one bad request never blocks the others, poison input is refused
before it is stored, and a store with nothing left to serve still answers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from adapters import ShardStore
from serving.forget import QueueError, Worker
from tests.serving.conftest import (ADMIN, api, ask, fact, merge, sqlite_queue, wait_for,
                                    write_config)
from tests.serving.forget.test_worker import dead, owner_ids


def worker_for(home: Path, queue=None) -> Worker:
    return Worker(queue or sqlite_queue(home / "forget.db"), home / "apa", lease_seconds=5.0,
                  retry_after=0.2, retry_max=0.5, poll_seconds=0.1)


def worker_pid(server) -> str:
    children = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True,
                              text=True).stdout.split()
    [pid] = [p for p in children if b"serving.forget.worker" in
             Path(f"/proc/{p}/cmdline").read_bytes()]
    return pid


def health(server) -> tuple[int, dict]:
    response = httpx.get(server.url + "/health", timeout=10)
    return response.status_code, response.json()


def test_a_dead_worker_is_restarted_and_health_says_so(tiny_world, start_server):
    config = tiny_world()
    server = start_server(config)
    assert health(server) == (200, {"engine": "ok", "store": "ok", "worker": "running",
                                    "worker_restarts": 0})
    first = worker_pid(server)
    subprocess.run(["kill", "-9", first], check=True)
    deadline = time.monotonic() + 5
    while not dead(first) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert health(server)[0] == 503  # down until it is started again (after ~1 s)
    request = api(server, "POST", "/v1/forget", json={"owner": "person-0001"}).json()
    wait_for(server, request["id"], "completed", timeout=120)
    status, body = health(server)
    assert status == 200 and body["worker_restarts"] == 1 and worker_pid(server) != first


class FlakyQueue:
    """A queue whose first lease fails as SQLite does under contention."""

    def __init__(self, queue):
        self.queue, self.failures = queue, 0

    def lease(self, *args):
        if self.failures == 0:
            self.failures += 1
            raise QueueError("forget queue: database is locked")
        return self.queue.lease(*args)

    def __getattr__(self, name):
        return getattr(self.queue, name)


def test_a_transient_queue_error_does_not_end_the_worker(tiny_world):
    home = Path(tiny_world()["home"])
    queue = sqlite_queue(home / "forget.db")
    request, _ = queue.submit("person-0001", owner_ids(home, "person-0001"), [])
    flaky, stop = FlakyQueue(queue), threading.Event()
    runner = threading.Thread(target=worker_for(home, flaky).run, args=(stop,))
    runner.start()
    deadline = time.monotonic() + 120
    while queue.get(request.id).state != "completed" and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    runner.join(30)
    assert flaky.failures == 1 and queue.get(request.id).state == "completed"


def test_a_failed_request_is_retried_and_completes_once_the_fault_clears(tiny_world):
    home = Path(tiny_world()["home"])
    queue = sqlite_queue(home / "forget.db")
    request, _ = queue.submit("person-0002", owner_ids(home, "person-0002"), ["Where?"])
    info = home / "apa" / "store.json"
    good = info.read_text()
    info.write_text("{ not json")  # the fault: the store cannot be opened
    worker = worker_for(home)
    assert worker.run_once() == []
    failed = queue.get(request.id)
    assert failed.state == "failed" and "JSONDecodeError" in failed.reason
    assert failed.prompts == ["Where?"]  # still pending: nothing purged, nothing abandoned
    info.write_text(good)  # the fault clears
    time.sleep(max(0.0, failed.retry_at - time.time()))
    assert worker.run_once() == [request.id]
    done = queue.get(request.id)
    assert done.state == "completed" and done.attempts == 2 and done.prompts is None


def test_one_failing_request_does_not_fail_those_coalesced_with_it(tiny_world):
    home = Path(tiny_world()["home"])
    queue = sqlite_queue(home / "forget.db")
    good, _ = queue.submit("person-0003", owner_ids(home, "person-0003"), [])
    bad, _ = queue.submit(None, ["no-such-sample"], [])  # written past the API's checks
    assert worker_for(home).run_once() == [good.id]
    assert queue.get(good.id).state == "completed"
    assert queue.get(bad.id).state == "failed" and "no-such-sample" in queue.get(bad.id).reason


def test_a_retry_after_a_crash_past_publish_records_the_true_previous_version(tiny_world):
    home = Path(tiny_world()["home"])
    queue = sqlite_queue(home / "forget.db")
    ids = owner_ids(home, "person-0001")
    store = ShardStore(home / "apa")
    [shard] = store.lineage.shards_of(ids)
    before = store.current(shard).id
    request, _ = queue.submit("person-0001", ids, [])
    store.forget_samples(ids)  # a worker that published, then died before completing
    assert worker_for(home).run_once() == [request.id]
    [receipt] = queue.get(request.id).receipt["shards"]
    assert receipt["old_version"] == before != receipt["new_version"]
    assert receipt["new_version"] == store.current(shard).id


def test_poison_forget_input_is_refused_before_it_is_stored(tiny_world, start_server):
    config = merge(tiny_world(), forget={"worker": False})
    server = start_server(config)
    cases = {
        "prompts.0": '{"owner": "person-0001", "prompts": ["\\ud800 lone surrogate"]}',
        "owner": '{"owner": "' + "x" * 10_000 + '"}',
        "sample_ids": json.dumps({"sample_ids": [f"id-{i}" for i in range(20_000)]}),
        "prompts": json.dumps({"owner": "person-0001", "prompts": ["q"] * 1_000}),
    }
    for param, body in cases.items():
        response = httpx.post(server.url + "/v1/forget", content=body, timeout=60,
                              headers={"Authorization": f"Bearer {ADMIN}",
                                       "Content-Type": "application/json"})
        assert response.status_code == 400, (param, response.text)
        assert response.json()["error"]["param"] == param
    assert sqlite_queue(Path(config["home"]) / "forget.db").list() == []


def test_a_request_that_cannot_be_guarded_does_not_stop_the_server_or_the_others(tiny_world,
                                                                                start_server):
    config = merge(tiny_world(), forget={"worker": False})
    home = Path(config["home"])
    queue = sqlite_queue(home / "forget.db")
    queue.submit(None, ["person-0000-fact0"], ["\ud800"])  # stored by an older, unchecked server
    question, city = fact("person-0001")
    queue.submit("person-0001", owner_ids(home, "person-0001"), [])
    server = start_server(config)  # guards what is pending before /health answers 200
    assert city not in ask(server, question)  # the good request is guarded all the same


def test_a_store_with_every_sample_forgotten_serves_the_base_model(tiny_world, start_server,
                                                                   tmp_path):
    config = tiny_world()
    home = Path(config["home"])
    store = ShardStore(home / "apa")
    store.forget_samples(store.lineage.forgotten_ids() | {
        s.id for k in store.lineage.shard_ids() for s in store.lineage.shard_samples(k)})
    server = start_server(config)
    assert ask(server, fact("person-0001")[0])  # 200 with an answer, from the base model alone
    shards = subprocess.run(
        [sys.executable, "-m", "serving.cli", "shards", "--json", "--config",
         str(write_config(config, tmp_path / "config.yaml"))], capture_output=True, text=True)
    assert shards.returncode == 0 and json.loads(shards.stdout)["base_model_only"] is True
