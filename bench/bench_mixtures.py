"""What a per-request shard mixture costs: in the engine vs materialised, against no adapter and
one static adapter, on both engines.

    .venv/bin/python bench/bench_mixtures.py [--engines hf vllm] [--rounds 2]
        [--concurrency 1 8] [--model default|random-1b] [--dtype float32] [--out FILE]

    # on an NVIDIA GPU (bench/gpu_check.sh): vLLM only, the hf engine runs on the CPU
    .venv/bin/python bench/bench_mixtures.py --engines vllm --rounds 1 --dtype bfloat16 \
        --concurrency 1 8 32 64 --model random-1b

K=4 random rank-8 shard adapters on the default model (fp32, LoRA on the 7 projections Lethe
trains), or on `random-1b`: a 1B-class Llama (hidden 2048, 16 layers, 32 heads, 8 KV heads)
with random weights and SmolLM2's tokenizer, built once into <home>/models/random-1b (nothing
downloaded). Per engine, at concurrency 1 and 8 (--concurrency; max(6, 2c) requests at
concurrency c), greedy requests of 64 tokens, each prompt unique (no prefix-cache hits), the
modes interleaved round by round:

    base          no adapter
    static        one adapter of rank K*r (the shards stacked), the same for every request
    materialised  a new weight vector per request, its mixture built, written and loaded
                  (adapters.MixtureCache, as `route.mixing: materialised` serves)
    in-engine     a new weight vector per request, as scales over the one stacked adapter

Reports generated tokens/s and time to first token (submit -> first token, the mixture's build
included) p50/p99, and, at concurrency 1, TTFT of a weight vector never seen before vs the same
vectors again. Engine level: no HTTP, no guard. Writes bench/results/mixtures.json and .png
(mixtures-random-1b.json for random-1b; --out elsewhere).
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
from serving.engines import (EngineRequest, LoRA, Sampling, engine_class,  # noqa: E402
                             engine_names)
from serving.model import resolve_model  # noqa: E402

K, RANK, MAX_TOKENS = 4, 8, 64
MODES = ("base", "static", "materialised", "in-engine")
RANDOM_1B = "random-1b"
DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # --dtype: the plot's label
_ids = itertools.count()


def requests_at(concurrency: int) -> int:
    """Requests per measurement: 6 at c=1, 16 at c=8, two waves beyond."""
    return max(6, 2 * concurrency)


def random_1b(home: Path, tokenizer_path: Path) -> Path:
    """A 1B-class Llama with random weights (bf16) and the tokenizer of `tokenizer_path`, saved
    once to <home>/models/random-1b: a model of a GPU's size without a download."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = home / "models" / RANDOM_1B
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        tie_word_embeddings=True,  # as Llama 3.2 1B: ~1.07B parameters with this vocabulary
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # initialising 1B: seconds on a GPU
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    tmp = target.with_name(f".{RANDOM_1B}-{os.getpid()}")  # complete, or not there at all
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del model
    tmp.rename(target)
    return target


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


async def measure(name: str, model_path: Path, shards, root: Path, rounds: int,
                  concurrencies: list[int], dtype: str) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # at least 8 sequences a batch; more where a concurrency needs them
    engine = engine_class(name)(model_path, dtype=dtype, max_model_len=2048,
                                max_num_seqs=max(8, *concurrencies), max_loras=4,
                                max_lora_rank=K * RANK, kv_cache_gib=2)
    await engine.start()
    modes = Modes(shards, MixtureCache(root / f"mixtures-{name}", "bench", capacity=1000))
    try:
        for mode in MODES:  # warm-up: every code path once
            await one(engine, tokenizer, modes, mode)
        runs: dict[str, list[dict]] = {}
        for _ in range(rounds):
            for concurrency in concurrencies:
                for mode in MODES:
                    row = await load(engine, tokenizer, modes, mode, concurrency,
                                     requests_at(concurrency))
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


