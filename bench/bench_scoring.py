"""What teacher-forced scoring costs when a question's answers share one pass over its prompt.

    .venv/bin/python bench/bench_scoring.py [--questions 16] [--rounds 2]

TOFU asks 7 answers of each forget question (the answer, a paraphrase, 5 perturbed ones).
`guard.token_logprobs` runs a question's prompt once and continues each answer from its
key-value cache; the contrast gives every answer a prompt pass of its own (as scoring did before,
one row per answer). SmolLM2 (fp32) with one random rank-8 LoRA on the 7 projections Lethe trains,
named per row as the evaluation's mixed-adapter batches name it; 16 answers a forward. The modes
alternate round by round; reports seconds per mode, the ratio, and the largest difference between
the two modes' log-probabilities. Needs TOFU in ../shared/data/tofu (or --data). Writes
bench/results/scoring.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from adapters import LORA_TARGET_MODULES  # noqa: E402
from guard import ModelSubject, answer_ids, read_items, token_logprobs  # noqa: E402
from serving.config import load_config  # noqa: E402
from serving.model import resolve_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
ROWS = 16  # answers per forward: the evaluation's SCORE_BATCH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=TOFU)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = load_config()
    path = resolve_model(config.model.source, config.home_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                             target_modules=list(LORA_TARGET_MODULES)),
                           adapter_name="shard").eval()
    items = read_items(args.data / "forget01_perturbed.json")[:args.questions]
    subject = ModelSubject(model, tokenizer)
    prompts = [subject._prompt(i.prompt) for i in items]  # (Tp, D) each
    answers = [[answer_ids(tokenizer, i.prompt, a)
                for a in (i.answer, i.paraphrased_answer, *i.perturbed_answers)] for i in items]

    def shared():  # one prompt pass per question
        scored = token_logprobs(model, prompts, answers, adapters=["shard"] * len(prompts),
                                batch_size=ROWS)
        return [t for group in scored for t in group]

    def per_answer():  # one prompt pass per answer
        rows = [(p, a) for p, group in zip(prompts, answers) for a in group]
        scored = token_logprobs(model, [p for p, _ in rows], [[a] for _, a in rows],
                                adapters=["shard"] * len(rows), batch_size=ROWS)
        return [group[0] for group in scored]

    seconds = {"shared prompt pass": [], "prompt pass per answer": []}
    results = {}
    for _ in range(args.rounds):
        for mode, fn in zip(seconds, (shared, per_answer)):
            start = time.perf_counter()
            results[mode] = fn()
            seconds[mode].append(round(time.perf_counter() - start, 2))
    a, b = results.values()
    prompt_tokens = sum(len(p) for p in prompts) / len(prompts)
    answer_tokens = sum(len(x) for group in answers for x in group) / sum(map(len, answers))
    record = {
        "questions": len(items), "answers": sum(map(len, answers)),
        "mean_prompt_tokens": round(prompt_tokens, 1),
        "mean_answer_tokens": round(answer_tokens, 1),
        "seconds": seconds,
        "ratio": round(min(seconds["prompt pass per answer"]) / min(seconds["shared prompt pass"]),
                       2),
        "max_abs_logprob_difference": max((x - y).abs().max().item() for x, y in zip(a, b)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scoring.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
