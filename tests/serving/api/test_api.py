"""The OpenAI-compatible API, through a real `lethe serve` and the official openai client.

hf engine on the tiny model (fast); the real model and the vLLM engine are in test_integration.py.
"""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import pytest
from starlette.requests import Request

from serving.api.app import _tenant

KEY, ADMIN = "test-key-0123456789", "test-admin-key-0123"  # >= 16 chars
MODEL = "tiny"
MAX_LEN = 256


@pytest.fixture(scope="module")
def server(start_module_server, tiny_model_dir):
    return start_module_server({
        "model": {"source": str(tiny_model_dir), "name": MODEL, "max_model_len": MAX_LEN},
        "engine": {"name": "hf"},
        "server": {"api_keys": [KEY], "admin_keys": [ADMIN]},
    })


@pytest.fixture(scope="module")
def client(server):
    return server.client(KEY)


def chat(client, content="Where does Kalo Venmi live?", **kw):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kw)


def post(server, path, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"}
    if isinstance(body, (bytes, str)):
        return httpx.post(server.url + path, content=body, headers={**headers,
                          "Content-Type": "application/json"}, timeout=60, **kw)
    return httpx.post(server.url + path, json=body, headers=headers, timeout=60, **kw)


def test_models_lists_the_configured_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_completion_has_a_choice_and_token_usage(client):
    response = chat(client, max_tokens=8, temperature=0)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 0
    assert 0 < response.usage.completion_tokens <= 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_streamed_chat_equals_unstreamed_and_ends_with_usage(client):
    plain = chat(client, max_tokens=10, temperature=0)
    chunks = list(chat(client, max_tokens=10, temperature=0, stream=True,
                       stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == plain.usage.completion_tokens


def test_stream_ends_with_done_marker(server):
    response = post(server, "/v1/completions", {"model": MODEL, "prompt": "Where", "max_tokens": 3,
                                                "stream": True})
    events = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and len(events) >= 2


def test_completions_with_several_prompts_and_n(client):
    response = client.completions.create(model=MODEL, prompt=["Where does", "What pet"],
                                         max_tokens=4, temperature=1.0, n=2, seed=1)
    assert sorted(c.index for c in response.choices) == [0, 1, 2, 3]
    assert response.usage.completion_tokens <= 16


def test_seed_makes_sampling_reproducible(client):
    first = chat(client, max_tokens=8, temperature=1.0, seed=42)
    second = chat(client, max_tokens=8, temperature=1.0, seed=42)
    assert first.choices[0].message.content == second.choices[0].message.content


def test_stop_string_is_not_in_the_output(client):
    full = client.completions.create(model=MODEL, prompt="Where does", max_tokens=12,
                                     temperature=0).choices[0].text
    stop = full[4:6]
    cut = client.completions.create(model=MODEL, prompt="Where does", max_tokens=12,
                                    temperature=0, stop=[stop]).choices[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_concurrent_requests_all_succeed(client):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: chat(client, f"What pet does person {i} have?",
                                               max_tokens=6, temperature=0), range(8)))
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in results)


def test_every_response_has_a_request_id(server):
    assert httpx.get(server.url + "/health").headers["x-request-id"]
    response = post(server, "/v1/models", {}, key="wrong")
    assert response.headers["x-request-id"]
    echoed = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}",
                                                           "X-Request-Id": "abc123"})
    assert echoed.headers["x-request-id"] == "abc123"


# --- errors: OpenAI's shape and status, and the server keeps serving ------------------------


def assert_error(response, status, param=None, code=None, error_type="invalid_request_error"):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type and error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code


