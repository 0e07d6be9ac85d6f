"""Server throughput and latency per engine and concurrency, through the OpenAI API.

    .venv/bin/python bench/bench_serving.py [--engines hf vllm] [--concurrency 1 8] [--requests 16]

Starts `lethe serve` on the default model (SmolLM2-135M-Instruct, fp32) once per engine, sends
streamed chat requests with the official openai client at each concurrency, and reports
generated tokens/s (all requests together), time to first token p50/p99 and end-to-end latency
p50. Writes bench/results/serving.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from serving.engines import engine_names  # noqa: E402
from serving.launch import ServerProcess  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
TOPICS = ["the sea", "a lighthouse", "winter", "a clockmaker", "bees", "a long train journey",
          "the moon", "a city market"]


async def one_request(client, i: int, max_tokens: int) -> dict:
    started = time.perf_counter()
    first = None
    usage = None
    stream = await client.chat.completions.create(
        model=MODEL, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}],
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
    end = time.perf_counter()
    return {"ttft": first - started, "e2e": end - started, "tokens": usage.completion_tokens}


async def run_level(server: ServerProcess, concurrency: int, n_requests: int,
                    max_tokens: int) -> dict:
    client = server.client(asynchronous=True)
    gate = asyncio.Semaphore(concurrency)

    async def gated(i):
        async with gate:
            return await one_request(client, i, max_tokens)

    async with client:
        await asyncio.gather(*(one_request(client, i, 8) for i in range(2)))  # warm-up
        started = time.perf_counter()
        results = await asyncio.gather(*(gated(i) for i in range(n_requests)))
        wall = time.perf_counter() - started
    ttft = sorted(r["ttft"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "requests": n_requests,
        "generated_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2),
        "ttft_p50_s": round(statistics.median(ttft), 3),
        "ttft_p99_s": round(ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))], 3),
        "e2e_p50_s": round(statistics.median(r["e2e"] for r in results), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", choices=engine_names(), default=engine_names())
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serving.json")
    args = parser.parse_args()

    rows = []
    for engine in args.engines:
        with tempfile.TemporaryDirectory() as tmp:
            server = ServerProcess({"engine": {"name": engine}}, Path(tmp))
            try:
                for c in args.concurrency:
                    row = {"engine": engine,
                           **asyncio.run(run_level(server, c, args.requests, args.max_tokens))}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            finally:
                server.stop()

    machine = f"{platform.machine()}, {os.cpu_count()} vCPU, {platform.python_version()}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "max_tokens": args.max_tokens,
                                    "rows": rows}, indent=2) + "\n")
    print(f"\nmachine: {machine}; model {MODEL} fp32; max_tokens {args.max_tokens}; greedy\n")
    print("| engine | concurrency | requests | tokens/s | TTFT p50 (s) | TTFT p99 (s) | e2e p50 (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['concurrency']} | {r['requests']} | {r['tokens_per_s']} | "
              f"{r['ttft_p50_s']} | {r['ttft_p99_s']} | {r['e2e_p50_s']} |")


if __name__ == "__main__":
    main()
