"""What the guard flags on TOFU while forget10's 20 authors are pending, as `lethe eval tofu`'s
guarded phase sees it: no trained classifier, each author's forget request put in the guard
(its training questions and answers as exemplars, the window head fitted on all of them), the
reference negatives the forget service sets (the retained authors' training questions and the
general requests). Per set, the share of questions flagged and by which rule: forget10's
training questions and their unseen forms (the `paraphrased_question` of
forget10_perturbed.json, where present), and questions about no pending author: the retained
authors' (their first 10), TOFU's holdout authors' (holdout10, never trained on: the membership
audit's negatives), real authors, world facts. Run once per size of the retained pool, which
is also the pool of negatives the guard is calibrated against.

    .venv/bin/python bench/bench_guard_tofu.py [--retain-authors 5 40]

No model is trained (the guard reads MiniLM only): about a minute per pool on the 2-vCPU
development machine. Writes bench/results/guard_tofu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


def flag_rates(retain_authors: int, data_dir: Path) -> dict:
    from guard import Guard, general_prompts
    from serving.config import load_config
    from serving.evaluation import load_tofu
    from serving.model import sentence_embedder
    from serving.pipeline import guard_options

    config = load_config()
    data = load_tofu(data_dir, "forget10", retain_authors, 10, tune_authors=0)
    embed = sentence_embedder(config.guard.embedder, config.cache_dir)
    guard = Guard.exemplars_only(embed, config.guard.exemplar_threshold,
                                 **guard_options(config, embed))
    # as ForgetService sets them: every training prompt (a request's own are set aside by
    # `covers`), then the general requests
    general = [p for prompts in general_prompts().values() for p in prompts]
    negatives = dict(zip([s.id for s in data.train], embed([s.prompt for s in data.train])))
    negatives.update(zip([f"general-{i}" for i in range(len(general))], embed(general)))
    guard.set_negatives(negatives)
    for owner in data.forget_owners:
        mine = [s for s in data.train if s.owner == owner]
        guard.add_exemplar(owner, [t for s in mine for t in (s.prompt, s.response)],
                           covers=[s.id for s in mine])
    guard.settle()
    sets = {"forget": data.sets["forget"], "unseen": data.sets["unseen"],
            "retain": data.sets["retain"], "holdout": data.holdout,
            "real_authors": data.sets["real_authors"], "world_facts": data.sets["world_facts"]}
    record = {}
    for name, items in sets.items():
        rules = Counter(guard.check([item.prompt]).rule for item in items)
        flagged = len(items) - rules.pop(None, 0)
        record[name] = {"questions": len(items), "flagged": round(flagged / len(items), 4),
                        "by_rule": dict(rules)}
        print(f"  {name}: {flagged}/{len(items)} flagged {dict(rules)}", flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retain-authors", type=int, nargs="+", default=[5, 40])
    parser.add_argument("--data", type=Path, default=TOFU)
    parser.add_argument("--out", type=Path, default=RESULTS / "guard_tofu.json")
    args = parser.parse_args()
    pools, start = {}, time.perf_counter()
    for n in args.retain_authors:
        print(f"forget10 pending, {n} retained authors:", flush=True)
        pools[str(n)] = flag_rates(n, args.data)
    result = {"pools": pools, "seconds": round(time.perf_counter() - start, 1),
              "config": {"forget": "forget10", "classifier": None, "cpus": os.cpu_count()}}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{result['seconds']} s; wrote {args.out}")


if __name__ == "__main__":
    main()
