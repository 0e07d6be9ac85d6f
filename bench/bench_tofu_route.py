"""Why APA's mixture keeps less of a single adapter's utility on TOFU than it could: the
original store of bench_tofu.py scored under several routings (docs/benchmarks.md, "The whole
product on TOFU", aggregation).

    .venv/bin/python bench/bench_tofu_route.py [--retain-authors 38] [--shards 4]

Trains the original shard adapters exactly as bench_tofu.py does (forget01's authors and the
first N others, K shards grouped by author, 2 epochs, lr 3e-3: deterministic, so the same
weights as its run on the same kind of machine), then scores the utility sets (10 questions
each) under each routing below, and, per retain question, where the weight went: the weight of
the shard that holds the question's author (the only one trained on it). About 15 minutes on
the 2-vCPU development machine. Writes bench/results/tofu_route.json.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=TOFU)
    parser.add_argument("--retain-authors", type=int, default=38)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()

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
