"""Does the time to first token tell a client that the guard fired? Flagged vs unflagged requests.

    .venv/bin/python bench/bench_ttft.py [--engine vllm|hf] [--rounds 40]

Set up as `lethe demo` (serving/demo.yaml): 6 fictitious people, 2 facts each, in 2 shard
adapters of SmolLM2-135M; `lethe serve` with the forget worker off, so the guard alone acts; one
owner forgotten through POST /v1/forget. One request at a time, streamed, greedy, alternating:
the forgotten owner's two questions and the same two questions about another owner of the same
shard (so both reach the same adapter), `--rounds` times before the forget request (neither
flagged: the baseline) and `--rounds` times after it (the first flagged: corrupted prompt
embeddings; the second not: token ids). Each request's verdict is read from /metrics. Reports
TTFT (request sent -> first content token) p50/p99 per group and phase, the p50 ratio of the two
owners' questions in each phase, and Mann-Whitney U p-values (after the forget: flagged vs not;
and the forgotten owner's questions before vs after). A ratio that moves between the phases, or
a small p-value after that is not there before, is time a client could read.
Writes bench/results/ttft.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from importlib import resources
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (DESIGN.md)

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from scipy.stats import mannwhitneyu  # noqa: E402

from adapters import ShardStore, synth_people, write_samples  # noqa: E402
from serving.cli import main as lethe  # noqa: E402
from serving.engines import engine_names  # noqa: E402
from serving.launch import ServerProcess  # noqa: E402

from bench_forget import scrape  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def flagged_total(url: str) -> float:
    return scrape(url).get("lethe:guard_flagged_total", 0.0)


def ttft(client, model: str, question: str) -> float:
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=4,
        temperature=0, stream=True)
    first = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    return (first or time.perf_counter()) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=engine_names(), default="vllm")
    parser.add_argument("--rounds", type=int, default=20,
                        help="rounds per phase; each round asks 2 + 2 questions")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lethe-bench-ttft-"))
    config = yaml.safe_load(resources.files("serving").joinpath("demo.yaml").read_text())
    config.update(home=str(work / "home"), engine={"name": args.engine})
    config["forget"]["worker"] = False
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    samples = synth_people(6, seed=0, facts_per_person=2)
    write_samples(samples, work / "people.jsonl")
    if lethe(["train", "--config", str(work / "config.yaml"),
              "--data", str(work / "people.jsonl")]) != 0:
        raise SystemExit("training failed")
    shard_of = {i: k for k, ids in ShardStore(work / "home" / "apa").lineage.shards_of(
        [s.id for s in samples]).items() for i in ids}
    forgotten_owner = "person-0000"
    kept_owner = next(s.owner for s in samples if s.owner != forgotten_owner
                      and shard_of[s.id] == shard_of[f"{forgotten_owner}-fact0"])
    forgotten = [s.prompt for s in samples if s.owner == forgotten_owner]
    kept = [s.prompt for s in samples if s.owner == kept_owner]
    server = ServerProcess(config, work, ready_timeout=600)
    times: dict[str, list[float]] = {}
    misjudged = 0
    try:
        client, model = server.client(), "SmolLM2-135M-Instruct"
        for question in forgotten + kept:  # warm-up: the adapter loads
            ttft(client, model, question)
        for phase in ("before", "after"):
            if phase == "after" and httpx.post(f"{server.url}/v1/forget", json={
                    "owner": forgotten_owner}, timeout=60).status_code != 202:
                raise SystemExit("the forget request was not accepted")
            for _ in range(args.rounds):
                for group, questions in (("forgotten", forgotten), ("kept", kept)):
                    for question in questions:
                        before = flagged_total(server.url)
                        times.setdefault(f"{phase}_{group}", []).append(
                            ttft(client, model, question))
                        expected = phase == "after" and group == "forgotten"
                        misjudged += (flagged_total(server.url) > before) != expected
    finally:
        server.stop()
    result = {"engine": args.engine, "rounds": args.rounds, "misjudged": misjudged,
              "forgotten_owner": forgotten_owner, "kept_owner": kept_owner,
              "machine": f"{os.cpu_count()} vCPU {platform.machine()}"}
    for group, values in times.items():
        ms = np.array(values) * 1000
        result[f"{group}_ttft_ms_p50"] = round(float(np.percentile(ms, 50)), 1)
        result[f"{group}_ttft_ms_p99"] = round(float(np.percentile(ms, 99)), 1)
    for phase in ("before", "after"):
        result[f"{phase}_p50_ratio_forgotten_over_kept"] = round(
            statistics.median(times[f"{phase}_forgotten"]) / statistics.median(
                times[f"{phase}_kept"]), 3)
        result[f"{phase}_mann_whitney_p"] = float(mannwhitneyu(
            times[f"{phase}_forgotten"], times[f"{phase}_kept"]).pvalue)
    result["forgotten_before_vs_after_mann_whitney_p"] = float(mannwhitneyu(
        times["before_forgotten"], times["after_forgotten"]).pvalue)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "ttft.json"
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[args.engine] = result
    out.write_text(json.dumps(runs, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
