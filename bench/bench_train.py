"""What a training step of a shard adapter costs: shuffled batches with the LM head at every
position (training before 2026-12-02), length-grouped batches, and length-grouped batches with
the LM head at the response tokens alone (adapters/train.py now).

    .venv/bin/python bench/bench_train.py [--steps 6] [--rounds 4]

The samples are `lethe eval tofu`'s full run's (TOFU forget01's 2 authors and 38 others, 800
question-answer pairs in SmolLM2's chat format); SmolLM2 (fp32) with a rank-8 LoRA on the 7
projections Lethe trains, batch 8, AdamW, as adapters.train_adapter runs it. Each mode keeps its
own model and batch order and runs `--steps` optimizer steps a round; the modes alternate round
by round. Reports seconds per step for each mode, the ratios, the share of padded tokens of each
batching, and the largest difference between the two losses on the same batches. Needs TOFU in
../shared/data/tofu (or --data). Writes bench/results/train.json.
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

from adapters.train import (TrainConfig, collate, encode, epoch_batches, lora_config,  # noqa: E402
                            pad_token, response_nll)
from serving.config import load_config  # noqa: E402
from serving.evaluation import load_tofu  # noqa: E402
from serving.model import resolve_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def full_head_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss  # logits (B, T, V) at every position


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=TOFU)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = load_config()
    path = resolve_model(config.model.source, config.home_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train = TrainConfig()
    samples = load_tofu(args.data, "forget01", 38).train
    examples = [encode(tokenizer, s, train.max_length) for s in samples]
    lengths = [len(ids) for ids, _ in examples]
    pad_id = pad_token(tokenizer)

    def padding(batches: list[list[int]]) -> float:
        real = sum(lengths[i] for b in batches for i in b)
        return round(1 - real / sum(max(lengths[i] for i in b) * len(b) for b in batches), 4)

    modes = {"shuffled, head at every position": (shuffled_batches, full_head_loss),
             "length-grouped, head at every position":
                 (lambda n, b, g: epoch_batches(lengths, b, g), full_head_loss),
             "length-grouped, head at response tokens":
                 (lambda n, b, g: epoch_batches(lengths, b, g),
                  lambda model, batch: response_nll(model, batch)[0].mean())}
    state = {}
    for mode, (batches_of, _) in modes.items():
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                               lora_config(train))
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=train.learning_rate, weight_decay=0.0)
        batches = batches_of(len(examples), train.batch_size, torch.Generator().manual_seed(0))
        state[mode] = {"model": model, "optimizer": optimizer, "batches": iter(batches),
                       "padding": padding(batches), "seconds": []}

    for _ in range(args.rounds):
        for mode, (_, loss_of) in modes.items():
            s = state[mode]
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = loss_of(s["model"], collate([examples[j] for j in next(s["batches"])],
                                                   pad_id))
                loss.backward()
                s["optimizer"].step()
                s["optimizer"].zero_grad(set_to_none=True)
            s["seconds"].append(round((time.perf_counter() - start) / args.steps, 2))

    # The two losses on the same batches, under one model (the same-batch comparison).
    model = state["length-grouped, head at response tokens"]["model"].eval()
    check = epoch_batches(lengths, train.batch_size, torch.Generator().manual_seed(1))[:4]
    with torch.no_grad():
        differences = [(full_head_loss(model, batch) - response_nll(model, batch)[0].mean()).abs()
                       .item() for batch in (collate([examples[j] for j in b], pad_id)
                                             for b in check)]
    per_step = {mode: min(s["seconds"]) for mode, s in state.items()}
    baseline = per_step["shuffled, head at every position"]
    record = {
        "samples": len(examples), "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "batch_size": train.batch_size, "steps_per_round": args.steps, "rounds": args.rounds,
        "seconds_per_step": {mode: s["seconds"] for mode, s in state.items()},
        "speedup_vs_shuffled": {mode: round(baseline / t, 2) for mode, t in per_step.items()},
        "padding_share": {"shuffled": state["shuffled, head at every position"]["padding"],
                          "length-grouped": state["length-grouped, head at response tokens"]
                          ["padding"]},
        "max_abs_loss_difference": max(differences),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
