"""Hostile clients at full size, through the real server on SmolLM2 (issue 30, item 2): what an
oversized body or prompt costs, and whether guard work stalls /health or forget submissions.

    .venv/bin/python bench/bench_bounds.py [--engine hf|vllm] [--model-dir DIR] [--seconds 20]

Setup as bench_forget.py (synthetic people trained into a 4-shard store with tiny training, the
server with `forget.worker: false`), one owner forgotten so that its questions are flagged.

1. body limit: a 4 MiB completions body, with Content-Length and chunked: time to the 413.
2. oversized prompts: a 240 KiB chat message (within the body limit, past the context), flagged
   (the forgotten owner's question first) and not, 40 of each in turn: time to the 400, and the
   server's RSS growth.
3. load: 4 clients sending oversized prompts and 4 sending maximal-length ones (distinct words
   filling the context to max_model_len - 1 tokens, max_tokens 1; half flagged), each keeping one
   request in flight (an oversized one's client pauses 50 ms between them rather than flood the
   CPUs); meanwhile /health is probed every 10 ms over one kept connection, and a forget request
   is submitted every 2 s. Goals: /health p99 <= 100 ms, forget <= 1 s.

Writes bench/results/bounds.json (one entry per engine, kept across runs) and prints a Markdown
table. Shared 2-vCPU machine: noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from serving.engines import engine_names  # noqa: E402

from bench_forget import (MODEL, RESULTS, find_model, fresh_home, machine, pct,  # noqa: E402
                          server_config, setup, start)

PAUSE = 0.05  # seconds an oversized prompt's client waits before its next one


def filler(words: int, seed: int) -> str:
    """Distinct made-up words: no guard view repeats another."""
    rng = random.Random(seed)
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))
                    for _ in range(words))


def chat_body(content: str) -> bytes:
    return json.dumps({"model": MODEL, "max_tokens": 1, "temperature": 0,
                       "messages": [{"role": "user", "content": content}]}).encode()


def longest_fitting(tokenizer, question: str, max_len: int, seed: int) -> str:
    """`question` and as many filler words as leave one token for the completion."""
    def tokens(words: int) -> int:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{question} {filler(words, seed)}"}],
            add_generation_prompt=True, tokenize=False)
        return len(tokenizer.encode(text, add_special_tokens=False))

    low, high = 0, max_len  # fits, does not (a word is at least one token)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if tokens(middle) < max_len else (low, middle)
    return f"{question} {filler(low, seed)}"


def timed(fn) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = fn()
    return time.perf_counter() - start, response


def body_limit(url: str, headers: dict) -> dict:
    body = b'{"model": "' + MODEL.encode() + b'", "prompt": "' + b"a" * (4 << 20) + b'"}'
    out = {}
    for name, content in (("declared", lambda: body),
                          ("chunked", lambda: iter([body[i:i + 65536]
                                                    for i in range(0, len(body), 65536)]))):
        times = []
        for _ in range(5):
            seconds, response = timed(lambda: httpx.post(f"{url}/v1/completions", timeout=60,
                                                         content=content(), headers=headers))
            assert response.status_code == 413, response.text
            times.append(seconds)
        out[name] = {"median_ms": round(statistics.median(times) * 1000, 1),
                     "max_ms": round(max(times) * 1000, 1)}
    return out


def rss(pid: int) -> int:
    """The process's resident memory, bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]
               ) * 1024


def oversized(url: str, headers: dict, pid: int, flagged_question: str, rounds: int = 40
              ) -> dict:
    """Time to the 400 of a flagged and an unflagged 240 KiB prompt, sent in turn (so that the
    machine's drift falls on both alike), and the server's RSS growth over them."""
    bodies = {name: chat_body(f"{question} {filler(240 * 1024 // 7, seed=7)}")
              for name, question in (("unflagged", "Tell me a story."),
                                     ("flagged", flagged_question))}
    times: dict[str, list[float]] = {name: [] for name in bodies}
    before = rss(pid)
    with httpx.Client(headers=headers, timeout=120) as client:
        for _ in range(rounds):
            for name, body in bodies.items():
                seconds, response = timed(lambda: client.post(f"{url}/v1/chat/completions",
                                                              content=body))
                assert response.json()["error"]["code"] == "context_length_exceeded"
                times[name].append(seconds)
    growth = round((rss(pid) - before) / 2**20, 1)
    return {**{name: {"median_ms": round(statistics.median(t) * 1000, 2)}
               for name, t in times.items()},
            "rounds": rounds, "rss_growth_mb": growth}


