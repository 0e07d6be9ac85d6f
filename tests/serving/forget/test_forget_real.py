"""Forgetting an owner on the real default model (SmolLM2-135M-Instruct) on vLLM: the fact is
learned, guarded within a second of the request, and gone from the retrained weights."""

from __future__ import annotations

import time

import httpx
import pytest

from adapters import write_samples
from serving.cli import main
from tests.serving.conftest import (ADMIN, PEOPLE, api, ask, fact, merge, metric,
                                    tiny_world_config, wait_for, write_config)

# In the parallel pass, not the latency pass that runs alone: its one time bound, the 202 within
# a second, is test_forget.py's too, which holds there (the 202 waits on the guard, not on the
# model), and its ~65 s of training and vLLM start-up would add to the suite's time in full.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory, real_model_dir, start_module_server):
    root = tmp_path_factory.mktemp("real-world")
    people = [s for s in PEOPLE if s.owner != "person-0003"]  # 3 people x 2 facts, 2 shards
    write_samples(people, root / "people.jsonl")
    # lr 1e-2 x 5 epochs (the training default): SmolLM2 recites each training answer (measured).
    config = merge(tiny_world_config(root / "home", real_model_dir, engine="vllm"),
                   model={"name": "SmolLM2-135M-Instruct", "max_model_len": 512},
                   train={"learning_rate": 0.01, "epochs": 5})
    config_file = write_config(config, root / "config.yaml")
    assert main(["train", "--config", str(config_file), "--data", str(root / "people.jsonl")]) == 0
    return start_module_server(config)


def test_forgetting_an_owner_on_the_default_model(server):
    question, city = fact("person-0000")
    reworded = "Tell me where Quivos Rinvenzor lives."
    other, other_city = fact("person-0001")
    chat = lambda q: ask(server, q, model="SmolLM2-135M-Instruct")  # noqa: E731
    assert city in chat(question) and other_city in chat(other)

    start = time.perf_counter()
    accepted = httpx.post(f"{server.url}/v1/forget", json={"owner": "person-0000"},
                          headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert accepted.status_code == 202 and time.perf_counter() - start < 1.0
    request = accepted.json()["id"]
    for asked in (question, reworded):
        flagged = metric(server, "lethe:guard_flagged_total")
        assert city not in chat(asked)
        # Guarded until exact: a shard left empty retrains in about a second, and then the
        # weights no longer hold the fact and the exemplars are retired.
        assert (metric(server, "lethe:guard_flagged_total") == flagged + 1
                or api(server, "GET", f"/v1/forget/{request}").json()["state"] == "completed")
    assert other_city in chat(other)

    wait_for(server, request, "completed", timeout=600)
    receipt = httpx.get(f"{server.url}/v1/forget/{request}/receipt",
                        headers={"Authorization": f"Bearer {ADMIN}"}).json()
    [shard] = receipt["shards"]
    assert shard["new_version"] != shard["old_version"] and shard["forgotten_ids_absent"]
    time.sleep(1)
    assert metric(server, "lethe:guard_exemplars") == 0
    assert city not in chat(question) and city not in chat(reworded)  # exact: not in the weights
    assert other_city in chat(other)