@pytest.mark.parametrize("body,status,param,code", [
    (b'{"model": "tiny", "prompt": ', 400, None, "invalid_json"),
    ({"model": "gpt-nope", "prompt": "hi"}, 404, "model", "model_not_found"),
    ({"model": MODEL, "prompt": "hi " * 300, "max_tokens": 4}, 400, "prompt", "context_length_exceeded"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": MAX_LEN}, 400, "prompt", "context_length_exceeded"),
    ({"model": MODEL, "prompt": "hi", "temperature": -1}, 400, "temperature", None),
    ({"model": MODEL, "prompt": "hi", "top_p": 0}, 400, "top_p", None),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens", None),
    ({"model": MODEL, "prompt": "hi", "n": 2, "temperature": 0}, 400, "n", None),
    ({"model": MODEL, "prompt": "hi", "n": 2, "temperature": 1e-9}, 400, "n", None),
    ({"model": MODEL, "prompt": "hi", "stop": ""}, 400, "stop", None),
    ({"model": MODEL, "prompt": "hi", "stop": ["x", ""]}, 400, "stop", None),
    ({"model": MODEL, "prompt": [99999]}, 400, "prompt", None),
    ({"model": MODEL, "prompt": ""}, 400, "prompt", None),
    ({"model": MODEL}, 400, "prompt", None),
    ({"model": MODEL, "prompt": "hi", "logprobs": 2}, 400, "logprobs", None),
])
def test_bad_completion_requests_get_openai_errors_and_the_server_survives(
        server, client, body, status, param, code):
    assert_error(post(server, "/v1/completions", body), status, param, code)
    assert client.completions.create(model=MODEL, prompt="Where", max_tokens=2).choices


@pytest.mark.parametrize("body,param", [
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages.0.content.0.type"),
])
def test_bad_chat_requests_name_the_parameter(server, body, param):
    assert_error(post(server, "/v1/chat/completions", body), 400, param)


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "hi " * 300, max_tokens=4)
    assert info.value.code == "context_length_exceeded"


def test_a_wrong_or_missing_key_gets_401_authentication_error(server):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    assert_error(post(server, "/v1/completions", body, key="wrong"), 401,
                 error_type="authentication_error", code="invalid_api_key")
    no_key = httpx.post(server.url + "/v1/completions", json=body)
    assert_error(no_key, 401, error_type="authentication_error")
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").models.list()


def test_health_needs_no_key(server):
    assert httpx.get(server.url + "/health").status_code == 200


def test_operator_paths_need_the_admin_key(server):
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
        for headers in ({}, {"Authorization": f"Bearer {KEY}"}):  # none, or a client's key
            response = httpx.get(server.url + path, headers=headers)
            assert response.status_code == 401, path
            assert response.json()["error"]["type"] == "authentication_error"
        admin = httpx.get(server.url + path, headers={"Authorization": f"Bearer {ADMIN}"})
        assert admin.status_code == 200, path


def test_metrics_count_requests_tokens_and_latency(server, client):
    client.completions.create(model=MODEL, prompt="Where", max_tokens=3, temperature=0)
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    metrics = {line.split(" ")[0]: float(line.split(" ")[-1])
               for line in text.splitlines() if line.startswith("lethe:")}
    assert metrics['lethe:requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert metrics["lethe:generation_tokens_total"] >= 1
    assert metrics["lethe:prompt_tokens_total"] >= 1
    assert metrics["lethe:time_to_first_token_seconds_count"] >= 1
    assert metrics["lethe:e2e_request_latency_seconds_count"] >= 1


def test_each_api_key_is_a_tenant_and_goes_no_further():
    # The engine salts its prefix cache with the tenant (serving/engines/vllm.py): one per key,
    # the key itself never passed on; without api_keys every client is one tenant.
    def request(key: str) -> Request:
        return Request({"type": "http", "headers": [(b"authorization", f"Bearer {key}".encode())]})

    keys = ["first-tenant-key-01", "second-tenant-key-2"]
    first, second = (_tenant(request(k), keys) for k in keys)
    assert first != second and first == _tenant(request(keys[0]), keys)
    assert keys[0] not in first and keys[1] not in second
    assert _tenant(request(keys[0]), []) is None
