"""What a hostile client can make the server do, through a real `lethe serve` on the tiny world:
nothing costly before the request is known to fit (body limit, early context-length check),
no stall of other clients or of forget submissions while the guard is busy, and a 4xx for
every malformed input."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from transformers import AutoTokenizer

from serving.api.serving import max_token_chars
from tests.serving.conftest import KEY, api, fact, merge, metric

# Latency bounds (413 in 0.5 s, /health and a forget within a second under load): run alone.
pytestmark = pytest.mark.latency

MODEL, MAX_LEN = "tiny", 256
FORGOTTEN = "person-0001"  # its facts are flagged once the module's forget request is in


@pytest.fixture(scope="module")
def server(tiny_world, start_module_server):
    # No worker: nothing retrains (and takes the CPU) while the tests time the server.
    server = start_module_server(merge(tiny_world(), forget={"worker": False}))
    accepted = api(server, "POST", "/v1/forget", json={"owner": FORGOTTEN})
    assert accepted.status_code == 202, accepted.text
    return server


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def post(server, path: str, body: dict, timeout: float = 60) -> httpx.Response:
    """`body` as JSON with every non-ASCII character escaped: a lone surrogate travels as
    `\\ud800`, as a hostile client would send it."""
    return httpx.post(server.url + path, content=json.dumps(body), timeout=timeout,
                      headers={"Authorization": f"Bearer {KEY}",
                               "Content-Type": "application/json"})


def chat_body(content, max_tokens: int = 1) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0}


def filler(words: int, seed: int = 0) -> str:
    """Distinct made-up words: every guard view is new (nothing deduplicates)."""
    rng = random.Random(seed)
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))
                    for _ in range(words))


def chat_tokens(tokenizer, content: str) -> int:
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                         add_generation_prompt=True, tokenize=False)
    return len(tokenizer.encode(text, add_special_tokens=False))


def longest_fitting(tokenizer, question: str, max_tokens: int = 1) -> str:
    """`question` and as much filler as still fits the context with `max_tokens`."""
    words = 1
    while chat_tokens(tokenizer, f"{question} {filler(words * 2)}") + max_tokens <= MAX_LEN:
        words *= 2
    low, high = words, words * 2  # fits, does not
    while high - low > 1:
        middle = (low + high) // 2
        fits = chat_tokens(tokenizer, f"{question} {filler(middle)}") + max_tokens <= MAX_LEN
        low, high = (middle, high) if fits else (low, middle)
    return f"{question} {filler(low)}"


def assert_error(response: httpx.Response, status: int, code: str | None, param: str | None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param,
                                                             "invalid_request_error")


# --- the body limit --------------------------------------------------------------------------


def test_a_4_mib_body_gets_413_in_half_a_second_declared_or_chunked(server):
    body = b'{"model": "tiny", "prompt": "' + b"a" * (4 << 20) + b'"}'
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for content in (body, iter([body[i:i + 65536] for i in range(0, len(body), 65536)])):
        start = time.perf_counter()
        response = httpx.post(server.url + "/v1/completions", content=content, headers=headers,
                              timeout=60)
        elapsed = time.perf_counter() - start
        assert_error(response, 413, "request_too_large", None)
        assert "1048576 bytes" in response.json()["error"]["message"]
        assert response.headers["x-request-id"]
        assert elapsed <= 0.5, elapsed
    assert post(server, "/v1/completions", {"model": MODEL, "prompt": "Where",
                                            "max_tokens": 2}).status_code == 200


# --- the context length, checked before the guard -------------------------------------------


def test_a_prompt_too_long_is_refused_before_the_guard_reads_it(server, tokenizer):
    question = fact(FORGOTTEN)[0]
    fitting = longest_fitting(tokenizer, question)
    flagged = metric(server, "lethe:guard_flagged_total")
    assert post(server, "/v1/chat/completions", chat_body(fitting)).status_code == 200
    assert metric(server, "lethe:guard_flagged_total") == flagged + 1  # the guard reads it

    bound = max_token_chars(tokenizer) * MAX_LEN
    by_chars = f"{question} {filler(bound // 5)}"  # refused on its length in characters
    by_tokens = f"{fitting} {filler(20, seed=2)}"
    assert len(by_chars) > bound > len(by_tokens)  # the latter needs the tokenizer
    for endpoint, body, param in [
        *[("/v1/chat/completions", chat_body(content), "messages")
          for content in (by_chars, by_tokens, [{"type": "text", "text": by_tokens}])],
        *[("/v1/completions", {"model": MODEL, "prompt": content, "max_tokens": 1}, "prompt")
          for content in (by_chars, by_tokens, [by_tokens])],
    ]:
        assert_error(post(server, endpoint, body), 400, "context_length_exceeded", param)
    assert metric(server, "lethe:guard_flagged_total") == flagged + 1  # never read again


def test_a_prompt_that_fits_exactly_is_served(server, tokenizer):
    content = longest_fitting(tokenizer, "Where does Kalo Venmi live?", max_tokens=4)
    response = post(server, "/v1/chat/completions", chat_body(content, max_tokens=4))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] + 4 <= MAX_LEN


# --- other clients and forget submissions while the guard is busy ---------------------------


def test_health_and_forget_answer_promptly_while_the_guard_is_busy(server, tokenizer):
    """4 oversized and 4 maximal-length prompts (of distinct words, flagged and not) in flight
    all along: /health p99 <= 100 ms, a forget submission <= 1 s. An oversized prompt is
    refused in milliseconds: its client pauses between them rather than flood the 2 vCPUs (a
    flood would measure the web framework's throughput, not the guard's reach)."""
    longest = [longest_fitting(tokenizer, q) for q in (fact(FORGOTTEN)[0], "Tell me a story.")]
    oversized = longest[0] + " " + filler(MAX_LEN, seed=1)
    bodies = [chat_body(oversized)] * 4 + [chat_body(longest[i % 2]) for i in range(4)]
    statuses: list[int] = []
    stop = threading.Event()

    def load(body: dict) -> None:
        content = json.dumps(body).encode()  # once: the clients share this process's GIL
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}",
                                   "Content-Type": "application/json"}, timeout=120) as client:
            while not stop.is_set():
                statuses.append(client.post(server.url + "/v1/chat/completions",
                                            content=content).status_code)
                stop.wait(0.05)

    with ThreadPoolExecutor(len(bodies)) as pool:
        clients = [pool.submit(load, body) for body in bodies]
        try:
            time.sleep(1.0)  # every client has a request in flight
            health = []
            with httpx.Client(timeout=30) as probe:  # a monitor's: one connection, kept
                for _ in range(100):
                    start = time.perf_counter()
                    assert probe.get(server.url + "/health").status_code == 200
                    health.append(time.perf_counter() - start)
                    time.sleep(0.01)
            start = time.perf_counter()
            accepted = api(server, "POST", "/v1/forget",
                           json={"sample_ids": ["person-0002-fact1"]})
            forget_seconds = time.perf_counter() - start
            served = statuses.count(200)
        finally:
            stop.set()
        for client in clients:
            client.result()
    assert accepted.status_code == 202, accepted.text
    assert set(statuses) == {200, 400} and served >= 2  # the guard was kept busy
    p99 = sorted(health)[int(0.99 * len(health))]
    assert p99 <= 0.1, sorted(health)
    assert forget_seconds <= 1.0, forget_seconds


# --- malformed input is a 4xx naming the field ----------------------------------------------


@pytest.mark.parametrize("role", ["system", "user", "assistant", "developer"])
def test_a_lone_surrogate_in_a_content_part_is_a_400_in_every_role(server, role):
    body = {"model": MODEL, "max_tokens": 1, "messages": [
        {"role": role, "content": [{"type": "text", "text": "\ud800 hello"}]},
        {"role": "user", "content": "hi"}]}
    assert_error(post(server, "/v1/chat/completions", body), 400, None,
                 "messages.0.content.0.text")


@pytest.mark.parametrize("part", [{"type": "text"}, {"type": "text", "text": None},
                                  {"type": "text", "text": 123},
                                  {"type": "text", "text": ["a"]}])
def test_a_content_part_without_string_text_is_a_400(server, part):
    response = post(server, "/v1/chat/completions", chat_body([part]))
    assert_error(response, 400, None, "messages.0.content.0.text")


def test_text_parts_are_served_joined(server):
    parts = [{"type": "text", "text": "Where does "}, {"type": "text", "text": "Kalo live?"}]
    joined = post(server, "/v1/chat/completions", chat_body(parts, max_tokens=4)).json()
    plain = post(server, "/v1/chat/completions", chat_body("Where does Kalo live?",
                                                           max_tokens=4)).json()
    assert joined["choices"][0]["message"] == plain["choices"][0]["message"]
    assert joined["usage"] == plain["usage"]


@pytest.mark.parametrize("prompt,param", [(["ok", "\ud800"], "prompt.1"), ("\ud800", "prompt"),
                                          ([[1, 2], [3, "x"]], "prompt.1.1")])
def test_a_validation_error_names_the_field_not_the_validator(server, prompt, param):
    response = post(server, "/v1/completions", {"model": MODEL, "prompt": prompt})
    assert_error(response, 400, None, param)
    assert "function-after" not in response.text and "list[" not in response.text

