"""APA on recommendation data: AUC per aggregation method, and the cost of a forget.

    .venv/bin/python bench/bench_apa.py [--train 1024 --validation 500 --test 1000 --shards 4]

TALLRec-style "will the user like this movie? Yes/No" samples from MovieLens-100K (as shipped in
`recbole`): the user's 10 previous ratings (liked = rating > 3) and a target movie. Samples of one
user stay in one shard, so a user's forget request retrains one shard. The default model
(SmolLM2-135M-Instruct) is trained with the product's code (adapters.ShardStore): K shard
adapters, plus one adapter on all training data (the retraining reference). Each test sample is
scored P("Yes") vs P("No") at the first answer token, and AUC is reported for: the reference,
APA's sample-adaptive mixture, the uniform parameter average, SISA (mean of the K adapters'
P("Yes")), and `major` (the adapter APA ranks first). Then one user is forgotten through
ShardStore.forget_samples, timed, beside the full-retrain time.

Writes bench/results/apa.json (after each phase) and bench/results/apa.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from adapters import RouteConfig, Sample, ShardStore, TrainConfig, combine, route, train_adapter  # noqa: E402
from adapters.registry import Version  # noqa: E402
from adapters.route import RouteInputs  # noqa: E402
from adapters.train import lora_config  # noqa: E402
from guard import SentenceEmbedder  # noqa: E402
from serving.model import base_model_record, prepare_smollm2  # noqa: E402

from extras import require_extras  # noqa: E402

RESULTS = Path(__file__).parent / "results"
INSTRUCTION = ("Given the user's preference and unpreference, identify whether the user will like "
               "the target movie by answering \"Yes.\" or \"No.\".")
PAPER = {"retrain": 0.7428, "apa": 0.7259, "sisa": 0.7035}  # Hu et al. 2024, Movie, LLaMA-7B


def movielens_samples(history: int = 10, seed: int = 0) -> list[Sample]:
    """One sample per (user, rating) with `history` earlier ratings, in a seeded random order."""
    origin = importlib.util.find_spec("recbole").origin
    folder = Path(origin).parent / "dataset_example" / "ml-100k"
    titles = {}
    for line in (folder / "ml-100k.item").read_text(encoding="latin-1").splitlines()[1:]:
        item, title, year, _ = line.split("\t")
        titles[item] = f"{title} ({year})" if year else title
    by_user = defaultdict(list)
    for line in (folder / "ml-100k.inter").read_text().splitlines()[1:]:
        user, item, rating, stamp = line.split("\t")
        by_user[user].append((float(stamp), item, float(rating)))
    samples = []
    for user, events in sorted(by_user.items()):
        events.sort()
        for i in range(history, len(events)):
            past = events[i - history:i]
            liked = ", ".join(f'"{titles[it]}"' for _, it, r in past if r > 3) or "none"
            disliked = ", ".join(f'"{titles[it]}"' for _, it, r in past if r <= 3) or "none"
            _, item, rating = events[i]
            prompt = (f"{INSTRUCTION}\n\nUser Preference: {liked}\nUser Unpreference: {disliked}\n"
                      f"Whether the user will like the target movie \"{titles[item]}\"?")
            samples.append(Sample(f"u{int(user):04d}-{i:04d}", f"user-{int(user):04d}", prompt,
                                  "Yes." if rating > 3 else "No."))
    random.Random(seed).shuffle(samples)
    return samples


def split(samples: list[Sample], n_train: int, n_val: int, n_test: int):
    """Disjoint users across train / validation / test (validation users consented, never
    forgotten; test users unseen), each set capped at its size."""
    users = sorted({s.owner for s in samples})
    random.Random(1).shuffle(users)
    third = len(users) // 3
    groups = [set(users[:third]), set(users[third:2 * third]), set(users[2 * third:])]
    return [[s for s in samples if s.owner in g][:n] for g, n in zip(groups, (n_train, n_val, n_test))]


class Scorer:
    """P("Yes") at the first answer token under a LoRA slot whose weights are swapped in place."""

    def __init__(self, model_path: Path, rank: int, config: TrainConfig):
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        slot = lora_config(config.model_copy(update={"r": rank, "alpha": rank, "dropout": 0.0}))
        self.model = get_peft_model(base, slot).eval()
        self.yes = self.tokenizer("Yes", add_special_tokens=False).input_ids[0]
        self.no = self.tokenizer("No", add_special_tokens=False).input_ids[0]
        self.max_length = config.max_length

    def load(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, state)
        if result.unexpected_keys:
            raise RuntimeError(f"unexpected keys {result.unexpected_keys[:3]}")

    def p_yes(self, samples: list[Sample], batch_size: int = 16) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(samples), batch_size):
                texts = [self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": s.prompt}], add_generation_prompt=True,
                    tokenize=False) for s in samples[i:i + batch_size]]
                # Left padding and truncation: the last position is every prompt's end.
                self.tokenizer.padding_side = self.tokenizer.truncation_side = "left"
                batch = self.tokenizer(texts, return_tensors="pt", padding=True,
                                       add_special_tokens=False, truncation=True,
                                       max_length=self.max_length)
                logits = self.model(**batch).logits[:, -1, [self.yes, self.no]]  # (B, 2)
                out.append(torch.softmax(logits.float(), dim=-1)[:, 0])
        return torch.cat(out).numpy()


def padded(parts, rank: int) -> dict[str, torch.Tensor]:
    """combine() of the parts, zero-padded to `rank` so it fits the scorer's slot exactly."""
    state, config = combine(parts)
    out = {}
    for key, t in state.items():
        if ".lora_A." in key:
            out[key] = torch.cat([t, t.new_zeros(rank - t.shape[0], t.shape[1])], dim=0)
        else:  # combine() folds each shard's scaling into B and uses alpha = rank
            out[key] = torch.cat([t, t.new_zeros(t.shape[0], rank - t.shape[1])], dim=1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=1024)
    ap.add_argument("--validation", type=int, default=500)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--tau", type=float, default=10.0)
    ap.add_argument("--home", type=Path, default=Path("/tmp/lethe-bench-apa"))
    args = ap.parse_args()
    require_extras("recbole", "matplotlib")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "torch_threads": torch.get_num_threads()}

    def save():
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "apa.json").write_text(json.dumps(result, indent=2))

    train, val, test = split(movielens_samples(), args.train, args.validation, args.test)
    labels = np.array([s.response == "Yes." for s in test])
    result["data"] = {"train": len(train), "validation": len(val), "test": len(test),
                      "test_positive_rate": float(labels.mean())}
    model_path = prepare_smollm2(args.home)
    config = TrainConfig(epochs=args.epochs, batch_size=8, max_length=256)
    embed = SentenceEmbedder()

    store_dir = args.home / f"apa-{int(time.time())}"
    store = ShardStore.create(store_dir, train, embed, shards=args.shards, partitioner="semantic",
                              group_by_owner=True, seed=0, model_path=model_path,
                              base_model=base_model_record(model_path), train_config=config,
                              validation=val)
    start = time.perf_counter()
    shard_results = store.train(store.lineage.shard_ids())
    result["shards"] = [{"shard": r.shard, "samples": r.samples, "train_s": r.seconds,
                         "steps": r.steps} for r in shard_results]
    result["shards_total_s"] = time.perf_counter() - start  # includes the validation loss table
    save()

    with_ref = args.home / "reference"
    start = time.perf_counter()
    ref_stats = train_adapter(model_path, train, config, seed=0, out_dir=with_ref)
    result["full_retrain_s"] = time.perf_counter() - start
    result["full_retrain_steps"] = ref_stats.steps
    save()

    versions = store.current_versions()
    rank = config.r * len(versions)
    scorer = Scorer(model_path, rank, config)
    scores: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    ref_version = Version(-1, "reference", with_ref)
    scorer.load(padded([(ref_version, 1.0)], rank))
    scores["retrain"] = scorer.p_yes(test)
    per_shard = []
    for v in versions:
        scorer.load(padded([(v, 1.0)], rank))
        per_shard.append(scorer.p_yes(test))
    scores["sisa"] = np.mean(per_shard, axis=0)
    scorer.load(padded([(v, 1.0 / len(versions)) for v in versions], rank))
    scores["uniform"] = scorer.p_yes(test)

    query = embed([s.prompt for s in test])  # (N, d)
    state = store.router_state(versions)
    inputs = dict(centroids=state.centroids, validation=state.validation, losses=state.losses)
    shards = [v.shard for v in versions]
    apa_cfg = RouteConfig(scheme="apa", tau=args.tau)
    major_cfg = RouteConfig(scheme="major")
    groups: dict[tuple, list[int]] = defaultdict(list)
    major_score = np.empty(len(test))
    for i, q in enumerate(query):
        w = route(RouteInputs(query=q, **inputs), apa_cfg, shards)
        groups[tuple(sorted(w.items()))].append(i)
        [(top, _)] = route(RouteInputs(query=q, **inputs), major_cfg, shards).items()
        major_score[i] = per_shard[shards.index(top)][i]
    scores["major"] = major_score
    apa_score = np.empty(len(test))
    for weights, idx in groups.items():
        scorer.load(padded([(versions[shards.index(k)], w) for k, w in weights], rank))
        apa_score[idx] = scorer.p_yes([test[i] for i in idx])
    scores["apa"] = apa_score
    result["eval_s"] = time.perf_counter() - start
    result["apa_distinct_mixtures"] = len(groups)
    result["auc"] = {m: float(roc_auc_score(labels, s)) for m, s in scores.items()}
    result["auc_per_shard"] = [float(roc_auc_score(labels, s)) for s in per_shard]
    save()

    # One user's forget request, through the product's path.
    owner = train[0].owner
    ids = [s.id for s in train if s.owner == owner]
    start = time.perf_counter()
    forgot = store.forget_samples(ids)
    result["forget"] = {"owner_samples": len(ids), "shards_retrained": [r.shard for r in forgot],
                        "wall_s": time.perf_counter() - start,
                        "shard_train_s": sum(r.seconds for r in forgot)}
    result["speedup_vs_full_retrain"] = result["full_retrain_s"] / result["forget"]["wall_s"]
    save()
    plot(result)
    print(json.dumps(result, indent=2))


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ["retrain", "apa", "uniform", "sisa", "major"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(methods))
    ax1.bar(x - 0.2, [result["auc"][m] for m in methods], 0.4, label="Lethe, SmolLM2-135M")
    ax1.bar(x + 0.2, [PAPER.get(m, np.nan) for m in methods], 0.4,
            label="APA paper, LLaMA-7B (Movie)")
    ax1.set_xticks(x, methods)
    ax1.set_ylim(0.4, 0.8)
    ax1.axhline(0.5, color="grey", lw=0.5)
    ax1.set_ylabel("test AUC")
    ax1.legend(fontsize=8)
    f = result["forget"]
    ax2.bar(["forget (1 shard)", "full retrain"], [f["wall_s"], result["full_retrain_s"]])
    ax2.set_ylabel("seconds (2 vCPU)")
    ax2.set_title(f"{result['speedup_vs_full_retrain']:.2f}x faster")
    fig.tight_layout()
    fig.savefig(RESULTS / "apa.png", dpi=100)


if __name__ == "__main__":
    main()
