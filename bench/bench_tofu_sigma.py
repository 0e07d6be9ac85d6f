"""Can the corruption's strength close the guarded phase's membership gap? The guarded state of
bench_tofu.py's full run (docs/benchmarks.md, "The whole product on TOFU") under several sigmas.

    .venv/bin/python bench/bench_tofu_sigma.py [--sigmas 0.02 0.08 0.11 0.15] [--home DIR]

Trains the original shard adapters exactly as bench_tofu.py does (forget10's 20 authors and the
first 5 others, K=4, the training defaults: deterministic, so the same weights as its run on the
same kind of machine) and the reference (the same partition without the forget authors), in
--home (kept: a second run reuses them). Then, on a copy of the original, submits the 20 forget
requests through the forget service and lets the window head settle, as `lethe eval tofu` does
before it scores the guarded phase, and per sigma of the served corruption measures what the
guarded phase's goals read: the membership AUC (min-k%, lifecycle.membership_auc) of the forget
answers and of their unseen forms against TOFU's holdout answers, and the unseen forms' ROUGE-L;
beside the same under the reference. Nothing here is tuned on: it asks whether any strength
meets both goals at once (AUC and ROUGE-L each within 0.05 of the reference's). About 20 minutes
to train and 4 per sigma on the 2-vCPU development machine. Writes bench/results/tofu_sigma.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=TOFU)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.02, 0.08, 0.11, 0.15])
    parser.add_argument("--retain-authors", type=int, default=5)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--home", type=Path, help="keeps the trained stores (default: temporary)")
    args = parser.parse_args()

    from adapters import ShardStore
    from guard import Corruption, metric
    from serving.config import load_config
    from serving.evaluation import load_tofu
    from serving.evaluation.lifecycle import Lifecycle, forget_service, membership_auc
    from serving.shards import create_store

    start = time.perf_counter()
    home = args.home or Path(tempfile.mkdtemp(prefix="tofu-sigma-"))
    config = load_config(None, overrides={"shards.count": args.shards})
    data = load_tofu(args.data, "forget10", args.retain_authors, 1, tune_authors=1)
    life = Lifecycle(config, home / "life")
    if not (home / "original" / "store.json").exists():
        create_store(config, home / "original", data.train, data.validation, embed=life.embed)
    original = ShardStore(home / "original")
    life.train("original", original, lambda shard: None)
    if not (home / "reference" / "store.json").exists():
        forget_ids = {s.id for s in data.train if s.owner in set(data.forget_owners)}
        ShardStore.derive(home / "reference", original, forget_ids, reuse_unchanged=True)
    reference = ShardStore(home / "reference")
    life.train("reference", reference, lambda shard: None)

    # the guarded state on a copy: the requests hold the copy's shards, never the kept original
    scratch = Path(tempfile.mkdtemp(prefix="guarded-", dir=home))
    try:
        shutil.copytree(home / "original", scratch / "original")
        store = ShardStore(scratch / "original")
        guard = life.guard()
        service = forget_service(config, store, guard, life.embed, scratch)
        for owner in data.forget_owners:
            service.submit(owner, None, [])
        guard.settle()

        def measure(subject) -> dict:
            t = time.perf_counter()
            record = {"membership_auc": membership_auc(subject, data.sets["forget"],
                                                       data.holdout),
                      "membership_auc_unseen": membership_auc(subject, data.sets["unseen"],
                                                              data.holdout),
                      "rouge_l_unseen": float(metric("rouge_l")(subject,
                                                                data.sets["unseen"]).mean())}
            print(", ".join(f"{k} {v:.3f}" for k, v in record.items())
                  + f" ({time.perf_counter() - t:.0f} s)", flush=True)
            return record

        print("reference: ", end="", flush=True)
        result = {"reference": measure(life.served(reference, life.guard())), "guarded": {}}
        name, k = life.corruption.name, life.corruption.k
        for sigma in args.sigmas:
            print(f"guarded, sigma {sigma}: ", end="", flush=True)
            record = measure(life.served(store, guard, corruption=Corruption(name, sigma, k)))
            ref = result["reference"]
            record["gaps"] = {"membership_auc": record["membership_auc"] - ref["membership_auc"],
                              "rouge_l_unseen": record["rouge_l_unseen"] - ref["rouge_l_unseen"]}
            record["both_within_0.05"] = all(abs(g) <= 0.05 for g in record["gaps"].values())
            result["guarded"][str(sigma)] = record
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    result.update(corruption=name, k=k, forget="forget10", retain_authors=args.retain_authors,
                  shards=args.shards, questions={"forget": len(data.sets["forget"]),
                                                 "unseen": len(data.sets["unseen"]),
                                                 "holdout": len(data.holdout)},
                  seconds=round(time.perf_counter() - start),
                  machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
                  date=time.strftime("%Y-%m-%d"))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tofu_sigma.json").write_text(json.dumps(result, indent=2))
    print(f"{result['seconds']} s on {result['machine']}")


if __name__ == "__main__":
    main()
