"""Why APA's mixture keeps less of a single adapter's utility on TOFU than it could: the
original store of bench_tofu.py scored under several routings (docs/benchmarks.md, "The whole
product on TOFU", aggregation).

    .venv/bin/python bench/bench_tofu_route.py [--retain-authors 38] [--shards 4]
    .venv/bin/python bench/bench_tofu_route.py --keys [--retain-authors 20] [--shards 4]

Trains the original shard adapters exactly as bench_tofu.py does (forget01's authors and the
first N others, K shards grouped by author, 2 epochs, lr 3e-3: deterministic, so the same
weights as its run on the same kind of machine), then scores the utility sets (10 questions
each) under each routing below, and, per retain question, where the weight went: the weight of
the shard that holds the question's author (the only one trained on it). About 15 minutes on
the 2-vCPU development machine. Writes bench/results/tofu_route.json.

--keys: the schemes that read no adapter (`nearest` over the training prompts' routing keys,
`semantic`), on a store that is partitioned but not trained (forget10's 20 authors and the
first N others, K shards grouped by author): where the weight of each question goes. Per set,
the mean weight of the shard that holds the question's author: forget10's training questions,
their paraphrases (the `paraphrased_question` of forget10_perturbed.json, where present), the
retain questions; and the largest weight on world facts (about no author). About a minute.
Writes bench/results/tofu_route_keys.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
# name -> RouteConfig fields changed from the served default (apa, tau 10, 20 neighbours)
ROUTINGS = {
    "apa (default: 20 neighbours, tau 10)": {},
    "apa, 2 neighbours": {"neighbours": 2},
    "apa, 2 neighbours, tau 50": {"neighbours": 2, "tau": 50.0},
    "major (all weight on apa's first shard)": {"scheme": "major"},
    "uniform": {"scheme": "uniform"},
}


# name -> RouteConfig fields of the key-based routings compared by --keys
KEY_ROUTINGS = {
    "nearest, 20 neighbours, tau 10": {"scheme": "nearest"},
    "nearest, 20 neighbours, tau 20": {"scheme": "nearest", "tau": 20.0},
    "nearest, 20 neighbours, tau 50": {"scheme": "nearest", "tau": 50.0},
    "nearest, 5 neighbours, tau 20": {"scheme": "nearest", "neighbours": 5, "tau": 20.0},
    "semantic, tau 10": {"scheme": "semantic"},
    "semantic, tau 50": {"scheme": "semantic", "tau": 50.0},
}


def key_routing(args) -> None:
    import numpy as np

    from adapters.route import RouteInputs, route
    from serving.config import load_config
    from serving.evaluation import load_tofu
    from serving.model import sentence_embedder
    from serving.shards import create_store

    config = load_config(overrides={"shards.count": args.shards})
    data = load_tofu(args.data, "forget10", args.retain_authors)
    embed = sentence_embedder(config.guard.embedder, config.cache_dir)
    owner_of = {s.prompt: s.owner for s in data.train}
    rows = [json.loads(line) for line in (args.data / "forget10_perturbed.json").open()]
    paraphrases = [(r["paraphrased_question"], owner_of[r["question"]]) for r in rows
                   if r.get("paraphrased_question")]
    sets = {"forget10 training questions": [(i.prompt, owner_of[i.prompt])
                                            for i in data.sets["forget"]],
            "forget10 paraphrases": paraphrases,
            "retain questions": [(i.prompt, owner_of[i.prompt]) for i in data.sets["retain"]]}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tofu-route-keys-") as work:
        store = create_store(config, Path(work) / "store", data.train, data.validation,
                             embed=embed)
        shard_of = {s.owner: k for k in store.lineage.shard_ids()
                    for s in store.lineage.shard_samples(k)}
        # what the router of the trained store reads (no adapter: these schemes need none)
        _, key_shards, keys = store.lineage.live_keys()
        shards = store.lineage.shard_ids()
        centroids = np.stack([keys[key_shards == k].mean(axis=0) for k in shards])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)  # (K, d)

        def weights(text_vectors, change):
            cfg = config.route.model_copy(update={"quantum": 0.0, **change})
            return [route(RouteInputs(query=q, centroids=centroids, keys=keys,
                                      key_rows=key_shards), cfg, shards) for q in text_vectors]

        vectors = {name: embed([t for t, _ in pairs]) for name, pairs in sets.items()}
        world = embed([i.prompt for i in data.sets["world_facts"]])
        results = {}
        for name, change in KEY_ROUTINGS.items():
            record = {name_: float(np.mean([w.get(shard_of[o], 0.0) for w, (_, o) in zip(
                weights(vectors[name_], change), pairs)])) for name_, pairs in sets.items()}
            record["world facts: largest weight"] = float(np.mean(
                [max(w.values()) for w in weights(world, change)]))
            results[name] = record
            print(name, {k: round(v, 3) for k, v in record.items()}, flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "tofu_route_keys.json"
    out.write_text(json.dumps({"routings": results, "sizes": {k: len(v) for k, v in sets.items()},
                               "seconds": round(time.perf_counter() - start, 1),
                               "config": {"retain_authors": args.retain_authors,
                                          "shards": args.shards, "cpus": os.cpu_count(),
                                          "embedder": config.guard.embedder}}, indent=2))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=TOFU)
    parser.add_argument("--retain-authors", type=int, default=38)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--keys", action="store_true", help="key-based schemes, untrained store")
    args = parser.parse_args()
    if args.keys:
        return key_routing(args)

    import numpy as np

    from serving.config import load_config
    from serving.evaluation import load_tofu
    from serving.evaluation.lifecycle import UTILITY_SETS, Lifecycle
    from serving.shards import create_store

    config = load_config(overrides={"train.learning_rate": 3e-3, "train.epochs": 2,
                                    "shards.count": args.shards})
    data = load_tofu(args.data, "forget01", args.retain_authors, eval_items=10)
    sets = {name: data.sets[name] for name in UTILITY_SETS}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tofu-route-") as work:
        life = Lifecycle(config, Path(work))
        store = create_store(config, life.work / "original", data.train, data.validation,
                             embed=life.embed)
        life.train("original", store, lambda shard: None)
        shard_of = {s.owner: k for k in store.lineage.shard_ids()
                    for s in store.lineage.shard_samples(k)}
        owner_of = {s.prompt: s.owner for s in data.train}
        retain = sets["retain"]
        queries = life.embed([i.prompt for i in retain])  # (N, d)
        results = {}
        for name, change in ROUTINGS.items():
            route = config.route.model_copy(update=change)
            record = life.score(name, life.served(store, life.guard(), route), sets)[0]
            own = [store.weights(q, route).get(shard_of[owner_of[i.prompt]], 0.0)
                   for q, i in zip(queries, retain)]
            results[name] = {"route": route.model_dump(mode="json"),
                             "model_utility": record["model_utility"],
                             "retain_rouge_l": record["retain"]["rouge_l"],
                             "retain_probability": record["retain"]["probability"],
                             "own_shard_weight": float(np.mean(own)), "scores": record}
            life.log(f"{name}: model utility {record['model_utility']:.3f}, retain ROUGE-L "
                     f"{record['retain']['rouge_l']:.3f}, own shard's weight {np.mean(own):.2f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "tofu_route.json"
    out.write_text(json.dumps({"routings": results, "seconds": life.seconds,
                               "total_seconds": round(time.perf_counter() - start, 1),
                               "config": {"retain_authors": args.retain_authors,
                                          "shards": args.shards, "eval_items": 10,
                                          "cpus": os.cpu_count()}}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