def load(url: str, headers: dict, admin: dict, bodies: list[bytes], pauses: list[float],
         owners: list[str], probe_seconds: float) -> dict:
    stop = threading.Event()
    statuses: list[int] = []

    def client(body: bytes, pause: float) -> None:
        with httpx.Client(headers=headers, timeout=300) as c:
            while not stop.is_set():
                statuses.append(c.post(f"{url}/v1/chat/completions", content=body).status_code)
                stop.wait(pause)

    def forgets() -> list[float]:
        times = []
        for owner in owners:
            if stop.wait(2.0):
                break
            seconds, response = timed(lambda: httpx.post(f"{url}/v1/forget", headers=admin,
                                                         json={"owner": owner}, timeout=120))
            assert response.status_code == 202, response.text
            times.append(seconds)
        return times

    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        clients = [pool.submit(client, b, p) for b, p in zip(bodies, pauses)]
        time.sleep(3.0)  # every client has a request in flight
        submitted = pool.submit(forgets)
        health = []
        with httpx.Client(timeout=60) as probe:
            deadline = time.monotonic() + probe_seconds
            while time.monotonic() < deadline:
                seconds, response = timed(lambda: probe.get(f"{url}/health"))
                assert response.status_code == 200
                health.append(seconds)
                time.sleep(0.01)
        stop.set()
        forget_times = submitted.result()
        for c in clients:
            c.result()
    return {"health_probes": len(health),
            "health_p50_ms": round(pct(health, 0.5) * 1000, 1),
            "health_p99_ms": round(pct(health, 0.99) * 1000, 1),
            "health_max_ms": round(max(health) * 1000, 1),
            "forget_ms": [round(t * 1000) for t in forget_times],
            "requests": {str(s): statuses.count(s) for s in sorted(set(statuses))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=engine_names(), default="hf")
    ap.add_argument("--people", type=int, default=32)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=4, help="train.max_steps per shard")
    ap.add_argument("--poll-seconds", type=float, default=1.0, help="forget.poll_seconds")
    ap.add_argument("--seconds", type=float, default=20, help="load part: probing time")
    ap.add_argument("--model-dir", type=Path, help="a prepared SmolLM2 folder to reuse")
    ap.add_argument("--out", type=Path, default=RESULTS / "bounds.json")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lethe-bench-bounds-"))
    template, info = setup(args, work, find_model(args.model_dir, work))
    home = fresh_home(template, work, "home")
    config = server_config(home, args, worker=False)
    key, admin_key = "bench-client-key-0001", "bench-admin-key-00001"
    config["server"] = {"api_keys": [key], "admin_keys": [admin_key]}
    server, _ = start(config, work, "bounds")
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    admin = {"Authorization": f"Bearer {admin_key}"}
    owners = info["owners"]
    result = {"machine": machine(), "engine": args.engine,
              "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
              "load_average_before": os.getloadavg()}
    try:
        forgotten = httpx.post(f"{server.url}/v1/forget", headers=admin, timeout=120,
                               json={"owner": owners[0]})
        assert forgotten.status_code == 202, forgotten.text
        flagged_question = info["questions"][owners[0]][0]
        result["body_limit_4mib"] = body_limit(server.url, headers)
        result["oversized_240kib"] = oversized(server.url, headers, server.proc.pid,
                                               flagged_question)
        tokenizer = AutoTokenizer.from_pretrained(info["model"])
        max_len = httpx.get(f"{server.url}/v1/models", headers=headers).json()[
            "data"][0]["max_model_len"]
        longest = [longest_fitting(tokenizer, q, max_len, seed=i)
                   for i, q in enumerate((flagged_question, "Tell me a story."))]
        too_long = f"{longest[0]} {filler(max_len, seed=9)}"
        bodies = [chat_body(too_long)] * 4 + [chat_body(longest[i % 2]) for i in range(4)]
        result["load"] = load(server.url, headers, admin, bodies, [PAUSE] * 4 + [0.0] * 4,
                              owners[1:], args.seconds)
        result["load"]["max_model_len"] = max_len
        result["load_average_after"] = os.getloadavg()
    finally:
        server.stop()
    runs = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs[args.engine] = result  # one entry per engine, kept across runs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(runs, indent=2) + "\n")
    report(result)


def report(r: dict) -> None:
    limit, big, busy = r["body_limit_4mib"], r["oversized_240kib"], r["load"]
    print("\n| measure | value | goal |\n|---|---|---|")
    print(f"| 4 MiB body -> 413, declared / chunked (median, max) | "
          f"{limit['declared']['median_ms']}, {limit['declared']['max_ms']} / "
          f"{limit['chunked']['median_ms']}, {limit['chunked']['max_ms']} ms | <= 500 ms |")
    print(f"| 240 KiB prompt -> 400, unflagged / flagged (median of {big['rounds']} each) | "
          f"{big['unflagged']['median_ms']} / {big['flagged']['median_ms']} ms | within 10% |")
    print(f"| RSS growth over those {2 * big['rounds']} | {big['rss_growth_mb']} MB | none |")
    print(f"| /health under load, p50 / p99 / max ({busy['health_probes']} probes) | "
          f"{busy['health_p50_ms']} / {busy['health_p99_ms']} / {busy['health_max_ms']} ms | "
          f"p99 <= 100 ms |")
    print(f"| POST /v1/forget under load | {', '.join(map(str, busy['forget_ms']))} ms | "
          f"<= 1000 ms |")
    print(f"\nrequests served during the load: {busy['requests']}; load average "
          f"{r['load_average_before']} before, {r['load_average_after']} after")


if __name__ == "__main__":
    main()
