"""What a per-request shard mixture costs: in the engine vs materialised, against no adapter and
one static adapter, on both engines.

    .venv/bin/python bench/bench_mixtures.py [--engines hf vllm] [--rounds 2]

K=4 random rank-8 shard adapters on the default model (fp32, LoRA on the 7 projections Lethe
trains). Per engine, at concurrency 1 and 8, greedy requests of 64 tokens, each prompt unique
(no prefix-cache hits), the modes interleaved round by round:

    base          no adapter
    static        one adapter of rank K*r (the shards stacked), the same for every request
    materialised  a new weight vector per request, its mixture built, written and loaded
                  (adapters.MixtureCache, as `route.mixing: materialised` serves)
    in-engine     a new weight vector per request, as scales over the one stacked adapter

Reports generated tokens/s and time to first token (submit -> first token, the mixture's build
included) p50/p99, and, at concurrency 1, TTFT of a weight vector never seen before vs the same
vectors again. Engine level: no HTTP, no guard. Writes bench/results/mixtures.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from adapters import LORA_TARGET_MODULES, MixtureCache, Version  # noqa: E402
from extras import require_extras  # noqa: E402
from serving.config import load_config  # noqa: E402
from serving.engines import EngineRequest, LoRA, Sampling, engine_class  # noqa: E402
from serving.model import resolve_model  # noqa: E402

K, RANK, MAX_TOKENS = 4, 8, 64
MODES = ("base", "static", "materialised", "in-engine")
_ids = itertools.count()


def shard_adapters(model_path: Path, root: Path) -> list[Version]:
    """K random rank-8 peft adapters, small enough that the model still writes text."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    versions = []
    for k in range(K):
        torch.manual_seed(k)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        peft = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights=False,
                                                target_modules=list(LORA_TARGET_MODULES)))
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_" in name:
                    p.mul_(0.05)
        path = root / f"shard-{k}"
        peft.save_pretrained(path)
        versions.append(Version(k, f"v{k}", path))
    return versions


class Modes:
    """Each mode's adapter for the next request; `seen` repeats earlier weight vectors."""

    def __init__(self, shards: list[Version], cache: MixtureCache):
        self.shards, self.cache = shards, cache
        self.stack = cache.get([(v, 1.0) for v in shards])
        self.rng = np.random.default_rng(0)
        self.vectors: list[tuple[float, ...]] = []

    def weights(self, seen: bool) -> tuple[float, ...]:
        if seen:
            return self.vectors[next(_ids) % len(self.vectors)]
        w = tuple(round(float(x), 6) for x in self.rng.dirichlet(np.ones(K)))
        self.vectors.append(w)
        return w

    def lora(self, mode: str, seen: bool = False) -> LoRA | None:
        if mode == "base":
            return None
        if mode == "static":
            return LoRA(self.stack.name, self.stack.path)
        w = self.weights(seen)
        if mode == "in-engine":
            return LoRA(self.stack.name, self.stack.path, tuple(x for x in w for _ in range(RANK)))
        mixture = self.cache.get(list(zip(self.shards, w)))  # built and written on a miss
        return LoRA(mixture.name, mixture.path)


async def one(engine, tokenizer, modes: Modes, mode: str, seen: bool = False) -> tuple[float, int]:
    """(TTFT, generated tokens) of one request; the adapter is resolved inside the timing."""
    i = next(_ids)
    ids = tokenizer.encode(tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Request {i}: write a long story about the number {i}."}],
        add_generation_prompt=True, tokenize=False), add_special_tokens=False)
    started, first, tokens = time.perf_counter(), None, 0
    lora = await asyncio.to_thread(modes.lora, mode, seen)
    request = EngineRequest(f"r{i}", ids, Sampling(max_tokens=MAX_TOKENS, temperature=0),
                            lora=lora)
    async for deltas in engine.generate(request):
        tokens += sum(len(d.token_ids) for d in deltas)
        if first is None and tokens:
            first = time.perf_counter() - started
    return first, tokens


async def load(engine, tokenizer, modes: Modes, mode: str, concurrency: int, n: int) -> dict:
    gate = asyncio.Semaphore(concurrency)

    async def gated():
        async with gate:
            return await one(engine, tokenizer, modes, mode)

    started = time.perf_counter()
    results = await asyncio.gather(*(gated() for _ in range(n)))
    wall = time.perf_counter() - started
    ttft = [t for t, _ in results]
    return {"tokens_per_s": sum(n for _, n in results) / wall,
            "ttft_p50_s": statistics.median(ttft),
            "ttft_p99_s": float(np.percentile(ttft, 99))}


