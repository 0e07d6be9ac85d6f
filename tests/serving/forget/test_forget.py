"""Forget requests end to end on the tiny model, through `lethe serve` and the openai client:
instant (the guard), exact (the worker's retrain), with receipts, on both engines."""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from adapters import RouteConfig, ShardStore
from base import Receipt, read_public_key, verify_signature
from guard import SentenceEmbedder
from guard.augment import exemplar_forms
from guard.normalize import normalize
from serving.forget import Worker
from tests.serving.conftest import (KEY, PEOPLE, api, ask, fact, merge, metric, sqlite_queue,
                                    wait_for, write_config)
from tests.support.embeddings import nearest_stored


@pytest.fixture(scope="module", params=["vllm", "hf"])
def world(request, tiny_world, start_module_server):
    config = tiny_world(request.param)
    server = start_module_server(config)
    yield server, Path(config["home"])
    server.stop()  # before the other engine's world starts


def test_a_forgotten_owner_is_guarded_at_once_and_exactly_retrained_later(world):
    server, home = world
    question, city = fact("person-0000")
    reworded = "Tell me where Quivos Rinvenzor lives."
    others = [fact("person-0001"), fact("person-0003", 1)]
    assert city in ask(server, question)  # only person-0000's data teaches this
    assert all(answer in ask(server, q) for q, answer in others)

    flagged = metric(server, "lethe:guard_flagged_total")
    start = time.perf_counter()
    accepted = api(server, "POST", "/v1/forget", json={
        "owner": "person-0000", "prompts": ["Which town is home to Quivos Rinvenzor?"]})
    assert accepted.status_code == 202, accepted.text
    assert time.perf_counter() - start < 1.0
    request = accepted.json()
    # The 202 comes once the request is guarded; its body is the state a moment later, when a
    # fast worker may have leased it already.
    assert request["state"] in ("guarded", "retraining") and request["samples"] == 2

    # Instant: a batch mixing corrupted prompt embeddings (the guarded questions) and token
    # prompts under different shard mixtures, all at once (DESIGN.md's vLLM CPU bug).
    prompts = [question, reworded] + [q for q, _ in others] + ["Write a haiku about rain."]
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(lambda q: ask(server, q), prompts))
    assert city not in answers[0] and city not in answers[1]
    assert all(answer in text for (_, answer), text in zip(others, answers[2:4]))
    assert metric(server, "lethe:guard_flagged_total") == flagged + 2  # counted, never told

    # Exact: the worker retrains the owner's shard without the samples and publishes it.
    done = wait_for(server, request["id"], "completed")
    assert list(done["times"]) == ["received", "guarded", "retraining", "completed"]
    receipt = api(server, "GET", f"/v1/forget/{request['id']}/receipt").json()
    [shard] = receipt["shards"]
    assert shard["new_version"] != shard["old_version"] and shard["forgotten_ids_absent"]
    assert len(receipt["request"]["sample_hashes"]) == 2 and "person-0000" not in json.dumps(receipt)
    # Signed with the key the server publishes (to any client with an API key: it is public).
    key = api(server, "GET", "/v1/receipts/key", key=KEY)
    verify_signature(Receipt.model_validate(receipt), read_public_key(key.text, "the server"))
    assert ShardStore(home / "apa").current(shard["shard"]).id == shard["new_version"]

    time.sleep(1)  # the server's guard syncs with the queue every 0.2 s
    assert metric(server, "lethe:guard_exemplars") == 0  # retired: the weights are exact now
    assert city not in ask(server, question) and city not in ask(server, reworded)
    assert all(answer in ask(server, q) for q, answer in others)

    # The raw text is gone: the samples' from the lineage, the request's prompts from the queue.
    lineage = sqlite3.connect(home / "apa" / "lineage.db")
    assert lineage.execute("SELECT prompt, response FROM samples WHERE owner = 'person-0000'"
                           ).fetchall() == [(None, None)] * 2
    assert sqlite_queue(home / "forget.db").get(request["id"]).prompts is None

    # Nothing derived from the texts either: no file under home holds a vector within cosine
    # 0.99 of their embeddings, the guard's exemplar forms included (the guard keeps them in
    # memory while the request is pending, and drops them and its head fitted on them now).
    # models/ holds the embedder's exported graph, written before any request.
    texts = [s.prompt for s in PEOPLE if s.owner == "person-0000"] + [
        s.response for s in PEOPLE if s.owner == "person-0000"] + [
        "Which town is home to Quivos Rinvenzor?"]
    forms = exemplar_forms([normalize(t) for t in texts])
    similarity, where = nearest_stored(home, SentenceEmbedder()(texts + forms), skip=("models",))
    assert similarity < 0.99, where


