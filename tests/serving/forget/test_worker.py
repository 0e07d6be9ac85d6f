"""The forget worker: coalesced retrains; crashes (SIGKILL) of the worker and the server that
lose no request and never publish a half-trained adapter; a stopped worker (SIGSTOP) that holds
up neither its requests nor its shard."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path


from adapters import ShardStore
from serving.forget import Worker
from tests.serving.conftest import api, ask, fact, merge, sqlite_queue, wait_for, write_config


def worker_for(home: Path, lease_seconds: float = 5.0) -> Worker:
    return Worker(sqlite_queue(home / "forget.db"), home / "apa", lease_seconds=lease_seconds,
                  retry_after=0.0, retry_max=1.0, poll_seconds=0.1)


def owner_ids(home: Path, owner: str) -> list[str]:
    return ShardStore(home / "apa").lineage.owner_sample_ids(owner)


def test_pending_requests_are_coalesced_into_one_retrain_per_shard(tiny_world):
    home = Path(tiny_world()["home"])
    store, queue = ShardStore(home / "apa"), sqlite_queue(home / "forget.db")
    shard_of = {o: set(store.lineage.shards_of(owner_ids(home, o)))
                for o in ("person-0000", "person-0001", "person-0002", "person-0003")}
    requests = [queue.submit(o, owner_ids(home, o), [])[0] for o in shard_of]

    done = worker_for(home).run_once()

    assert done == [r.id for r in requests]
    for request, owner in zip(requests, shard_of):
        receipt = queue.get(request.id).receipt
        assert {s["shard"] for s in receipt["shards"]} == shard_of[owner]
        assert len(receipt["coalesced_with"]) == 3
        assert all(s["new_version"] is None for s in receipt["shards"])  # everyone is forgotten
    assert store.current_versions() == []


def a_worker_retraining(tiny_world, tmp_path, lease_seconds: float, **popen):
    """(config, request, its shard, a `lethe worker` process that is training the shard now):
    one forget request in a queue of its own, a retrain of several seconds."""
    config = merge(tiny_world(), train={"epochs": 400}, forget={"lease_seconds": lease_seconds})
    home = Path(config["home"])
    request, _ = sqlite_queue(home / "forget.db").submit(
        "person-0001", owner_ids(home, "person-0001"), [])
    [shard] = ShardStore(home / "apa").lineage.shards_of(request.sample_ids)
    worker = subprocess.Popen([sys.executable, "-m", "serving.cli", "worker", "--config",
                               str(write_config(config, tmp_path / "config.yaml"))], **popen)
    staging = home / "apa" / "adapters" / ".staging"
    deadline = time.monotonic() + 120
    while not any(staging.iterdir()) and time.monotonic() < deadline:  # training has begun
        time.sleep(0.05)
    return config, request, shard, worker


def test_a_worker_killed_mid_retrain_loses_nothing_and_publishes_nothing(tiny_world, tmp_path):
    config, request, shard, worker = a_worker_retraining(tiny_world, tmp_path, 1.0)
    home = Path(config["home"])
    queue = sqlite_queue(home / "forget.db")
    before = ShardStore(home / "apa").current(shard).id
    staging = home / "apa" / "adapters" / ".staging"
    time.sleep(0.5)
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    assert queue.get(request.id).state == "retraining"  # not lost: leased to a dead worker
    assert ShardStore(home / "apa").current(shard).id == before  # nothing published

    time.sleep(1.0)  # the dead worker's lease runs out
    assert worker_for(home, lease_seconds=1.0).run_once() == [request.id]
    done = queue.get(request.id)
    assert done.state == "completed" and done.attempts == 2
    [receipt] = done.receipt["shards"]
    assert receipt["old_version"] == before and receipt["forgotten_ids_absent"]
    assert not any(staging.iterdir())  # the dead worker's half-trained adapter is gone
    versions = [v.id for v in ShardStore(home / "apa").registry.versions(shard)]
    assert versions == [receipt["new_version"]]  # the tainted old version is deleted too


def test_a_stopped_worker_holds_neither_its_requests_nor_its_shard(tiny_world, tmp_path):
    # SIGSTOP mid-retrain: the worker keeps its process, its shard's lock and its connections.
    # Another worker takes its request once the lease runs out (its heartbeats stopped too),
    # waits for the shard's lock no longer than that lease, and completes the request. The
    # stopped worker, resumed, loses its publish (the other one's moved the generation on) and
    # completes nothing (its lease is gone).
    log = tmp_path / "worker.log"
    with open(log, "w") as stderr:
        config, request, shard, stopped = a_worker_retraining(tiny_world, tmp_path, 2.0,
                                                              stderr=stderr)
    home = Path(config["home"])
    queue = sqlite_queue(home / "forget.db")
    try:
        stopped.send_signal(signal.SIGSTOP)
        time.sleep(2.5)  # its lease runs out

        assert worker_for(home, lease_seconds=2.0).run_once() == [request.id]
        receipt = queue.get(request.id).receipt
        [taken] = receipt["shards"]
        assert taken["forgotten_ids_absent"]

        stopped.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 120
        while "lost the publish" not in log.read_text():
            assert time.monotonic() < deadline and stopped.poll() is None
            time.sleep(0.1)
    finally:
        stopped.kill()
        stopped.wait()
    assert ShardStore(home / "apa").current(shard).id == taken["new_version"]
    assert queue.get(request.id).receipt == receipt  # completed once, by the other worker


def test_a_server_killed_after_the_202_loses_no_request(tiny_world, start_server):
    config = merge(tiny_world(), forget={"lease_seconds": 2.0})
    server = start_server(config)
    question, city = fact("person-0002")
    accepted = api(server, "POST", "/v1/forget", json={"owner": "person-0002"})
    assert accepted.status_code == 202
    server.proc.send_signal(signal.SIGKILL)  # its worker dies with it
    server.proc.wait()
    request_id = accepted.json()["id"]
    assert sqlite_queue(Path(config["home"]) / "forget.db").get(request_id).state in (
        "guarded", "retraining")

    restarted = start_server(config)
    wait_for(restarted, request_id, "completed", timeout=120)
    assert city not in ask(restarted, question)
    restarted.stop()


def test_the_worker_dies_with_its_server(tiny_world, start_server):
    server = start_server(tiny_world())
    children = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True,
                              text=True).stdout.split()
    [worker] = [p for p in children if b"worker" in Path(f"/proc/{p}/cmdline").read_bytes()]
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    deadline = time.monotonic() + 10
    while not dead(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dead(worker)


def dead(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # exited, not yet reaped
    except FileNotFoundError:
        return True
