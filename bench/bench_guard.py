"""The prompt guard (ECO) on TOFU: classifier rates, latency, and the tuned corruption's effect.

Part 1 (guard): train on forget10 vs retain90 questions (20% of each held out: half calibrates the
threshold at 1% FPR, half tests it), once per classifier. Report TPR on held-out forget questions
and on TOFU's paraphrases of forget questions, FPR on held-out retain, real_authors and
world_facts questions, and the latency of one check.

Part 2 (corruption): SmolLM2 + one LoRA trained on a retain90 subset (the reference, which never
saw the forget data) and on the same subset plus forget01 (the "finetuned" model). Tune the
corruption with nevergrad so that finetuned+corruption scores like the reference on forget01, then
report forget-answer probability and ROUGE-L (recall, as TOFU) for finetuned, finetuned + guard
(corrupted when the guard flags the prompt) and reference, and the same on retain items.

    .venv/bin/python bench/bench_guard.py            # both parts, ~30 min on 2 vCPUs
    .venv/bin/python bench/bench_guard.py --part guard
Results: bench/results/guard.json and bench/results/guard.png.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (DESIGN.md)

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from adapters import Sample, TrainConfig, train_adapter  # noqa: E402
from guard import (Corruption, Guard, Item, SentenceEmbedder, answer_logprobs, chat_prompt,  # noqa: E402
                   corruption_names, forget_score, read_items, request_seed, save_model,
                   train_guard, tune)
from guard.train import split_items  # noqa: E402
from serving.model import prepare_smollm2  # noqa: E402

TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
RESULTS = Path(__file__).parent / "results"


def guard_part(work: Path, embed: SentenceEmbedder) -> dict:
    forget, retain = read_items(TOFU / "forget10.json"), read_items(TOFU / "retain90.json")
    paraphrased = [json.loads(line) for line in open(TOFU / "forget05_perturbed.json")]
    extra = {"real_authors": read_items(TOFU / "real_authors.json"),
             "world_facts": read_items(TOFU / "world_facts.json")}
    out = {}
    for kind in ("mlp", "logreg"):
        start = time.perf_counter()
        model, report = train_guard(forget, retain, embed, kind=kind, target_fpr=0.01,
                                    holdout=0.2, seed=0, embedder="all-MiniLM-L6-v2")
        fit_seconds = time.perf_counter() - start
        save_model(model, work / f"guard-{kind}")
        guard = Guard.load(work / f"guard-{kind}", embed)
        # forget05 is forget10[200:]; its paraphrases of held-out test questions are unseen
        # rewordings of unseen questions, the others rewordings of training questions.
        _, cal, test = split_items(forget, 0.2, np.random.default_rng(0), "forget")  # as train_guard
        held_out = {i.prompt for i in cal + test}
        para_all = [p["paraphrased_question"] for p in paraphrased]
        para_test = [p["paraphrased_question"] for p in paraphrased if p["question"] in held_out]
        rates = {"test_tpr": report["test"]["tpr"], "test_fpr_retain": report["test"]["fpr"],
                 "n_test_positives": report["test"]["n_positives"],
                 "n_test_negatives": report["test"]["n_negatives"],
                 "paraphrase_tpr_all": _flag_rate(guard, para_all), "n_paraphrases": len(para_all),
                 "paraphrase_tpr_heldout": _flag_rate(guard, para_test),
                 "n_paraphrases_heldout": len(para_test),
                 **{f"fpr_{name}": _flag_rate(guard, [i.prompt for i in items])
                    for name, items in extra.items()},
                 "fit_seconds": round(fit_seconds, 1)}
        # Latency of a prompt never seen (an empty embedding cache): embedding + classifier + gate.
        guard = Guard.load(work / f"guard-{kind}", SentenceEmbedder())
        guard.check(["warm-up"])
        latencies = []
        for item in retain[:200]:
            start = time.perf_counter()
            guard.check([item.prompt])
            latencies.append((time.perf_counter() - start) * 1000)
        rates["latency_ms_p50"], rates["latency_ms_p99"] = (
            round(float(v), 2) for v in np.percentile(latencies, [50, 99]))
        out[kind] = rates
        print(kind, json.dumps(rates), flush=True)
    return out


def _flag_rate(guard: Guard, prompts: list[str]) -> float:
    return float(np.mean([guard.check([p]).flagged for p in prompts])) if prompts else float("nan")


def _train(model_path: Path, items: list[Item], out: Path, epochs: int) -> Path:
    if not (out / "adapter_model.safetensors").exists():
        samples = [Sample(f"s{i:05d}", "tofu", it.prompt, it.answer) for i, it in enumerate(items)]
        config = TrainConfig(learning_rate=1e-3, epochs=epochs, batch_size=8, max_length=128)
        stats = train_adapter(model_path, samples, config, seed=0, out_dir=out)
        print(f"trained {out.name}: {stats.steps} steps, loss {stats.final_loss:.3f}, "
              f"{stats.seconds:.0f} s", flush=True)
    return out


def _load(model_path: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter).eval()


def _generate(model, tokenizer, prompt: str, corruption: Corruption | None, max_tokens=48) -> str:
    ids, mask = chat_prompt(tokenizer, [{"role": "user", "content": prompt}])
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(torch.tensor(ids))  # (T, D)
        if corruption is not None:
            embeds = corruption(embeds, mask, request_seed(prompt))
        out = model.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, len(ids),
                             dtype=torch.long), max_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """Longest common subsequence of words / reference length (TOFU reports ROUGE-L recall)."""
    a, b = prediction.lower().split(), reference.lower().split()
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1] / max(len(b), 1)


def _evaluate(model, tokenizer, items: list[Item], corruptions: list[Corruption | None]) -> dict:
    """Mean answer probability (per token) and ROUGE-L recall, item i corrupted by corruptions[i]."""
    logprobs = [answer_logprobs(model, tokenizer, [(i.prompt, i.answer)], c)[0]
                for i, c in zip(items, corruptions)]
    rouge = [rouge_l_recall(_generate(model, tokenizer, i.prompt, c), i.answer)
             for i, c in zip(items, corruptions)]
    return {"probability": float(np.mean(np.exp(logprobs))), "rouge_l": float(np.mean(rouge)),
            "corrupted": sum(c is not None for c in corruptions)}


def corruption_part(work: Path, embed: SentenceEmbedder, args) -> dict:
    from transformers import AutoTokenizer

    model_path = prepare_smollm2(work / "home")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    forget = read_items(TOFU / "forget01.json")
    retain_all = read_items(TOFU / "retain90.json")
    rng = np.random.default_rng(0)
    retain = [retain_all[i] for i in sorted(rng.choice(len(retain_all), args.retain_train,
                                                       replace=False))]
    reference = _load(model_path, _train(model_path, retain, work / "reference", args.epochs))
    finetuned = _load(model_path, _train(model_path, retain + forget, work / "finetuned",
                                         args.epochs))
    target = forget_score("probability", reference, tokenizer, forget, None)
    tune_retain = retain[:8]
    start = time.perf_counter()
    result = tune(lambda c: forget_score("probability", finetuned, tokenizer, forget, c), target,
                  retain=lambda c: forget_score("probability", finetuned, tokenizer, tune_retain, c),
                  penalty=0.1, names=corruption_names(),
                  dim=finetuned.get_input_embeddings().weight.shape[1], sigma_range=(0.01, 10.0),
                  budget=args.budget, seed=0, log=lambda r: print("tune", json.dumps(r), flush=True))
    tune_seconds = time.perf_counter() - start
    guard = Guard.load(work / "guard-mlp", embed)
    flagged = [guard.check([i.prompt]).flagged for i in forget]
    retain_eval = retain[8:48]  # retain items the tuning never scored
    retain_flagged = [guard.check([i.prompt]).flagged for i in retain_eval]
    c = result.corruption
    table = {
        "finetuned": {"forget": _evaluate(finetuned, tokenizer, forget, [None] * len(forget)),
                      "retain": _evaluate(finetuned, tokenizer, retain_eval, [None] * len(retain_eval))},
        "finetuned+guard": {
            "forget": _evaluate(finetuned, tokenizer, forget, [c if f else None for f in flagged]),
            "retain": _evaluate(finetuned, tokenizer, retain_eval,
                                [c if f else None for f in retain_flagged])},
        "reference": {"forget": _evaluate(reference, tokenizer, forget, [None] * len(forget)),
                      "retain": _evaluate(reference, tokenizer, retain_eval, [None] * len(retain_eval))},
    }
    print(json.dumps(table, indent=2), flush=True)
    return {"corruption": {"name": c.name, "sigma": c.sigma, "k": c.k}, "target": target,
            "score_before": result.score_before, "score_after": result.score_after,
            "objective_before": result.objective_before, "objective_after": result.objective_after,
            "evaluations": result.evaluations, "tune_seconds": round(tune_seconds, 1),
            "forget_items": len(forget), "retain_train": len(retain), "epochs": args.epochs,
            "flagged_forget": int(sum(flagged)), "table": table}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corruption = results["corruption"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(corruption["table"])
    for offset, metric in enumerate(("probability", "rouge_l")):
        values = [corruption["table"][n]["forget"][metric] for n in names]
        axes[0].bar(np.arange(len(names)) + 0.4 * offset, values, width=0.4, label=metric)
    axes[0].set_xticks(np.arange(len(names)) + 0.2, names)
    axes[0].set_title("TOFU forget01: answer probability and ROUGE-L")
    axes[0].legend()
    steps = [e["step"] for e in corruption["evaluations"]]
    axes[1].plot(steps, [e["objective"] for e in corruption["evaluations"]], "o", label="evaluation")
    axes[1].plot(steps, np.minimum.accumulate([e["objective"] for e in corruption["evaluations"]]),
                 label="best so far")
    axes[1].axhline(corruption["objective_before"], color="grey", ls="--", label="no corruption")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("nevergrad evaluation")
    axes[1].set_title("corruption tuning objective")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["guard", "corruption", "all"], default="all")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lethe-bench-guard"))
    parser.add_argument("--retain-train", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--budget", type=int, default=30)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    out_path = RESULTS / "guard.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    embed = SentenceEmbedder()
    if args.part in ("guard", "all") or not (args.work / "guard-mlp").exists():
        results["guard"] = guard_part(args.work, embed)
    if args.part in ("corruption", "all"):
        results["corruption"] = corruption_part(args.work, embed, args)
    results["machine"] = f"{os.cpu_count()} vCPU, torch {torch.__version__}"
    out_path.write_text(json.dumps(results, indent=2))
    if "corruption" in results:
        plot(results, RESULTS / "guard.png")


if __name__ == "__main__":
    main()