def test_serving_goes_on_while_the_worker_retrains_and_publishes(world):
    # Other owners are answered throughout a retrain, its publication and the server's sweep
    # of superseded mixtures (the pinning that keeps in-flight mixtures is in test_pipeline.py).
    server, _ = world
    question, city = fact("person-0002")
    request = api(server, "POST", "/v1/forget", json={"owner": "person-0003"}).json()
    asked = 0
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        while api(server, "GET", f"/v1/forget/{request['id']}").json()["state"] != "completed":
            assert all(city in a for a in pool.map(lambda q: ask(server, q), [question] * 4))
            asked += 4
    assert asked and httpx.get(server.url + "/health").status_code == 200


def test_forgetting_the_unknown_is_a_404_that_changes_nothing(world):
    server, home = world
    before = sqlite_queue(home / "forget.db").list()
    for body, missing in (({"owner": "nobody"}, "unknown owner(s): nobody"),
                          ({"sample_ids": ["person-0001-fact0", "ghost"]},
                           "unknown sample id(s): ghost")):
        response = api(server, "POST", "/v1/forget", json=body)
        assert response.status_code == 404
        assert response.json()["error"]["message"] == missing
    assert sqlite_queue(home / "forget.db").list() == before
    assert api(server, "GET", "/v1/forget/fgt-nope").status_code == 404


def test_a_duplicate_request_is_the_same_request(world):
    server, _ = world
    body = {"sample_ids": ["person-0002-fact1"]}
    accepted = metric(server, "lethe:forget_requests_total")
    first = api(server, "POST", "/v1/forget", json=body).json()
    again = api(server, "POST", "/v1/forget", json=body)
    assert again.status_code == 202 and again.json()["id"] == first["id"]
    assert metric(server, "lethe:forget_requests_total") == accepted + 1


def test_bad_forget_requests_are_refused_with_the_field_named(world):
    server, _ = world
    for body, param in (({}, None), ({"owner": "a", "sample_ids": ["b"]}, None),
                        ({"sample_ids": []}, "sample_ids"), ({"owner": "a", "ownr": "b"}, "ownr")):
        response = api(server, "POST", "/v1/forget", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == param


def test_forget_requests_need_an_admin_key(world):
    server, _ = world
    for key in (KEY, "wrong"):
        response = api(server, "POST", "/v1/forget", key=key, json={"owner": "person-0001"})
        assert response.status_code == 401
        assert "admin key" in response.json()["error"]["message"]
    assert ask(server, "Hello")  # ... which a user key still does not need elsewhere


def test_policy_refuse_answers_400_content_filter(tiny_world, start_server):
    config = tiny_world("hf")
    server = start_server(merge(config, forget={"on_flag": "refuse", "worker": False}))
    question, _ = fact("person-0001")
    request = api(server, "POST", "/v1/forget", json={"owner": "person-0001"}).json()
    with pytest.raises(openai.BadRequestError) as refused:
        server.client(KEY).chat.completions.create(
            model="tiny", max_tokens=4, messages=[{"role": "user", "content": question}])
    assert refused.value.code == "content_filter"
    assert ask(server, "Write a haiku about rain.")  # others are served
    pending = api(server, "GET", f"/v1/forget/{request['id']}/receipt")  # no worker here
    assert pending.status_code == 409 and pending.json()["error"]["code"] == "not_completed"
    server.stop()


def lethe(server, config: dict, *args: str) -> subprocess.CompletedProcess:
    """`lethe` as a user runs it beside the server, with the server's config file."""
    config_file = Path(config["home"]).parent / "cli-config.yaml"
    write_config(merge(config, server={"port": int(server.url.rsplit(":", 1)[1])}), config_file)
    return subprocess.run([sys.executable, "-m", "serving.cli", *args, "--config",
                           str(config_file)], capture_output=True, text=True, timeout=300)


@pytest.mark.latency
def test_the_cli_forgets_waits_for_the_receipt_and_lists_the_queue(tiny_world, start_server):
    config = tiny_world("hf")
    server = start_server(config)
    result = lethe(server, config, "forget", "--sample-id", "person-0003-fact1", "--wait",
                   "--json")
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)
    assert done["state"] == "completed" and done["accepted_seconds"] < 1.0
    assert len(done["receipt"]["request"]["sample_hashes"]) == 1

    listed = json.loads(lethe(server, config, "queue", "--json").stdout)["requests"]
    assert [(r["id"], r["state"]) for r in listed] == [(done["id"], "completed")]

    unknown = lethe(server, config, "forget", "--owner", "nobody")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "lethe: error: 404: unknown owner(s): nobody"
    server.stop()
    offline = lethe(server, config, "forget", "--owner", "person-0001")
    assert offline.returncode == 1 and "is `lethe serve` running?" in offline.stderr


