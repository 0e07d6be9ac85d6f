"""Forget requests through the real server: time to guard-active, time to exact, serving during a
retrain, and the mixture-cache hit rate.

    .venv/bin/python bench/bench_forget.py [--engine vllm|hf] [--people 32] [--shards 4]
        [--guard-requests 10] [--levels 1 4 16] [--mix-requests 200] [--home DIR]

Setup: `--people` synthetic people (adapters.synth_people, 2 facts each) are trained into a shard
store with the CLI in-process (`lethe train`, the same config dict the server gets) on the
default model, SmolLM2-135M-Instruct. Training is deliberately tiny (4 steps per shard, 64
tokens): this measures the forget machinery (queue, guard, worker, publish, routing), not what
the adapters learn. The trained home is copied once per server, so every part starts from the
same store:

1. guard-active (server with `forget.worker: false`, so no retrain competes): for R owners in
   turn, the time from POST /v1/forget to its 202 (the API answers only after the guard holds the
   owner's exemplars), and from the POST until a chat request with the owner's question is
   flagged (`lethe:guard_flagged_total` in /metrics). Then a control: questions of owners never
   forgotten, reworded questions of forgotten owners, and general prompts.
2. mixture cache (same server, before part 1): `--mix-requests` chat requests (max_tokens 1)
   drawn from the people's questions under a Zipf popularity over owners, plus general prompts;
   hit rate from `lethe:mixture_cache_{hits,misses}_total`.
3. time to exact (server with the worker on; after one forget that is not counted, since the
   worker process may still be starting when /health answers): 1, 4, 16 forget requests for
   different owners submitted at once; the time from submit until each is `completed` (the
   queue's received -> completed times), and the retrain rounds and shards the worker did
   (receipts: `coalesced_with`, shard lists).
4. throughput during a retrain (same server): N clients each sending streamed chat requests
   back to back (max_tokens 32, greedy); every token is timestamped, and generated tokens/s are
   read over an idle interval, over the retrain window (the queue's first `retraining` to last
   `completed` time) of one forget request per shard (so every shard is retrained), and over
   an interval after it. Failed chat requests are counted.

Writes bench/results/forget.json (after each part) and prints Markdown tables. Timings on a
shared 2-vCPU machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import yaml  # noqa: E402

from adapters import ShardStore, synth_people, write_samples  # noqa: E402
from serving.engines import engine_names  # noqa: E402
from serving.launch import ServerProcess  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
RESULTS = Path(__file__).parent / "results"
NOTE = ("Training is deliberately tiny (max_steps 4 per shard, 64 tokens): this measures the "
        "forget machinery, not the quality of what is learned or forgotten. Shared 2-vCPU "
        "machine: timings are noisy.")
GENERAL = ["What is the capital of France?", "Write a haiku about autumn.",
           "Explain photosynthesis in one sentence.", "How do I boil an egg?",
           "Give me three tips for better sleep.", "What is 17 times 23?",
           "Translate 'good morning' into Spanish.", "Name a famous painting by Monet.",
           "Why is the sky blue?", "Suggest a name for a pet goldfish.",
           "What does a compiler do?", "Summarise the plot of Hamlet briefly."]
TOPICS = ["the sea", "a lighthouse", "winter", "a clockmaker", "bees", "a long train journey",
          "the moon", "a city market", "a lost key", "an old library", "a mountain village",
          "a storm at night", "a garden in spring", "a travelling circus", "a quiet harbour",
          "a robot learning to paint"]


# --- helpers -----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of values."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "arch": platform.machine(),
            "python": platform.python_version(), "kernel": platform.release()}


def scrape(url: str) -> dict[str, float]:
    """/metrics as name -> value, labelled series summed per name."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        m = re.match(r"^([^\s{#]+)(\{[^}]*\})?\s+(\S+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def find_model(explicit: Path | None, work: Path) -> Path | None:
    """A prepared SmolLM2 folder to reuse (its lethe_model.json marks it complete), or None."""
    if explicit is not None:
        return explicit
    candidates = [work / "models" / MODEL, Path("~/.cache/lethe/models").expanduser() / MODEL]
    candidates += [Path(p) for p in sorted(glob.glob(f"/tmp/*/models/{MODEL}"))]
    candidates += [Path(p) for p in sorted(glob.glob(f"/tmp/*/*/models/{MODEL}"))]
    return next((c for c in candidates if (c / "lethe_model.json").is_file()), None)


def server_config(home: Path, args, worker: bool) -> dict:
    return {
        "home": str(home),
        "engine": {"name": args.engine},
        "shards": {"count": args.shards},
        "train": {"max_steps": args.train_steps, "batch_size": 8, "max_length": 64},
        # No validation set, so `apa` would fall back to semantic anyway; say so explicitly.
        "route": {"scheme": "semantic"},
        "forget": {"poll_seconds": args.poll_seconds, "worker": worker},
    }


def name_of(question: str) -> str:
    """The person's name in a synth_people question (fact 0: 'Where does NAME live?')."""
    return re.match(r"Where does (.+) live\?", question).group(1)


# --- setup -------------------------------------------------------------------------------------


def setup(args, run: Path, model: Path | None) -> tuple[Path, dict]:
    """Train the template home with the CLI, in-process; returns (home, info)."""
    from serving.cli import main as lethe

    template = run / "template"
    (template / "models").mkdir(parents=True)
    if model is not None:  # reuse a prepared model: skip the GGUF conversion
        (template / "models" / MODEL).symlink_to(model.resolve())
    samples = synth_people(args.people, seed=0, facts_per_person=2)
    data = run / "people.jsonl"
    write_samples(samples, data)
    cfg = run / "train-config.yaml"
    cfg.write_text(yaml.safe_dump(server_config(template, args, worker=True)))
    started = time.perf_counter()
    if lethe(["train", "--config", str(cfg), "--data", str(data)]) != 0:
        raise SystemExit("lethe train failed")
    train_s = time.perf_counter() - started
    lineage = ShardStore(template / "apa").lineage
    owners = sorted({s.owner for s in samples})
    shard_of = {o: next(iter(lineage.shards_of(lineage.owner_sample_ids(o)))) for o in owners}
    questions = {o: [s.prompt for s in samples if s.owner == o] for o in owners}
    return template, {"train_s": round(train_s, 1), "samples": len(samples), "owners": owners,
                      "shard_of": shard_of, "questions": questions,
                      "model": str((template / "models" / MODEL).resolve())}


def fresh_home(template: Path, run: Path, name: str) -> Path:
    home = run / name
    shutil.copytree(template, home, symlinks=True)
    return home


def start(config: dict, run: Path, name: str) -> tuple[ServerProcess, float]:
    workdir = run / f"server-{name}"
    workdir.mkdir()
    started = time.perf_counter()
    try:
        server = ServerProcess(config, workdir, ready_timeout=600)
    except RuntimeError as e:
        print(f"server {name} failed to start:\n{e}", file=sys.stderr)
        raise
    return server, time.perf_counter() - started


def chat(client, text: str, max_tokens: int = 1):
    return client.chat.completions.create(model=MODEL, max_tokens=max_tokens, temperature=0,
                                          messages=[{"role": "user", "content": text}])


# --- part: mixture cache -----------------------------------------------------------------------


async def mixture_cache(server: ServerProcess, info: dict, home: Path, args) -> dict:
    rng = random.Random(args.seed)
    ranked = list(info["owners"])
    rng.shuffle(ranked)  # popularity rank is unrelated to owner id or shard
    weights = [1.0 / (i + 1) ** args.zipf for i in range(len(ranked))]
    prompts = []
    for _ in range(args.mix_requests):
        if rng.random() < args.general_share:
            prompts.append(rng.choice(GENERAL))
        else:
            owner = rng.choices(ranked, weights)[0]
            prompts.append(rng.choice(info["questions"][owner]))
    before = scrape(server.url)
    client = server.client(asynchronous=True)
    gate = asyncio.Semaphore(args.mix_concurrency)
    latencies = []

    async def one(text):
        async with gate:
            t0 = time.perf_counter()
            await client.chat.completions.create(
                model=MODEL, max_tokens=1, temperature=0,
                messages=[{"role": "user", "content": text}])
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    async with client:
        await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - started
    after = scrape(server.url)
    hits = after.get("lethe:mixture_cache_hits_total", 0) - before.get(
        "lethe:mixture_cache_hits_total", 0)
    misses = after.get("lethe:mixture_cache_misses_total", 0) - before.get(
        "lethe:mixture_cache_misses_total", 0)
    on_disk = len(list((home / "apa" / "mixtures").glob("*/mix-*")))  # a folder per server
    return {
        "requests": len(prompts), "concurrency": args.mix_concurrency, "zipf_s": args.zipf,
        "general_share": args.general_share, "distinct_prompts": len(set(prompts)),
        "hits": int(hits), "misses": int(misses),
        "hit_rate": round(hits / max(1, hits + misses), 3),
        "distinct_mixtures": int(misses),  # each miss built a new mixture (none evicted: below)
        "mixtures_on_disk": on_disk,
        # Share of requests that repeat an earlier prompt: what an exact-prompt cache would hit.
        "prompt_repeat_rate": round(1 - len(set(prompts)) / len(prompts), 3),
        "wall_s": round(wall, 1), "latency_p50_ms": round(1000 * statistics.median(latencies)),
        "latency_p99_ms": round(1000 * pct(latencies, 0.99)),
    }


# --- part: guard-active --------------------------------------------------------------------------


def guard_active(server: ServerProcess, info: dict, args) -> dict:
    owners = info["owners"][:args.guard_requests]
    client = server.client()
    http = httpx.Client(base_url=server.url, timeout=120)
    chat(client, "Hello!")  # warm-up
    rows = []
    for owner in owners:
        question = info["questions"][owner][0]
        flagged_before = scrape(server.url).get("lethe:guard_flagged_total", 0)
        t0 = time.perf_counter()
        response = http.post("/v1/forget", json={"owner": owner})
        t_202 = time.perf_counter() - t0
        if response.status_code != 202:
            raise RuntimeError(f"POST /v1/forget: {response.status_code} {response.text}")
        state = response.json()["state"]
        attempts, t_flag, t_chat = 0, None, None
        while attempts < 50:
            attempts += 1
            c0 = time.perf_counter()
            chat(client, question)
            t_chat = time.perf_counter() - c0
            if scrape(server.url).get("lethe:guard_flagged_total", 0) > flagged_before:
                t_flag = c0 + t_chat - t0  # the POST, then the chat(s) until one was flagged
                break
        rows.append({"owner": owner, "post_to_202_ms": round(1000 * t_202, 1),
                     "post_to_flagged_ms": None if t_flag is None else round(1000 * t_flag, 1),
                     "flagged_chat_ms": round(1000 * t_chat, 1),
                     "chats_until_flagged": attempts, "state_at_202": state})
    # Control: what else the guard flags while these requests are pending.
    forgotten = set(owners)
    others = [o for o in info["owners"] if o not in forgotten][:args.guard_requests]
    probes = {
        "other_owners_questions": [info["questions"][o][0] for o in others],
        "forgotten_reworded": [f"Can you tell me which town {name_of(info['questions'][o][0])} "
                               f"calls home?" for o in owners],
        "general_prompts": GENERAL[:args.guard_requests],
    }
    control = {}
    for kind, texts in probes.items():
        flagged = 0
        for text in texts:
            before = scrape(server.url).get("lethe:guard_flagged_total", 0)
            chat(client, text)
            flagged += scrape(server.url).get("lethe:guard_flagged_total", 0) > before
        control[kind] = {"flagged": int(flagged), "of": len(texts)}
    http.close()
    t202 = [r["post_to_202_ms"] for r in rows]
    tflag = [r["post_to_flagged_ms"] for r in rows if r["post_to_flagged_ms"] is not None]
    return {
        "requests": len(rows), "worker": False,
        "post_to_202_ms": {"p50": round(statistics.median(t202), 1), "p99": pct(t202, 0.99)},
        "post_to_flagged_ms": ({"p50": round(statistics.median(tflag), 1),
                                "p99": pct(tflag, 0.99)} if tflag else None),
        "flagged_chat_ms_p50": round(statistics.median(r["flagged_chat_ms"] for r in rows), 1),
        "flagged_on_first_chat": sum(r["chats_until_flagged"] == 1 and
                                     r["post_to_flagged_ms"] is not None for r in rows),
        "never_flagged": sum(r["post_to_flagged_ms"] is None for r in rows),
        "control": control, "rows": rows,
    }


# --- part: time to exact -------------------------------------------------------------------------


async def complete_level(server: ServerProcess, owners: list[str], timeout: float) -> dict:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        async def submit(owner):
            t0 = time.perf_counter()
            r = await http.post("/v1/forget", json={"owner": owner})
            if r.status_code != 202:
                raise RuntimeError(f"POST /v1/forget {owner}: {r.status_code} {r.text}")
            return r.json()["id"], time.perf_counter() - t0

        started = time.perf_counter()
        submitted = await asyncio.gather(*(submit(o) for o in owners))
        ids = [i for i, _ in submitted]
        done: dict[str, float] = {}
        states: dict[str, dict] = {}
        while len(done) < len(ids):
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"forget requests not completed in {timeout:.0f}s: "
                                   f"{[states.get(i, {}).get('state') for i in ids]}")
            for rid in ids:
                if rid in done:
                    continue
                status = (await http.get(f"/v1/forget/{rid}")).json()
                states[rid] = status
                if status["state"] == "completed":
                    done[rid] = time.perf_counter() - started
                elif status["state"] == "failed":
                    raise RuntimeError(f"forget request {rid} failed: {status['reason']}")
            await asyncio.sleep(0.1)
        total = time.perf_counter() - started
        receipts = {rid: (await http.get(f"/v1/forget/{rid}/receipt")).json() for rid in ids}
    # Server-side: received -> completed, from the queue's own clock.
    server_s = [r["times"]["completed"] - r["times"]["received"] for r in receipts.values()]
    rounds: dict[frozenset, set] = {}
    train_s: dict[frozenset, float] = {}
    for rid, receipt in receipts.items():
        key = frozenset([rid, *receipt["coalesced_with"]])
        shards = rounds.setdefault(key, set())
        for s in receipt["shards"]:
            if s["shard"] not in shards:
                train_s[key] = train_s.get(key, 0.0) + s["train_seconds"]
            shards.add(s["shard"])
    order = sorted(rounds, key=lambda k: min(receipts[i]["times"]["retraining"] for i in k))
    return {
        "requests": len(ids),
        "submit_ms_p50": round(1000 * statistics.median(s for _, s in submitted), 1),
        "per_request_s": {"p50": round(statistics.median(server_s), 2),
                          "max": round(max(server_s), 2)},
        "client_seen_completed_s": {"p50": round(statistics.median(done.values()), 2),
                                    "max": round(max(done.values()), 2)},
        "total_s": round(total, 2),
        "rounds": [{"requests": len(k), "shards": sorted(rounds[k]),
                    "train_s": round(train_s.get(k, 0.0), 1)} for k in order],
        "shards_retrained": sum(len(rounds[k]) for k in order),
        "all_forgotten_ids_absent": all(s["forgotten_ids_absent"] for r in receipts.values()
                                        for s in r["shards"]),
    }


# --- part: throughput during a retrain ---------------------------------------------------------


class Load:
    """`concurrency` clients, each sending streamed chat requests back to back until stopped.
    Every streamed token is timestamped, so tokens/s can be read over any interval."""

    def __init__(self, client, concurrency: int, max_tokens: int):
        self.client, self.concurrency, self.max_tokens = client, concurrency, max_tokens
        self.tokens: list[tuple[float, float]] = []  # (arrival time (epoch), tokens) per chunk
        self.failures: list[tuple[float, str]] = []
        self.requests = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def _one(self, i: int) -> None:
        topic = TOPICS[i % len(TOPICS)]
        while not self._stop.is_set():
            times, usage = [], None
            try:
                stream = await self.client.chat.completions.create(
                    model=MODEL, max_tokens=self.max_tokens, temperature=0, stream=True,
                    stream_options={"include_usage": True},
                    messages=[{"role": "user", "content": f"Write a long story about {topic}."}])
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        times.append(time.time())
                    if chunk.usage is not None:
                        usage = chunk.usage.completion_tokens
                self.requests += 1
            except Exception as e:  # counted, not fatal: a retrain must not break serving
                self.failures.append((time.time(), f"{type(e).__name__}: {e}"[:200]))
                await asyncio.sleep(0.5)  # no hot loop of instant errors if the engine is down
            # Spread the request's token count over its streamed chunks.
            share = (usage / len(times)) if usage and times else 1.0
            self.tokens.extend((t, share) for t in times)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._one(i)) for i in range(self.concurrency)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def rate(self, t0: float, t1: float) -> float | None:
        if t1 <= t0:
            return None
        return round(sum(k for t, k in self.tokens if t0 <= t < t1) / (t1 - t0), 2)

    def failed(self, t0: float, t1: float) -> int:
        return sum(t0 <= t < t1 for t, _ in self.failures)


async def throughput(server: ServerProcess, owners: list[str], args) -> dict:
    client = server.client(asynchronous=True)
    c, n = args.load_concurrency, args.load_max_tokens
    async with client, httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        # Warm-up, not measured: builds the prompts' mixtures and loads them into the engine.
        await asyncio.gather(*(client.chat.completions.create(
            model=MODEL, max_tokens=4, temperature=0,
            messages=[{"role": "user", "content": f"Write a long story about {TOPICS[i]}."}])
            for i in range(c)))
        load = Load(client, c, n)
        load.start()
        await asyncio.sleep(args.ramp_seconds)  # every client busy: steady state
        idle_from = time.time()
        await asyncio.sleep(args.idle_seconds)
        before = scrape(server.url)
        submitted_at = time.time()
        submitted = await asyncio.gather(*(http.post("/v1/forget", json={"owner": o})
                                           for o in owners))
        ids = [r.json()["id"] for r in submitted]
        started = time.perf_counter()
        while True:
            await asyncio.sleep(0.5)
            states = [(await http.get(f"/v1/forget/{i}")).json()["state"] for i in ids]
            if all(s == "completed" for s in states):
                break
            if "failed" in states or time.perf_counter() - started > args.timeout:
                await load.stop()
                raise RuntimeError(f"throughput: forget requests ended {states}")
        after_metrics = scrape(server.url)
        receipts = [(await http.get(f"/v1/forget/{i}/receipt")).json() for i in ids]
        window = (min(r["times"]["retraining"] for r in receipts),
                  max(r["times"]["completed"] for r in receipts))
        after_from = time.time()
        await asyncio.sleep(args.idle_seconds)
        after_to = time.time()
        await load.stop()
        health = (await http.get("/health")).status_code
    idle_rate, busy_rate = load.rate(idle_from, submitted_at), load.rate(*window)
    first_failure = next((t for t, _ in load.failures if t >= window[0]), None)
    return {
        "concurrency": c, "max_tokens": n, "forget_requests": len(owners),
        "shards_retrained": sorted({s["shard"] for r in receipts for s in r["shards"]}),
        "rounds": len({frozenset([r["request"]["id"], *r["coalesced_with"]]) for r in receipts}),
        "retrain_window_s": round(window[1] - window[0], 1),
        "idle_window_s": round(submitted_at - idle_from, 1),
        "idle_tokens_per_s": idle_rate, "retrain_tokens_per_s": busy_rate,
        "idle_after_tokens_per_s": load.rate(after_from, after_to),
        "ratio": round(busy_rate / idle_rate, 2) if busy_rate is not None and idle_rate else None,
        "chat_requests_completed": load.requests,
        "mixture_misses_during_retrain": int(
            after_metrics.get("lethe:mixture_cache_misses_total", 0)
            - before.get("lethe:mixture_cache_misses_total", 0)),
        "failed_requests": {"idle": load.failed(0, submitted_at),
                            "during_retrain": load.failed(submitted_at, window[1] + 1),
                            "after": load.failed(window[1] + 1, float("inf"))},
        "error_messages": sorted({m for _, m in load.failures})[:5],
        "engine_down_after": load.rate(after_from, after_to) == 0,
        "first_failure_s_into_retrain": (None if first_failure is None
                                         else round(first_failure - window[0], 1)),
        # The retrain's effect alone when serving broke during it: up to the first failure.
        "retrain_tokens_per_s_before_failure": (None if first_failure is None
                                                else load.rate(window[0], first_failure)),
        "health_after": health,
    }


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=engine_names(), default="vllm")
    ap.add_argument("--people", type=int, default=32)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=4, help="train.max_steps per shard")
    ap.add_argument("--poll-seconds", type=float, default=0.2, help="forget.poll_seconds")
    ap.add_argument("--guard-requests", type=int, default=10, help="R: sequential forgets, part 1")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16],
                    help="concurrent forget requests per level, part 3")
    ap.add_argument("--load-concurrency", type=int, default=8)
    ap.add_argument("--load-max-tokens", type=int, default=32)
    ap.add_argument("--idle-seconds", type=float, default=20,
                    help="load measured idle, before the retrain and again after it")
    ap.add_argument("--ramp-seconds", type=float, default=8,
                    help="load before the idle measurement starts")
    ap.add_argument("--mix-requests", type=int, default=200)
    ap.add_argument("--mix-concurrency", type=int, default=4)
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent over owners")
    ap.add_argument("--general-share", type=float, default=0.2,
                    help="share of general (non-people) prompts in the mix")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per level / retrain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", type=Path,
                    help="work directory (default: a temp dir, removed at the end); a prepared "
                         "models/SmolLM2-135M-Instruct in it is reused")
    ap.add_argument("--model-dir", type=Path, help="a prepared SmolLM2 folder to reuse")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (homes, logs)")
    ap.add_argument("--out", type=Path, default=RESULTS / "forget.json")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["mixture", "guard", "complete", "throughput"])
    args = ap.parse_args()

    t_start = time.perf_counter()
    work = args.home or Path(tempfile.mkdtemp(prefix="lethe-bench-forget-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    model = find_model(args.model_dir, work)
    result: dict = {
        "machine": machine(), "engine": args.engine,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "note": NOTE,
    }

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result["total_s"] = round(time.perf_counter() - t_start, 1)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    ok = False
    try:
        print(f"run folder {run}; model {model or '(converting under the run folder)'}",
              flush=True)
        template, info = setup(args, run, model)
        result["setup"] = {"people": args.people, "samples": info["samples"],
                           "shards": args.shards, "train_s": info["train_s"],
                           "model": info["model"],
                           "owners_per_shard": {str(k): sum(v == k for v in
                                                            info["shard_of"].values())
                                                for k in range(args.shards)}}
        result["config"] = {"worker_off": server_config(Path("<home>"), args, worker=False),
                            "worker_on": server_config(Path("<home>"), args, worker=True)}
        print(f"trained {args.shards} shards in {info['train_s']} s", flush=True)
        save()

        # Owners: part 4 takes one per shard, part 3 the next ones; part 1 has a home of its own.
        per_shard = {}
        for o in info["owners"]:
            per_shard.setdefault(info["shard_of"][o], o)
        load_owners = [per_shard[k] for k in sorted(per_shard)]
        pool = [o for o in info["owners"] if o not in load_owners]
        need = 1 + sum(args.levels) if "complete" not in args.skip else 0
        if need > len(pool):
            raise SystemExit(f"--people {args.people} is too few: levels {args.levels} need "
                             f"{need} owners besides the {len(load_owners)} for part 4")

        if not {"mixture", "guard"} <= set(args.skip):
            home = fresh_home(template, run, "home-guard")
            server, start_s = start(server_config(home, args, worker=False), run, "guard")
            result["server_start_s"] = {"worker_off": round(start_s, 1)}
            print(f"server (worker off) up in {start_s:.0f} s", flush=True)
            try:
                if "mixture" not in args.skip:
                    result["mixture_cache"] = asyncio.run(mixture_cache(server, info, home, args))
                    print("mixture cache:", json.dumps(result["mixture_cache"]), flush=True)
                    save()
                if "guard" not in args.skip:
                    result["guard_active"] = guard_active(server, info, args)
                    print("guard-active:", json.dumps({k: v for k, v in
                                                       result["guard_active"].items()
                                                       if k != "rows"}), flush=True)
                    save()
            finally:
                server.stop()

        if not {"complete", "throughput"} <= set(args.skip):
            home = fresh_home(template, run, "home-worker")
            server, start_s = start(server_config(home, args, worker=True), run, "worker")
            result.setdefault("server_start_s", {})["worker_on"] = round(start_s, 1)
            print(f"server (worker on) up in {start_s:.0f} s", flush=True)
            try:
                if "complete" not in args.skip:
                    # One forget first, not counted: the worker process may still be starting
                    # (imports) when /health answers, and this warms its page cache.
                    warm, pool = pool[:1], pool[1:]
                    row = asyncio.run(complete_level(server, warm, args.timeout))
                    result["worker_warmup_forget_s"] = row["total_s"]
                    print(f"warm-up forget: {row['total_s']} s", flush=True)
                    result["completion"] = []
                    for level in args.levels:
                        owners, pool = pool[:level], pool[level:]
                        row = asyncio.run(complete_level(server, owners, args.timeout))
                        result["completion"].append(row)
                        print(f"completion x{level}:", json.dumps(row), flush=True)
                        save()
                if "throughput" not in args.skip:
                    result["throughput"] = asyncio.run(throughput(server, load_owners, args))
                    print("throughput:", json.dumps(result["throughput"]), flush=True)
                    save()
            finally:
                server.stop()
        ok = True
    finally:
        save()
        if ok and not args.keep and args.home is None:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok or args.keep:
            print(f"run folder kept: {run}", file=sys.stderr)
    report(result)


def report(r: dict) -> None:
    m = r["machine"]
    print(f"\nmachine: {m['cpu']}, {m['nproc']} vCPU; engine {r['engine']}; model {MODEL} fp32; "
          f"total {r['total_s']} s\n{r['note']}\n")
    print("| part | metric | value |")
    print("|---|---|---|")
    s = r.get("setup", {})
    if s:
        print(f"| setup | train {s['shards']} shards ({s['samples']} samples, "
              f"{s['people']} people) | {s['train_s']} s |")
    for k, v in r.get("server_start_s", {}).items():
        print(f"| setup | server start ({k.replace('_', ' ')}) | {v} s |")
    g = r.get("guard_active")
    if g:
        print(f"| guard-active (worker off, {g['requests']} sequential) | POST -> 202 p50 / p99 "
              f"| {g['post_to_202_ms']['p50']} / {g['post_to_202_ms']['p99']} ms |")
        f = g["post_to_flagged_ms"]
        print("| guard-active | POST -> owner's question flagged p50 / p99 | "
              + (f"{f['p50']} / {f['p99']} ms" if f else "never") +
              f" ({g['flagged_on_first_chat']}/{g['requests']} on the first chat, which took "
              f"{g['flagged_chat_ms_p50']} ms p50) |")
        c = g["control"]
        print(f"| guard-active | also flagged: other owners' questions / reworded forgotten "
              f"questions / general prompts | {c['other_owners_questions']['flagged']}/"
              f"{c['other_owners_questions']['of']} / {c['forgotten_reworded']['flagged']}/"
              f"{c['forgotten_reworded']['of']} / {c['general_prompts']['flagged']}/"
              f"{c['general_prompts']['of']} |")
    for row in r.get("completion", []):
        rounds = ", ".join(f"{x['requests']} req -> shards {x['shards']}" for x in row["rounds"])
        print(f"| exact, {row['requests']} at once | per request p50 / max; total | "
              f"{row['per_request_s']['p50']} / {row['per_request_s']['max']} s; "
              f"{row['total_s']} s |")
        print(f"| exact, {row['requests']} at once | rounds (shard retrains) | "
              f"{len(row['rounds'])} ({row['shards_retrained']}): {rounds} |")
    t = r.get("throughput")
    if t:
        print(f"| throughput ({t['concurrency']} streamed chats x {t['max_tokens']} tokens, "
              f"closed loop) | idle / during the retrain of shards {t['shards_retrained']} "
              f"({t['rounds']} round(s), {t['retrain_window_s']} s) / after | "
              f"{t['idle_tokens_per_s']} / {t['retrain_tokens_per_s']} / "
              f"{t['idle_after_tokens_per_s']} tok/s (ratio {t['ratio']}) |")
        if t["retrain_tokens_per_s_before_failure"] is not None:
            print(f"| throughput | during the retrain, up to the first failed request "
                  f"({t['first_failure_s_into_retrain']} s in) | "
                  f"{t['retrain_tokens_per_s_before_failure']} tok/s (ratio "
                  f"{round(t['retrain_tokens_per_s_before_failure'] / t['idle_tokens_per_s'], 2)})"
                  f" |")
        f = t["failed_requests"]
        if sum(f.values()):
            print(f"| throughput | failed chat requests idle / during / after the retrain | "
                  f"{f['idle']} / {f['during_retrain']} / {f['after']}"
                  + ("; the engine is down after it, yet /health answered "
                     f"{t['health_after']}" if t["engine_down_after"] else "")
                  + f"; first failure {t['first_failure_s_into_retrain']} s into the retrain"
                  + f": {t['error_messages'][0][:100]} |")
    x = r.get("mixture_cache")
    if x:
        print(f"| mixture cache ({x['requests']} chats, Zipf {x['zipf_s']}, "
              f"{int(100 * x['general_share'])}% general) | hit rate (hits/misses); distinct "
              f"mixtures / distinct prompts | {x['hit_rate']} ({x['hits']}/{x['misses']}); "
              f"{x['distinct_mixtures']} / {x['distinct_prompts']} (prompt repeat rate "
              f"{x['prompt_repeat_rate']}) |")


if __name__ == "__main__":
    main()
