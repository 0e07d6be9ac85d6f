"""Several replicas and workers on one PostgreSQL and one home (shared adapter storage): a
forget request accepted by one replica guards the others within a second; one shard is never
retrained twice at once, and requests on it share a retrain; killing a replica or a worker
mid-retrain loses no request and publishes no half version; a replica that starts while
requests are pending guards them before it reports healthy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from adapters import ShardStore
from base import open_database
from serving.cli import main
from serving.forget import open_queue
from tests.conftest import new_database
from tests.serving.conftest import (PEOPLE, api, ask, fact, merge, metric, tiny_world_config,
                                    wait_for, write_config)

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def cluster_home(tmp_path_factory, tiny_model_dir, postgres_server):
    """train_cluster(worker=True) -> config of a new home whose lineage and queue live in a new
    PostgreSQL database, with every shard trained."""
    from adapters import write_samples

    def train(worker: bool = True) -> dict:
        root = tmp_path_factory.mktemp("cluster")
        write_samples(PEOPLE, root / "people.jsonl")
        config = merge(tiny_world_config(root / "home", tiny_model_dir),
                       store={"url": new_database(postgres_server)},
                       forget={"worker": worker, "coalesce_seconds": 1.0})
        path = write_config(config, root / "config.yaml")
        assert main(["train", "--config", str(path), "--data", str(root / "people.jsonl")]) == 0
        return config

    return train


def store_of(config: dict) -> ShardStore:
    return ShardStore(Path(config["home"]) / "apa", database=open_database(config["store"]["url"]))


def queue_of(config: dict):
    return open_queue(config["store"]["url"], "FULL", Path(config["home"]) / "secret.key")


def worker_pid(server) -> int:
    """The forget worker that `server` started (its child process)."""
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
    for pid in map(int, children.split()):
        if "serving.forget.worker" in Path(f"/proc/{pid}/cmdline").read_text():
            return pid
    raise AssertionError(f"no worker under {server.proc.pid}")


@pytest.mark.latency
def test_two_replicas_and_two_workers_on_one_postgres(cluster_home, start_server):
    # Coalescing joins what arrives within coalesce_seconds of the request a worker saw first;
    # 4 s, not the fixture's 1 s, so that a loaded 2-core machine (two replicas, two workers,
    # two guards fitting their heads) cannot split the two submissions below into two rounds.
    config = merge(cluster_home(), forget={"coalesce_seconds": 4.0})
    a, b = start_server(config), start_server(config)
    question, city = fact("person-0000")
    assert city in ask(b, question)

    # Instant on every replica: a request accepted by A guards B within a second.
    start = time.monotonic()
    accepted = api(a, "POST", "/v1/forget", json={"owner": "person-0000"})
    assert accepted.status_code == 202, accepted.text
    while metric(b, "lethe:guard_exemplars") < 1:
        assert time.monotonic() - start < 1.0, "replica B did not guard the request within 1 s"
        time.sleep(0.02)
    flagged = metric(b, "lethe:guard_flagged_total")
    assert city not in ask(b, question)
    assert metric(b, "lethe:guard_flagged_total") == flagged + 1
    wait_for(a, accepted.json()["id"], "completed")

    # Requests for one shard, on both replicas at once, share one retrain.
    lineage = store_of(config).lineage
    shard_of = {s.owner: k for k in lineage.shard_ids() for s in lineage.shard_samples(k)}
    rest = ("person-0001", "person-0002", "person-0003")  # 3 people, 2 shards: two share one
    same = next([x, y] for x in rest for y in rest if x < y and shard_of[x] == shard_of[y])
    with ThreadPoolExecutor(2) as pool:  # both at once, one on each replica
        on_a, on_b = pool.map(lambda s, owner: api(s, "POST", "/v1/forget",
                                                   json={"owner": owner}).json(), (a, b), same)
    receipts = [api(s, "GET", f"/v1/forget/{wait_for(s, r['id'], 'completed')['id']}/receipt")
                .json() for s, r in ((a, on_a), (b, on_b))]
    [[first], [second]] = [r["shards"] for r in receipts]
    assert first["new_version"] == second["new_version"]  # one version: one retrain
    assert first["forgotten_ids_absent"] and second["forgotten_ids_absent"]
    assert on_b["id"] in receipts[0]["coalesced_with"]
    assert queue_of(config).counts()["completed"] == 3


def test_killing_a_worker_or_a_replica_mid_retrain_loses_nothing(cluster_home, start_server):
    config = merge(cluster_home(), forget={"lease_seconds": 3.0})
    a, b = start_server(config), start_server(config)
    queue = queue_of(config)

    # SIGKILL A's worker while it retrains: its lease runs out and a worker takes it again.
    first = api(a, "POST", "/v1/forget", json={"owner": "person-0000"}).json()
    killed = _kill_the_worker_that_retrains(queue, first["id"], {worker_pid(a): a,
                                                                worker_pid(b): b})
    # SIGKILL replica A itself (its worker dies with it) with a request it accepted pending.
    second = api(a, "POST", "/v1/forget", json={"owner": "person-0001"}).json()
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()

    for request in (first, second):
        done = wait_for(b, request["id"], "completed", timeout=240)
        assert done["attempts"] >= 1
    assert killed  # the first retrain was really interrupted
    store = store_of(config)
    for shard in store.lineage.shard_ids():
        version = store.current(shard)  # whole: its manifest and weights are there
        assert not set(version.manifest["sample_ids"]) & store.lineage.forgotten_ids()
    for request in (first, second):
        receipt = api(b, "GET", f"/v1/forget/{request['id']}/receipt").json()
        assert all(s["forgotten_ids_absent"] for s in receipt["shards"])


def _kill_the_worker_that_retrains(queue, request_id: str, workers: dict) -> bool:
    """SIGKILL whichever worker process leases `request_id` once it is retraining."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        request = queue.get(request_id)
        if request.state == "retraining":
            with queue.database.read() as db:
                (owner,) = db.execute("SELECT lease_owner FROM requests WHERE id = ?",
                                      (request_id,)).fetchone()
            pid = int(owner.split("-")[-2])  # worker ids are host-pid-random
            if pid in workers:
                os.kill(pid, signal.SIGKILL)
                return True
        if request.state == "completed":
            return False
        time.sleep(0.05)
    return False


