"""Can a client time the guard? ROC AUC of flagged vs unflagged prompts' TTFT through the server.

    .venv/bin/python bench/bench_timing.py [--engine vllm hf] [--prefix-cache off on]
                                           [--uniform-prompts on off] [--parts ...] [--n 200]
                                           [--pending on off] [--home DIR]

Set up as bench_ttft.py: `lethe demo`'s config (6 fictitious people, 2 facts each, 2 shard
adapters of SmolLM2-135M) trained once, then per arm `lethe serve` (the engine; on vLLM its
prefix cache off, the default, or on, as the server ran before: engine.prefix_caching; every
prompt served as embeddings, the default, or unflagged ones as token ids, as the server ran
before: engine.uniform_prompts) with the forget worker off and one owner's forget request
pending, so that questions about that owner are flagged. Two attacks (`--parts`), their trials
shuffled together, one request at a time, streamed, greedy:

- warm prefix: `--copies` system messages (24 copies of one, ~840 tokens with the question),
  warmed by an untimed unflagged request, then prefix + question: flagged (the forgotten
  owner's) or unflagged (another owner's, of the same token count). Each trial's question ends
  with its own number, so no prompt repeats: a repeated flagged prompt, noised the same way
  (the noise is seeded by the text), would hit its own earlier blocks.
- plain pair: the two questions alone, of the same token count, repeated.

`--pending off` runs an arm as a control: the same trials with no forget request, so nothing is
flagged, and the AUC is what the two questions' own difference (their answers, their tokens)
gives: what the guard adds to an arm's AUC is its distance from its control's.

Per attack, for TTFT (to the first content chunk), total time and the head (time to the first
chunk, sent once the guard and the router are done: their own share): the ROC AUC of the time for
telling flagged (positive) from unflagged, i.e. P(a flagged request is slower), with a 95%
DeLong interval; 0.5 is no oracle, and an attacker reads either side of it. Each request's
verdict is read from /metrics (`misjudged` counts those not as intended).
Writes bench/results/timing.json (one entry per arm, kept across runs; per part its n, date and
the run's seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (DESIGN.md)

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from adapters import synth_people, write_samples  # noqa: E402
from serving.cli import main as lethe  # noqa: E402
from serving.engines import engine_names  # noqa: E402
from serving.launch import ServerProcess  # noqa: E402
from serving.model import resolve_model  # noqa: E402

from bench_ttft import flagged_total  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODEL = "SmolLM2-135M-Instruct"
FORGOTTEN = "person-0000"
# 34 tokens with its chat markup: 24 copies and a question come to ~840, the attack.
SYSTEM = ("You are a careful assistant for a small town's records office. Answer each question "
          "about a resident in one short sentence, or say you cannot.")
PARTS = ("warm_prefix", "plain_pair")
Z95 = 1.959964  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Trial:
    part: str  # one of PARTS
    flagged: bool  # about the forgotten owner (the guard should flag it)
    messages: list[dict]


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float, float]:
    """P(positive > negative) (ties half) and its 95% DeLong interval (DeLong et al., 1988)."""
    psi = ((positive[:, None] > negative[None, :])
           + 0.5 * (positive[:, None] == negative[None, :]))  # (m, n)
    auc = float(psi.mean())
    se = math.sqrt(psi.mean(axis=1).var(ddof=1) / len(positive)
                   + psi.mean(axis=0).var(ddof=1) / len(negative))
    return auc, max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se)


def timed(client: httpx.Client, messages: list[dict], max_tokens: int
          ) -> tuple[float, float, float]:
    """(time to the first chunk, to the first content chunk, total time) of one streamed chat,
    in seconds. The first chunk (the role's) leaves once the guard and the router are done, before
    the engine runs: its time is theirs alone, without the engine's noise."""
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True}
    start, head, first = time.perf_counter(), None, None
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: {"):
                head = head or time.perf_counter()
                choices = json.loads(line[len("data: "):])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    first = time.perf_counter()
    end = time.perf_counter()
    return (head or end) - start, (first or end) - start, end - start


def chat(question: str, copies: int) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}] * copies + [
        {"role": "user", "content": question}]


