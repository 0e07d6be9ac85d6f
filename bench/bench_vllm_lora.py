"""What LoRA costs in vLLM on CPU, by max_lora_rank: 8 concurrent greedy requests of 64 tokens.

    .venv/bin/python bench/bench_vllm_lora.py [--ranks 8 32 64]

Per max_lora_rank, one vLLM engine (the default model, fp32) runs the same batch without a LoRA
and under Lethe's all-zero identity adapter (r=8; vLLM pads every adapter to max_lora_rank), and
reports generated tokens/s and time to first token. Writes bench/results/vllm_lora.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

from serving.config import load_config  # noqa: E402
from serving.engines.vllm import LORA_TARGET_MODULES, write_identity_lora  # noqa: E402
from serving.model import resolve_model  # noqa: E402

N, MAX_TOKENS = 8, 64


async def batch(llm, prompts, lora, tag: str) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True,
                            output_kind=RequestOutputKind.DELTA)

    async def one(i):
        started, first = time.perf_counter(), None
        async for out in llm.generate(TokensPrompt(prompt_token_ids=prompts[i]), params,
                                      f"{tag}-{i}", lora_request=lora):
            if first is None and out.outputs[0].token_ids:
                first = time.perf_counter() - started
        return first

    started = time.perf_counter()
    ttft = await asyncio.gather(*(one(i) for i in range(N)))
    wall = time.perf_counter() - started
    return {"tokens_per_s": round(N * MAX_TOKENS / wall, 1),
            "ttft_p50_s": round(statistics.median(ttft), 2), "ttft_max_s": round(max(ttft), 2)}


async def measure(model_path: Path, rank: int, identity) -> list[dict]:
    from transformers import AutoTokenizer
    from vllm import AsyncEngineArgs
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=str(model_path), dtype="float32", max_model_len=2048, max_num_seqs=N,
        enable_lora=True, max_loras=2, max_lora_rank=rank, enable_prompt_embeds=True,
        lora_target_modules=list(LORA_TARGET_MODULES)))
    tok = AutoTokenizer.from_pretrained(model_path)
    prompts = [tok.encode(tok.apply_chat_template(
        [{"role": "user", "content": f"Write a long story about topic {i}."}],
        add_generation_prompt=True, tokenize=False)) for i in range(N)]
    lora = LoRARequest(identity.name, 1, str(identity.path))
    try:
        await batch(llm, prompts, None, "warmup")
        rows = []
        for name, req in (("none", None), ("identity r=8", lora)):
            rows.append({"max_lora_rank": rank, "adapter": name,
                         **await batch(llm, prompts, req, f"{rank}-{name}")})
            print(json.dumps(rows[-1]), flush=True)
        return rows
    finally:
        llm.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", nargs="+", type=int, default=[8, 32, 64])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vllm_lora.json")
    args = parser.parse_args()
    config = load_config()
    model_path = resolve_model(config.model.source, config.home_dir)
    with tempfile.TemporaryDirectory() as tmp:
        identity = write_identity_lora(model_path, Path(tmp))
        rows = [row for rank in args.ranks for row in asyncio.run(measure(model_path, rank, identity))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| max_lora_rank | adapter | tokens/s | TTFT p50 (s) | TTFT max (s) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['max_lora_rank']} | {r['adapter']} | {r['tokens_per_s']} | {r['ttft_p50_s']} | {r['ttft_max_s']} |")


if __name__ == "__main__":
    main()