def test_a_replica_started_while_requests_are_pending_guards_them_before_it_is_healthy(
        cluster_home, start_server):
    config = cluster_home(worker=False)  # no worker anywhere: the request stays pending
    a = start_server(config)
    accepted = api(a, "POST", "/v1/forget", json={"owner": "person-0002"})
    assert accepted.status_code == 202
    late = start_server(config)  # returns once /health answers 200
    assert metric(late, "lethe:guard_exemplars") == 1
    question, city = fact("person-0002")
    flagged = metric(late, "lethe:guard_flagged_total")
    assert city not in ask(late, question)
    assert metric(late, "lethe:guard_flagged_total") == flagged + 1


def test_an_unreachable_database_fails_every_request_alike_with_503(cluster_home, start_server,
                                                                    postgres_server):
    import psycopg

    config = cluster_home(worker=False)
    server = start_server(config)
    forgotten, _ = fact("person-0003")
    api(server, "POST", "/v1/forget", json={"owner": "person-0003"})
    name = config["store"]["url"].partition("?")[0].rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.get_uri(), autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s", (name,))
    try:
        refused = api(server, "POST", "/v1/forget", json={"owner": "person-0002"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "store_unavailable"
        assert name not in refused.text  # no database detail for the client
        # A flagged prompt and an unflagged one get the same answer: no side channel.
        for question in (forgotten, "Write a haiku about rain."):
            with pytest.raises(openai.APIStatusError) as info:
                ask(server, question)
            assert info.value.status_code == 503
        health = api(server, "GET", "/health")
        assert health.status_code == 503 and health.json()["store"] == "down"
    finally:
        with psycopg.connect(postgres_server.get_uri(), autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    deadline = time.monotonic() + 60  # the connection pool reconnects, backing off
    while api(server, "GET", "/health").status_code != 200:
        assert time.monotonic() < deadline, "the server did not recover with its database"
        time.sleep(0.5)
    assert api(server, "POST", "/v1/forget", json={"owner": "person-0002"}).status_code == 202
    # Its sync with the queue outlived the outage: a request from elsewhere is guarded here.
    guarded = metric(server, "lethe:guard_exemplars")
    lineage = store_of(config).lineage
    ids = lineage.owner_sample_ids("person-0001")
    queue_of(config).submit("person-0001", ids, [], sorted(lineage.shards_of(ids)))
    deadline = time.monotonic() + 10
    while metric(server, "lethe:guard_exemplars") == guarded:
        assert time.monotonic() < deadline, "the server stopped syncing with the queue"
        time.sleep(0.1)


def test_two_workers_retrain_different_shards_at_the_same_time(cluster_home, tmp_path):
    config = cluster_home(worker=False)
    path = write_config(merge(config, forget={"coalesce_seconds": 0, "poll_seconds": 0.1}),
                        tmp_path / "config.yaml")
    logs = [tmp_path / f"worker{n}.log" for n in range(2)]
    workers = [subprocess.Popen([sys.executable, "-m", "serving.cli", "worker", "--config",
                                 str(path)], stderr=open(log, "w")) for log in logs]
    try:
        deadline = time.monotonic() + 120
        while not all("polling the forget queue" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text()[-2000:] for log in logs]
            time.sleep(0.1)
        lineage = store_of(config).lineage
        queue = queue_of(config)
        ids = []
        for k in lineage.shard_ids():  # one request per shard, both waiting at once
            owner = lineage.shard_samples(k)[0].owner
            ids.append(queue.submit(owner, lineage.owner_sample_ids(owner), [], [k])[0].id)
        deadline = time.monotonic() + 300
        while not all(queue.get(i).state == "completed" for i in ids):
            assert time.monotonic() < deadline, [queue.get(i).public() for i in ids]
            time.sleep(0.1)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait()

    done = [queue.get(i) for i in ids]
    assert len({r.receipt["worker"] for r in done}) == 2  # one shard each
    (a_start, a_end), (b_start, b_end) = [(r.times["retraining"], r.times["completed"])
                                          for r in done]
    assert max(a_start, b_start) < min(a_end, b_end)  # retraining at the same time
    assert all(s["forgotten_ids_absent"] for r in done for s in r.receipt["shards"])
