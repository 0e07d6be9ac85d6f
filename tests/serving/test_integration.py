"""The real default model (SmolLM2-135M-Instruct) behind `lethe serve`, on both engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from serving.engines import Sampling
from tests.serving.engines.test_engines import Harness

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


@pytest.fixture(scope="module", params=["hf", "vllm"])
def server(request, start_module_server, real_model_dir):
    server = start_module_server({"engine": {"name": request.param}})
    yield server
    server.stop()


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


def test_engines_are_token_identical_under_greedy_fp32(real_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    prompts = [QUESTION, "Write a haiku about the sea.", "List three prime numbers."]
    ids = [tokenizer.encode(tokenizer.apply_chat_template(
        [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False),
        add_special_tokens=False) for p in prompts]
    outputs = {}
    for name in ("hf", "vllm"):
        engine = Harness(name, real_model_dir, max_model_len=2048)
        try:
            results = engine.generate(*(engine.request(i, Sampling(max_tokens=32, temperature=0))
                                        for i in ids))
        finally:
            engine.close()
        outputs[name] = [r[0][0] for r in results]
    assert all(len(tokens) > 4 for tokens in outputs["hf"])
    assert outputs["vllm"] == outputs["hf"]
