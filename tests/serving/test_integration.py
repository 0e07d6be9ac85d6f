"""The real default model (SmolLM2-135M-Instruct) behind `lethe serve`, on both engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"


def test_model_prepare_is_done_once_with_a_provenance_record(real_model_dir, lethe_home):
    env = {**os.environ, "LETHE_HOME": str(lethe_home)}
    run = lambda: subprocess.run([sys.executable, "-m", "serving.cli", "model", "prepare", "--json"],  # noqa: E731
                                 capture_output=True, text=True, env=env, timeout=300)
    first, second = run(), run()
    assert first.returncode == 0, first.stderr
    record = json.loads(first.stdout)
    assert record["path"] == str(real_model_dir)
    assert len(record["source_sha256"]) == 64 and len(record["weights_sha256"]) == 64
    assert json.loads(second.stdout) == record  # prepared once: the second call changes nothing


@pytest.fixture(scope="module")
def servers(start_module_server, real_model_dir) -> dict:
    """`lethe serve` on each engine, both up for the module: the tests ask each, and one
    compares them (an engine more would be a vLLM start more: ~45 s of CPU)."""
    return {name: start_module_server({"engine": {"name": name}}) for name in ("hf", "vllm")}


@pytest.fixture(params=["hf", "vllm"])
def server(request, servers):
    return servers[request.param]


def test_lists_the_default_model(server):
    assert [m.id for m in server.client().models.list().data] == [MODEL]


def test_chat_answers_sensibly_streamed_and_not(server):
    client = server.client()
    messages = [{"role": "user", "content": QUESTION}]
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24,
                                           temperature=0)
    streamed = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24,
                                              temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert "Paris" in plain.choices[0].message.content
    assert text == plain.choices[0].message.content


def test_engines_are_token_identical_under_greedy_fp32(servers):
    """As a client gets them: the same greedy completion, token for token (the same text from
    the same number of tokens), from vLLM and from transformers, both in float32."""
    prompts = [QUESTION, "Write a haiku about the sea.", "List three prime numbers."]
    outputs = {}
    for name, server in servers.items():
        answers = [server.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=32, temperature=0)
            for p in prompts]
        outputs[name] = [(a.choices[0].message.content, a.usage.completion_tokens)
                         for a in answers]
    assert all(tokens > 4 for _, tokens in outputs["hf"])
    assert outputs["vllm"] == outputs["hf"]