def trials(tokenizer, questions: dict[bool, str], parts: list[str], n: int, copies: int,
           seed: int) -> tuple[list[Trial], list[Trial], dict[str, int]]:
    """(one warm-up per part and class, n trials per part and class shuffled, each part's
    prompt length in tokens). Every prompt of a part has the same length (SystemExit
    otherwise). The warm-ups load the adapters and warm the prefix, untimed."""
    warm, plan = [], []
    width = len(str(n - 1))  # numbers of one width: one length
    for flagged, question in questions.items():
        warm += [t for t in (Trial("warm_prefix", flagged, chat(f"{question} (warm-up)", copies)),
                             Trial("plain_pair", flagged, chat(question, 0))) if t.part in parts]
        plan += [Trial(part, flagged, chat(f"{question} (#{i:0{width}d})", copies)
                       if part == "warm_prefix" else chat(question, 0))
                 for i in range(n) for part in parts]
    lengths = {}
    for part in parts:
        counts = {prompt_tokens(tokenizer, t.messages) for t in plan if t.part == part}
        if len(counts) != 1:
            raise SystemExit(f"{part}: prompts differ in length ({sorted(counts)} tokens); "
                             "pick other owners")
        lengths[part] = counts.pop()
    random.Random(seed).shuffle(plan)
    return warm, plan, lengths