def test_quarantine_gives_pending_shards_weight_zero_until_retrained(tiny_world, start_server):
    config = merge(tiny_world("hf"), forget={"quarantine": True, "worker": False})
    server = start_server(config)
    home = Path(config["home"])
    accepted = api(server, "POST", "/v1/forget", json={"owner": "person-0001"}).json()["id"]
    store = ShardStore(home / "apa")
    [shard] = store.lineage.shards_of(store.lineage.owner_sample_ids("person-0001"))
    assert store.lineage.quarantine_holds() == {accepted: {shard}}
    query = SentenceEmbedder()([fact("person-0001")[0]])[0]
    assert shard not in store.weights(query, RouteConfig(scheme="semantic", top_m=1))

    Worker(sqlite_queue(home / "forget.db"), home / "apa", lease_seconds=5, retry_after=0,
           retry_max=1, poll_seconds=0.1).run_once()
    assert store.lineage.quarantine_holds() == {}
    server.stop()


def files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root: (size, mtime) by path, except SQLite's shared-memory index and an
    empty write-ahead log: each connection (the worker polls the queue) creates both and the
    last to close deletes them, and neither holds data; a log with frames in it is a write."""
    found = {}
    for p in root.rglob("*"):
        try:
            info = p.stat()
        except FileNotFoundError:  # a sidecar deleted since rglob listed it
            if p.name.endswith(("-shm", "-wal")):
                continue
            raise
        if not stat.S_ISREG(info.st_mode) or p.name.endswith("-shm") \
                or (p.name.endswith("-wal") and info.st_size == 0):
            continue
        found[str(p.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return found


@pytest.mark.parametrize("engine,mixing", [("vllm", "in-engine"), ("hf", "in-engine"),
                                           ("hf", "materialised")])
def test_in_engine_mixtures_write_nothing_per_request_and_outlive_a_retrain(
        tiny_world, start_server, engine, mixing):
    # Every shard weighs in, unrounded: each question has a weight vector of its own.
    config = merge(tiny_world(engine), route={"top_m": None, "quantum": 0.0, "tau": 5.0,
                                              "mixing": mixing})
    server, home = start_server(config), Path(config["home"])
    questions = [fact(f"person-000{i}", j)[0] for i in range(4) for j in range(2)]
    ask(server, questions[0])  # the first request builds what its set of shard versions needs
    before, built = files(home), metric(server, "lethe:mixture_cache_misses_total")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: ask(server, q), questions[1:]))
    assert all(answers)
    if mixing == "materialised":  # the contrast: a mixture on disk per weight vector
        assert metric(server, "lethe:mixture_cache_misses_total") == built + len(questions) - 1
        assert len(files(home)) > len(before)
        return
    assert files(home) == before  # nothing written under the data directory
    assert metric(server, "lethe:mixture_cache_misses_total") == built

    # A retrain publishes a new shard version under load: no request fails; new requests use
    # the new set of versions (one new stack), the old stack is deleted once no request holds it.
    request = api(server, "POST", "/v1/forget", json={"owner": "person-0002"}).json()
    asked = 0
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        while api(server, "GET", f"/v1/forget/{request['id']}").json()["state"] != "completed":
            assert all(pool.map(lambda q: ask(server, q), questions[:4]))
            asked += 4
    assert asked
    time.sleep(1)  # the server sweeps superseded mixtures when it syncs (every 0.2 s)
    assert all(ask(server, q) for q in questions)
    stacks = list((home / "apa" / "mixtures").glob("*/mix-*"))
    assert len(stacks) == 1, stacks
    assert metric(server, "lethe:mixture_cache_misses_total") == built + 1