def ratios(load: dict, concurrencies: list[int]) -> dict:
    return {f"c={c}": {
        "in-engine / static": round(load[f"in-engine c={c}"]["tokens_per_s"]
                                    / load[f"static c={c}"]["tokens_per_s"], 2),
        "in-engine / materialised": round(load[f"in-engine c={c}"]["tokens_per_s"]
                                          / load[f"materialised c={c}"]["tokens_per_s"], 2),
        "in-engine / base": round(load[f"in-engine c={c}"]["tokens_per_s"]
                                  / load[f"base c={c}"]["tokens_per_s"], 2)}
        for c in concurrencies}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    engines = list(results["engines"])
    x = np.arange(len(MODES))
    high, low = max(results["concurrency"]), min(results["concurrency"])
    for ax, key, conc in ((axes[0], "tokens_per_s", high), (axes[1], "ttft_p50_s", low)):
        label = f"tokens/s (c={conc})" if key == "tokens_per_s" else f"TTFT p50, s (c={conc})"
        for j, engine in enumerate(engines):
            load = results["engines"][engine]["load"]
            ax.bar(x + j * 0.4, [load[f"{m} c={conc}"][key] for m in MODES], 0.4, label=engine)
        ax.set_xticks(x + 0.2, MODES)
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"Per-request shard mixtures, K={K} x r={RANK}, {results['model']} "
                 f"{DTYPES[results['dtype']]} ({results['machine']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def machine() -> str:
    cpu = f"{os.cpu_count()} vCPU, torch threads {torch.get_num_threads()}"
    return f"{torch.cuda.get_device_name()}, {cpu}" if torch.cuda.is_available() else cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", choices=engine_names(), default=engine_names())
    parser.add_argument("--rounds", type=int, default=2)
    # 1 and 8: a 2-vCPU machine's range; a GPU's goes on to 32 and 64
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    # default: the configured model (SmolLM2-135M-Instruct); random-1b: a GPU-sized model
    parser.add_argument("--model", choices=["default", RANDOM_1B], default="default")
    # float32 as Lethe serves on CPU; bfloat16 on a GPU
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--out", type=Path,
                        help="default: bench/results/mixtures.json (mixtures-random-1b.json)")
    args = parser.parse_args()
    if min(args.concurrency) < 1:
        parser.error("--concurrency: each must be at least 1")
    concurrencies = sorted(set(args.concurrency))
    out = args.out or Path(__file__).parent / "results" / (
        "mixtures.json" if args.model == "default" else f"mixtures-{args.model}.json")
    require_extras("matplotlib")
    config = load_config()
    model_path = resolve_model(config.model.source, config.home_dir)
    label = "SmolLM2-135M"
    if args.model == RANDOM_1B:
        model_path, label = random_1b(config.home_dir, model_path), "random-1b Llama"
    results = {"machine": machine(), "command": " ".join(sys.argv), "model": label,
               "dtype": args.dtype, "concurrency": concurrencies, "engines": {}}
    with tempfile.TemporaryDirectory() as tmp:
        shards = shard_adapters(model_path, Path(tmp))
        for name in args.engines:
            results["engines"][name] = asyncio.run(
                measure(name, model_path, shards, Path(tmp), args.rounds, concurrencies,
                        args.dtype))
            results["engines"][name]["ratios"] = ratios(results["engines"][name]["load"],
                                                        concurrencies)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print("\n| engine | mode | c | tokens/s | TTFT p50 (s) | TTFT p99 (s) |\n|---|---|---|---|---|---|")
    for name, r in results["engines"].items():
        for key, row in r["load"].items():
            mode, c = key.split(" c=")
            print(f"| {name} | {mode} | {c} | {row['tokens_per_s']:.1f} | {row['ttft_p50_s']:.3f} "
                  f"| {row['ttft_p99_s']:.3f} |")
        print(name, json.dumps(r["ratios"]), json.dumps(r["ttft_p50_s_by_vector"]))


if __name__ == "__main__":
    main()