def prompt_tokens(tokenizer, messages: list[dict]) -> int:
    """The chat's length as the server tokenizes it (serving/pipeline.py)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer.encode(text, add_special_tokens=False))


def arm_home(home: Path, workdir: Path) -> Path:
    """The trained home copied for one arm (its models folder linked, not copied): with the worker
    off, an arm's forget request stays pending in the home it was posted to, and the next arm,
    a control above all, must not find it there."""
    copy = workdir / "home"
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("models"))
    (copy / "models").symlink_to(home / "models")
    return copy


def run_arm(config: dict, workdir: Path, warm: list[Trial], plan: list[Trial], max_tokens: int,
            pending: bool = True) -> dict:
    """One server: the forget request (unless not `pending`: the control, where no trial is
    flagged), the warm-ups, the trials; per part the AUCs."""
    server = ServerProcess(config, workdir, ready_timeout=600)
    times: dict[tuple[str, bool], list[tuple[float, float, float]]] = {}
    misjudged = dict.fromkeys(PARTS, 0)
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            if pending:
                client.post("/v1/forget", json={"owner": FORGOTTEN}).raise_for_status()
            for trial in warm:
                timed(client, trial.messages, max_tokens)
            for trial in plan:
                before = flagged_total(server.url)
                times.setdefault((trial.part, trial.flagged), []).append(
                    timed(client, trial.messages, max_tokens))
                misjudged[trial.part] += ((flagged_total(server.url) > before)
                                          != (trial.flagged and pending))
    finally:
        server.stop()
    result: dict = {}
    for part in sorted({t.part for t in plan}, key=PARTS.index):
        flagged, unflagged = (np.array(times[(part, f)]) for f in (True, False))  # (n, 3)
        record = {"n": len(flagged), "misjudged": misjudged[part]}
        for column, measure in enumerate(("head", "ttft", "total")):
            for name, values in (("flagged", flagged), ("unflagged", unflagged)):
                record[f"{measure}_ms_p50_{name}"] = round(
                    float(np.median(values[:, column])) * 1e3, 1)
            record[f"{measure}_auc"] = [round(x, 3) for x in roc_auc(flagged[:, column],
                                                                      unflagged[:, column])]
        result[part] = record
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", nargs="+", choices=engine_names(), default=["vllm"])
    parser.add_argument("--prefix-cache", nargs="+", choices=["off", "on"], default=["off", "on"],
                        help="vLLM only: off is the server's default, on is how it ran before")
    parser.add_argument("--uniform-prompts", nargs="+", choices=["on", "off"], default=["on"],
                        help="on is the server's default, off is how it ran before")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="the attacks (a part run alone replaces that part of the arm's "
                             "record and keeps the other)")
    parser.add_argument("--n", type=int, default=200,
                        help="requests per class and attack (at n = 30 a server with no oracle "
                             "lands above 0.55 a quarter of the time)")
    parser.add_argument("--copies", type=int, default=24, help="system messages in the prefix")
    parser.add_argument("--max-tokens", type=int, default=8, help="per answer: total time")
    parser.add_argument("--pending", nargs="+", choices=["on", "off"], default=["on"],
                        help="off: the control, no forget request, so nothing is flagged: the "
                             "AUC the two questions' own difference gives")
    parser.add_argument("--seed", type=int, default=0, help="the trials' order")
    parser.add_argument("--home", type=Path,
                        help="the home an earlier run trained (it prints it): no training; each "
                             "arm serves a copy of it")
    args = parser.parse_args()
    if args.n < 2:  # DeLong's variance needs two per class
        parser.error("--n must be at least 2")
    if args.copies < 1 or args.max_tokens < 1:
        parser.error("--copies and --max-tokens must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="lethe-bench-timing-"))
    config = yaml.safe_load(resources.files("serving").joinpath("demo.yaml").read_text())
    home = args.home or work / "home"
    config["home"] = str(home)
    config["model"]["max_model_len"] = 2048  # the prefix: ~840 tokens
    config["forget"]["worker"] = False  # the request stays pending: the guard alone acts
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    samples = synth_people(6, seed=0, facts_per_person=2)
    print(f"home: {home}", flush=True)
    if args.home is None:
        write_samples(samples, work / "people.jsonl")
        if lethe(["train", "--config", str(work / "config.yaml"),
                  "--data", str(work / "people.jsonl")]) != 0:
            raise SystemExit("training failed")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2", home))

    question = {s.owner: s.prompt for s in samples if s.id.endswith("-fact0")}  # "Where does"
    forgotten = question[FORGOTTEN]
    kept_owner = next((o for o in sorted(question) if o != FORGOTTEN and len(tokenizer.encode(
        question[o])) == len(tokenizer.encode(forgotten))), None)
    if kept_owner is None:
        raise SystemExit(f"no owner's question has the token count of {FORGOTTEN}'s")
    warm, plan, lengths = trials(tokenizer, {True: forgotten, False: question[kept_owner]},
                                 args.parts, args.n, args.copies, args.seed)
    arms = [(engine, cache, uniform, pending) for engine in args.engine
            for cache in (args.prefix_cache if engine == "vllm" else [None])
            for uniform in args.uniform_prompts for pending in args.pending]
    out = RESULTS / "timing.json"
    runs = json.loads(out.read_text()) if out.exists() else {}
    for engine, cache, uniform, pending in arms:
        name = ", ".join([engine] + ([] if cache is None else [f"prefix cache {cache}"])
                         + [f"uniform prompts {uniform}"]
                         + ([] if pending == "on" else ["no request pending (control)"]))
        workdir = work / name.replace(", ", "-").replace(" ", "-")
        workdir.mkdir()
        started = time.perf_counter()
        engine_config = {"name": engine, "prefix_caching": cache == "on",
                         "uniform_prompts": uniform == "on"}
        result = run_arm({**config, "home": str(arm_home(home, workdir)),
                          "engine": engine_config},
                         workdir, warm, plan, args.max_tokens, pending == "on")
        seconds = round(time.perf_counter() - started)
        for part, record in result.items():  # a part run alone keeps the arm's other part
            record.update(prompt_tokens=lengths[part], seconds=seconds,
                          date=date.today().isoformat())
        runs[name] = {**runs.get(name, {}), "copies": args.copies, "max_tokens": args.max_tokens,
                      "forgotten_owner": FORGOTTEN, "kept_owner": kept_owner,
                      "machine": f"{os.cpu_count()} vCPU {platform.machine()}", **result}
        print(json.dumps({name: runs[name]}, indent=2), flush=True)
        RESULTS.mkdir(exist_ok=True)
        out.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
