"""Does the time to first token tell a client that the guard fired? Flagged vs unflagged requests.

    .venv/bin/python bench/bench_ttft.py [--engine vllm|hf] [--rounds 40]

Set up as `lethe demo` (serving/demo.yaml): 6 fictitious people, 2 facts each, in 2 shard
adapters of SmolLM2-135M; `lethe serve` with the forget worker off, so the guard alone acts; one
owner forgotten through POST /v1/forget. Then, one request at a time, streamed, greedy, alternating:
the forgotten owner's two questions (flagged: corrupted prompt embeddings) and the same two
questions about another owner (not flagged: token ids). Each request's verdict is read from
/metrics. Reports TTFT (request sent -> first content token) p50/p99 per group, the ratio of the
p50s and a Mann-Whitney U p-value (a small p-value: the groups' TTFT differ, a client can tell).
Writes bench/results/ttft.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
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

from adapters import synth_people, write_samples  # noqa: E402
from serving.cli import main as lethe  # noqa: E402
from serving.launch import ServerProcess  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def flagged_total(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(r"^lethe:guard_flagged_total\{[^}]*\} (\S+)$", text,
                                            re.M))


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
    parser.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--rounds", type=int, default=40, help="each round: 2 flagged, 2 not")
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
    server = ServerProcess(config, work, ready_timeout=600)
    try:
        client, model = server.client(), "SmolLM2-135M-Instruct"
        forgotten = [s.prompt for s in samples if s.owner == "person-0000"]
        kept = [s.prompt for s in samples if s.owner == "person-0001"]
        if httpx.post(f"{server.url}/v1/forget", json={"owner": "person-0000"},
                      timeout=60).status_code != 202:
            raise SystemExit("the forget request was not accepted")
        for question in forgotten + kept:  # warm-up: first mixture loads, first embeds path
            ttft(client, model, question)
        times: dict[str, list[float]] = {"flagged": [], "unflagged": []}
        misjudged = 0
        for _ in range(args.rounds):
            for group, questions in (("flagged", forgotten), ("unflagged", kept)):
                for question in questions:
                    before = flagged_total(server.url)
                    times[group].append(ttft(client, model, question))
                    misjudged += (flagged_total(server.url) > before) != (group == "flagged")
    finally:
        server.stop()
    result = {"engine": args.engine, "rounds": args.rounds, "misjudged": misjudged,
              "machine": f"{os.cpu_count()} vCPU {platform.machine()}"}
    for group, values in times.items():
        ms = np.array(values) * 1000
        result[f"{group}_ttft_ms_p50"] = round(float(np.percentile(ms, 50)), 1)
        result[f"{group}_ttft_ms_p99"] = round(float(np.percentile(ms, 99)), 1)
        result[f"{group}_n"] = len(values)
    result["p50_ratio_flagged_over_unflagged"] = round(
        statistics.median(times["flagged"]) / statistics.median(times["unflagged"]), 3)
    result["mann_whitney_p"] = float(mannwhitneyu(times["flagged"], times["unflagged"]).pvalue)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "ttft.json"
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[args.engine] = result
    out.write_text(json.dumps(runs, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