async def measure(name: str, model_path: Path, shards, root: Path, rounds: int) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    engine = engine_class(name)(model_path, dtype="float32", max_model_len=2048, max_num_seqs=8,
                                max_loras=4, max_lora_rank=K * RANK, kv_cache_gib=2)
    await engine.start()
    modes = Modes(shards, MixtureCache(root / f"mixtures-{name}", "bench", capacity=1000))
    try:
        for mode in MODES:  # warm-up: every code path once
            await one(engine, tokenizer, modes, mode)
        runs: dict[str, list[dict]] = {}
        for _ in range(rounds):
            for concurrency, n in ((1, 6), (8, 16)):
                for mode in MODES:
                    row = await load(engine, tokenizer, modes, mode, concurrency, n)
                    runs.setdefault(f"{mode} c={concurrency}", []).append(row)
                    print(name, mode, concurrency, json.dumps(row), flush=True)
        first_seen = {}
        for mode in ("materialised", "in-engine"):  # c=1: new vectors, then the same again
            for seen in (False, True):
                ttft = [(await one(engine, tokenizer, modes, mode, seen))[0] for _ in range(8)]
                first_seen[f"{mode} {'seen' if seen else 'never seen'}"] = statistics.median(ttft)
        print(name, json.dumps(first_seen), flush=True)
    finally:
        await engine.shutdown()
    # per mode: the median over rounds of each number
    summary = {key: {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
               for key, rows in runs.items()}
    return {"load": summary, "ttft_p50_s_by_vector": {k: round(v, 3) for k, v in first_seen.items()}}


def ratios(load: dict) -> dict:
    return {f"c={c}": {
        "in-engine / static": round(load[f"in-engine c={c}"]["tokens_per_s"]
                                    / load[f"static c={c}"]["tokens_per_s"], 2),
        "in-engine / materialised": round(load[f"in-engine c={c}"]["tokens_per_s"]
                                          / load[f"materialised c={c}"]["tokens_per_s"], 2),
        "in-engine / base": round(load[f"in-engine c={c}"]["tokens_per_s"]
                                  / load[f"base c={c}"]["tokens_per_s"], 2)} for c in (1, 8)}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    engines = list(results["engines"])
    x = np.arange(len(MODES))
    for ax, key, label in ((axes[0], "tokens_per_s", "tokens/s (c=8)"),
                           (axes[1], "ttft_p50_s", "TTFT p50, s (c=1)")):
        conc = 8 if key == "tokens_per_s" else 1
        for j, engine in enumerate(engines):
            load = results["engines"][engine]["load"]
            ax.bar(x + j * 0.4, [load[f"{m} c={conc}"][key] for m in MODES], 0.4, label=engine)
        ax.set_xticks(x + 0.2, MODES)
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"Per-request shard mixtures, K={K} x r={RANK}, SmolLM2-135M fp32 "
                 f"({results['machine']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=["hf", "vllm"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "mixtures.json")
    args = parser.parse_args()
    require_extras("matplotlib")
    model_path = resolve_model(load_config().model.source, load_config().home_dir)
    results = {"machine": f"{os.cpu_count()} vCPU, torch threads {torch.get_num_threads()}",
               "command": " ".join(sys.argv), "engines": {}}
    with tempfile.TemporaryDirectory() as tmp:
        shards = shard_adapters(model_path, Path(tmp))
        for name in args.engines:
            results["engines"][name] = asyncio.run(
                measure(name, model_path, shards, Path(tmp), args.rounds))
            results["engines"][name]["ratios"] = ratios(results["engines"][name]["load"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print("\n| engine | mode | c | tokens/s | TTFT p50 (s) | TTFT p99 (s) |\n|---|---|---|---|---|---|")
    for name, r in results["engines"].items():
        for key, row in r["load"].items():
            mode, c = key.split(" c=")
            print(f"| {name} | {mode} | {c} | {row['tokens_per_s']:.1f} | {row['ttft_p50_s']:.3f} "
                  f"| {row['ttft_p99_s']:.3f} |")
        print(name, json.dumps(r["ratios"]), json.dumps(r["ttft_p50_s_by_vector"]))


if __name__ == "__main__":
    main()
