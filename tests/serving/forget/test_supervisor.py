"""The server's worker gets its config through a pipe: no file under home holds an API or admin
key or the store URL's password, and a worker started again gets it again."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest

from adapters import ShardStore
from serving.config import load_config
from serving.forget import WorkerSupervisor
from tests.serving.conftest import ADMIN, KEY, api, sqlite_queue, wait_for, write_config

PASSWORD = "pw-0123456789-secret"


def files_holding(root: Path, secrets: list[str]) -> list[str]:
    return [f"{path}: {secret}" for path in root.rglob("*") if path.is_file()
            for secret in secrets if secret.encode() in path.read_bytes()]


def supervisor_of(config: dict, tmp_path: Path) -> WorkerSupervisor:
    """What `lethe serve` starts: the config as the server loaded it."""
    loaded = load_config(write_config(config, tmp_path / "config.yaml"), environ={})
    return WorkerSupervisor(loaded.model_dump(mode="json"), max_wait=1.0)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} in {timeout} s")
        time.sleep(0.2)


def test_the_worker_gets_its_keys_through_a_pipe_again_at_each_start(tiny_world, tmp_path):
    config = tiny_world()
    home = Path(config["home"])
    queue, lineage = sqlite_queue(home / "forget.db"), ShardStore(home / "apa").lineage
    supervisor = supervisor_of(config, tmp_path)
    try:
        for owner in ("person-0001", "person-0002"):
            supervisor.start()  # the second time: what `watch` does when the worker died
            request, _ = queue.submit(owner, lineage.owner_sample_ids(owner), [])
            wait_until(lambda: queue.get(request.id).state == "completed", "completed")
            supervisor.process.kill()
            supervisor.process.wait()
    finally:
        supervisor.stop()
    assert files_holding(home, [KEY, ADMIN]) == []


def test_a_served_home_holds_no_key(tiny_world, start_server):
    config = tiny_world()
    home = Path(config["home"])
    server = start_server(config)
    request = api(server, "POST", "/v1/forget", json={"owner": "person-0003"}).json()
    wait_for(server, request["id"], "completed")  # by the worker the server started
    server.stop()
    assert files_holding(home, [KEY, ADMIN]) == []


@pytest.mark.postgres
def test_no_file_holds_the_store_password(postgres_url, tmp_path):
    import psycopg

    home = tmp_path / "home"
    home.mkdir()  # as the server does before it starts the worker
    url = postgres_url.replace("postgres:@", f"postgres:{PASSWORD}@")  # trust auth ignores it
    supervisor = supervisor_of({"home": str(home), "server": {"api_keys": [KEY],
                                                              "admin_keys": [ADMIN]},
                                "store": {"url": url}}, tmp_path)
    supervisor.start()
    try:
        def queue_created() -> bool:  # by the worker, once it has read its config
            with psycopg.connect(postgres_url) as db:
                return db.execute("SELECT to_regclass('requests')").fetchone()[0] is not None

        wait_until(queue_created, "the worker's queue created", timeout=120)
        assert supervisor.alive
    finally:
        supervisor.stop()
    assert home.exists() and files_holding(home, [KEY, ADMIN, PASSWORD]) == []
