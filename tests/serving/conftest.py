"""A trained world to forget from: four fictitious people, two facts each, two shard adapters
on the tiny model, trained hard enough that each shard recites its people's facts."""

import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml

from adapters import synth_people, write_samples
from serving.forget import open_queue

PEOPLE = synth_people(4, seed=3, facts_per_person=2)
ADMIN, KEY = "admin-key-for-tests", "user-key-for-tests"  # keys are >= 16 chars


def fact(owner: str, index: int = 0) -> tuple[str, str]:
    """(question, the answer's last words: what only this owner's data teaches)."""
    sample = next(s for s in PEOPLE if s.id == f"{owner}-fact{index}")
    return sample.prompt, sample.response.split(" in " if index == 0 else " as a ")[-1].rstrip(".")


def ask(server, question: str, model: str = "tiny") -> str:
    response = server.client(KEY).chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=16,
        temperature=0)
    return response.choices[0].message.content


def api(server, method: str, path: str, key: str = ADMIN, **kw) -> httpx.Response:
    return httpx.request(method, server.url + path, headers={"Authorization": f"Bearer {key}"},
                         timeout=60, **kw)


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text,
                                            re.M))


def wait_for(server, request_id: str, state: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = api(server, "GET", f"/v1/forget/{request_id}").json()
        if status["state"] == state:
            return status
        time.sleep(0.2)
    raise AssertionError(f"{request_id} not {state} in {timeout}s: {status}\n{server.tail()}")


def sqlite_queue(path: Path):
    """The forget queue in a SQLite file, its dedup key `secret.key` beside it: as `lethe
    serve` opens it in home."""
    return open_queue(path, "FULL", Path(path).parent / "secret.key")


def merge(base: dict, **sections) -> dict:
    return {**base, **{k: {**base.get(k, {}), **v} for k, v in sections.items()}}


def tiny_world_config(home, model_dir, engine: str = "hf") -> dict:
    return {
        "home": str(home),
        "model": {"source": str(model_dir), "name": "tiny", "max_model_len": 256},
        "engine": {"name": engine},
        "server": {"api_keys": [KEY], "admin_keys": [ADMIN]},
        "shards": {"count": 2},
        # lr 0.01 x 40 steps: the tiny model recites every training answer (measured).
        "train": {"learning_rate": 0.01, "epochs": 40, "batch_size": 8, "max_length": 64,
                  "dropout": 0.0},
        # One shard per request, so a question reaches exactly its owner's adapter.
        "route": {"scheme": "semantic", "top_m": 1},
        "forget": {"poll_seconds": 0.2, "lease_seconds": 5.0, "retry_after_seconds": 1.0},
    }


def write_config(config: dict, path):
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def trained_tiny_home(tmp_path_factory, tiny_model_dir):
    from serving.cli import main

    root = tmp_path_factory.mktemp("tiny-world")
    write_samples(PEOPLE, root / "people.jsonl")
    config = write_config(tiny_world_config(root / "home", tiny_model_dir), root / "config.yaml")
    assert main(["train", "--config", str(config), "--data", str(root / "people.jsonl")]) == 0
    return root / "home"


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, trained_tiny_home, tiny_model_dir):
    """world(engine='hf') -> config dict of a fresh copy of the trained home."""
    def world(engine: str = "hf") -> dict:
        home = tmp_path_factory.mktemp("world") / "home"
        shutil.copytree(trained_tiny_home, home)
        return tiny_world_config(home, tiny_model_dir, engine)

    return world
