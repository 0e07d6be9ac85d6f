"""Fuzz the API through the real server (issue 30, item 3): no client input may get a 5xx.

    make fuzz    # make bench-setup (schemathesis, hypothesis), then this script
    .venv/bin/python bench/bench_fuzz.py [--engine hf vllm] [--requests 2000]
        [--max-examples 50] [--seed 0] [--model-dir DIR]

Per engine, a home as bench_forget.py trains it (synthetic people in a 2-shard store, a few
steps), served on the default model with `forget.worker: false` (forget requests are stored and
guarded, never retrained: the fuzz is about input, not about retraining) and one owner's
request pending, so that the guard flags some prompts. Then:

1. schemathesis over the server's own /openapi.json, restricted to the chat, completions and
   forget endpoints, phases coverage, fuzzing and stateful (each response checked with
   `not_a_server_error`), with the admin key.
2. `--requests` requests that hypothesis generates valid but odd (any Unicode but lone
   surrogates, control and zero-width characters, every role, text parts, token-id prompts,
   stop lists, the extremes of temperature, top_p, seed and n, streaming with and without
   usage; forget bodies with odd owners, ids and prompts), sent with httpx. max_tokens stays
   1-3, so a request costs milliseconds of generation. Each status is counted; a 5xx, or an
   error event inside a stream, is a failure and is printed with its body.

Writes bench/results/fuzz.json and prints a table; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from extras import require_extras  # noqa: E402

require_extras("schemathesis", "hypothesis")

import httpx  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from serving.engines import engine_names  # noqa: E402

from bench_forget import (MODEL, RESULTS, find_model, fresh_home, machine,  # noqa: E402
                          server_config, setup, start)

ADMIN = "fuzz-admin-key-0123456789"  # >= 16 characters, as server.admin_keys requires
PATHS = "^/v1/(chat/completions|completions|forget)"  # what the fuzz covers (issue 30)

# --- valid but odd requests ----------------------------------------------------------------

# Any code point but lone surrogates (JSON cannot carry them as text; tests/serving/api covers
# them), weighted towards what breaks text handling: controls, zero-width, right-to-left, NUL.
ODD = st.sampled_from(["\x00", "\u200b", "\u200d", "\u202e", "\ufeff", "\r\n", "\t", "\x1b[0m",
                       "\U0001f600", "\u0301", "\uffff", "\\", '"', "</s>", "<|im_end|>"])
TEXT = st.lists(st.one_of(st.characters(exclude_categories=("Cs",)), ODD), max_size=60).map(
    "".join)
CONTENT = st.one_of(TEXT, st.lists(st.builds(lambda t: {"type": "text", "text": t}, TEXT),
                                   min_size=1, max_size=3))
MESSAGE = st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant", "developer"]), "content": CONTENT})
STOP = st.one_of(st.none(), TEXT, st.lists(TEXT, max_size=4))


def sampling(stream: bool) -> st.SearchStrategy[dict]:
    fields = {
        "model": st.just(MODEL),
        "max_tokens": st.integers(1, 3),
        "temperature": st.one_of(st.just(0.0), st.just(2.0), st.floats(0, 2)),
        "top_p": st.one_of(st.just(1.0), st.floats(1e-6, 1.0)),
        "seed": st.one_of(st.none(), st.just(0), st.just(2**63 - 1), st.integers(0, 2**63 - 1)),
        "stop": STOP,
        "n": st.integers(1, 2),
        "user": st.one_of(st.none(), TEXT),
        "stream": st.just(stream),
    }
    if stream:
        fields["stream_options"] = st.one_of(st.none(), st.fixed_dictionaries(
            {"include_usage": st.booleans()}))
    return st.fixed_dictionaries(fields)


def chat_body() -> st.SearchStrategy[dict]:
    return st.booleans().flatmap(lambda stream: st.tuples(
        sampling(stream), st.lists(MESSAGE, min_size=1, max_size=4))).map(
        lambda pair: {**pair[0], "messages": pair[1]})


def completion_body(vocab: int) -> st.SearchStrategy[dict]:
    ids = st.lists(st.integers(0, vocab - 1), min_size=1, max_size=40)
    prompt = st.one_of(TEXT.filter(bool), st.lists(TEXT.filter(bool), min_size=1, max_size=3),
                       ids, st.lists(ids, min_size=1, max_size=2))
    return st.booleans().flatmap(lambda stream: st.tuples(sampling(stream), prompt)).map(
        lambda pair: {**pair[0], "prompt": pair[1]})


def forget_body(owners: list[str]) -> st.SearchStrategy[dict]:
    owner = st.one_of(st.sampled_from(owners), TEXT.filter(bool))
    ids = st.lists(st.one_of(TEXT.filter(bool), st.sampled_from([f"{o}-fact0" for o in owners])),
                   min_size=1, max_size=5)
    target = st.one_of(st.builds(lambda o: {"owner": o}, owner),
                       st.builds(lambda i: {"sample_ids": i}, ids))
    return st.tuples(target, st.lists(TEXT.filter(bool), max_size=3)).map(
        lambda pair: {**pair[0], "prompts": pair[1]})


def stream_error(response: httpx.Response) -> str | None:
    """An error event inside a 200 stream (the status was sent before it), or None."""
    for line in response.text.splitlines():
        if line.startswith("data: {") and '"error"' in line:
            return line
    return None


def odd_requests(url: str, requests: int, seed_value: int, owners: list[str], vocab: int) -> dict:
    statuses: Counter[str] = Counter()
    failures: list[dict] = []
    bodies = {"chat": chat_body(), "completions": completion_body(vocab),
              "forget": forget_body(owners)}
    endpoint = st.sampled_from(list(bodies)).flatmap(
        lambda name: st.tuples(st.just(name), bodies[name]))
    paths = {"chat": "/v1/chat/completions", "completions": "/v1/completions",
             "forget": "/v1/forget"}

    with httpx.Client(base_url=url, timeout=120,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        @seed(seed_value)
        @settings(max_examples=requests, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(endpoint)
        def send(case):
            name, body = case
            response = client.post(paths[name], json=body)
            statuses[f"{name} {response.status_code}"] += 1
            error = stream_error(response) if response.status_code == 200 else None
            if response.status_code >= 500 or error:
                failures.append({"endpoint": name, "status": response.status_code,
                                 "body": body, "response": (error or response.text)[:2000]})

        send()
    return {"sent": sum(statuses.values()), "statuses": dict(sorted(statuses.items())),
            "failures": failures}


def schemathesis_run(url: str, max_examples: int, seed_value: int, report: Path, work: Path
                     ) -> dict:
    """schemathesis' CLI; it keeps a cache of what it found in its working folder: `work`."""
    cli = Path(sys.executable).with_name("schemathesis")
    command = [str(cli), "run", f"{url}/openapi.json", "--phases", "coverage,fuzzing,stateful",
               "--checks", "not_a_server_error", "--include-path-regex", PATHS,
               "--max-examples", str(max_examples), "--seed", str(seed_value),
               "--header", f"Authorization: Bearer {ADMIN}", "--no-color"]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, cwd=work)
    report.write_text(run.stdout + run.stderr)
    command[command.index(f"Authorization: Bearer {ADMIN}")] = "Authorization: Bearer ***"
    return {"command": " ".join(command), "exit": run.returncode,
            "seconds": round(time.perf_counter() - started, 1),
            "summary": (run.stdout + run.stderr).strip().splitlines()[-25:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", nargs="+", choices=engine_names(), default=engine_names())
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--max-examples", type=int, default=50,
                        help="schemathesis' examples per operation and phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, help="a prepared SmolLM2 folder to reuse")
    parser.add_argument("--people", type=int, default=8)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--poll-seconds", type=float, default=0.5)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    results = {"machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()},
               "engines": {}}
    failed = False
    def on(engine: str) -> argparse.Namespace:  # bench_forget's helpers take one engine
        return argparse.Namespace(**{**vars(args), "engine": engine})

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        template, info = setup(on(args.engine[0]), run_dir, find_model(args.model_dir, run_dir))
        vocab = len(AutoTokenizer.from_pretrained(info["model"]))
        for engine in args.engine:
            home = fresh_home(template, run_dir, f"home-{engine}")
            config = server_config(home, on(engine), worker=False)
            config["model"] = {"max_model_len": 512}
            config["server"] = {"admin_keys": [ADMIN]}
            server, _ = start(config, run_dir, engine)
            try:
                pending = httpx.post(f"{server.url}/v1/forget", json={"owner": info["owners"][0]},
                                     headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
                if pending.status_code != 202:
                    raise SystemExit(f"{engine}: the pending request got {pending.status_code}")
                report = RESULTS / f"fuzz-schemathesis-{engine}.txt"
                RESULTS.mkdir(exist_ok=True)
                schema = schemathesis_run(server.url, args.max_examples, args.seed, report, run_dir)
                odd = odd_requests(server.url, args.requests, args.seed, info["owners"], vocab)
                log = server.log.read_text()
            finally:
                server.stop()
            tracebacks = log.count("Traceback (most recent call last)")
            results["engines"][engine] = {"schemathesis": schema, "odd_requests": odd,
                                          "server_tracebacks": tracebacks}
            failed |= schema["exit"] != 0 or bool(odd["failures"]) or tracebacks > 0
            if tracebacks:
                shutil.copy(server.log, RESULTS / f"fuzz-server-{engine}.log")
    (RESULTS / "fuzz.json").write_text(json.dumps(results, indent=2))
    print("| engine | schemathesis | odd requests | 5xx or stream errors | server tracebacks |\n"
          "|---|---|---|---|---|")
    for engine, r in results["engines"].items():
        print(f"| {engine} | exit {r['schemathesis']['exit']} in {r['schemathesis']['seconds']} s"
              f" | {r['odd_requests']['sent']} | {len(r['odd_requests']['failures'])} "
              f"| {r['server_tracebacks']} |")
    for engine, r in results["engines"].items():
        for failure in r["odd_requests"]["failures"][:5]:
            print(f"{engine}: {json.dumps(failure)[:1500]}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
