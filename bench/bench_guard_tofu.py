"""What the guard flags on TOFU while forget10's 20 authors are pending, as `lethe eval tofu`'s
guarded phase sees it: no trained classifier, each author's forget request submitted to the
forget service (which puts its training questions and answers in the guard as exemplars, fits
the window head on all of them, and calibrates against the retained authors' training
questions and the general requests). Per set, the share of questions flagged and by which rule,
and of those flagged, the attribution (`forget.quarantine: matched`): the share the guard names
no request for, how often the author's request is among those named, how many are named, and
how many held shards a flagged question skips (matched, against every one under `flagged`). The sets: forget10's training
questions and their unseen forms (the `paraphrased_question` of
forget10_perturbed.json, where present), and questions about no pending author: the retained
authors' (their first 10), TOFU's holdout authors' (holdout10, never trained on: the membership
audit's negatives), real authors, world facts; and the unseen forms again with typos in ~15% of
their longer words (issue 29's hostile form, names included). For the window head's flags, where
they sit: the question's similarity to the nearest exemplar row, and its largest margin over an
exemplar row's threshold (below 0: the exemplar rule let it through, the head flagged it). Run
once per size of the retained pool, which is also the pool of negatives the guard is calibrated
against.

    .venv/bin/python bench/bench_guard_tofu.py [--retain-authors 5 40]

No model is trained (the guard reads MiniLM only): about a minute per pool on the 2-vCPU
development machine. Writes bench/results/guard_tofu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


def flag_rates(retain_authors: int, data_dir: Path) -> dict:
    from guard import Guard
    from guard.augment import typos
    from serving.config import load_config
    from serving.evaluation import load_tofu
    from serving.evaluation.lifecycle import forget_service
    from serving.model import sentence_embedder
    from serving.pipeline import guard_options
    from serving.shards import create_store

    config = load_config()
    data = load_tofu(data_dir, "forget10", retain_authors, 10, tune_authors=0)
    embed = sentence_embedder(config.guard.embedder, config.cache_dir)
    guard = Guard.exemplars_only(embed, config.guard.exemplar_threshold,
                                 **guard_options(config, embed))
    with tempfile.TemporaryDirectory(prefix="guard-tofu-") as work:
        # partitioned, not trained: the service reads the lineage only (negatives, texts, holds)
        store = create_store(config, Path(work) / "store", data.train, data.validation,
                             embed=embed)
        service = forget_service(config, store, guard, embed, Path(work))
        request_of = {owner: service.submit(owner, None, [])[0].id
                      for owner in data.forget_owners}
        guard.settle()
        holds = store.lineage.quarantine_holds()  # request -> the shards it holds
    owner_of = {s.response: s.owner for s in data.train}  # a forget question's author
    rng = np.random.default_rng(0)
    sets = {name: [item.prompt for item in items] for name, items in (
        ("forget", data.sets["forget"]), ("unseen", data.sets["unseen"]),
        ("retain", data.sets["retain"]), ("holdout", data.holdout),
        ("real_authors", data.sets["real_authors"]), ("world_facts", data.sets["world_facts"]))}
    sets["unseen_typos"] = [typos(q, rng, rate=0.05) for q in sets["unseen"]]
    authors = {name: [owner_of.get(item.answer) for item in data.sets[name]]
               for name in ("forget", "unseen")}  # None: about no forget author
    authors["unseen_typos"] = authors["unseen"]
    record = {}
    for name, questions in sets.items():
        owners = authors.get(name, [None] * len(questions))
        verdicts = [guard.check([q]) for q in questions]
        rules = Counter(v.rule for v in verdicts)
        flagged = len(questions) - rules.pop(None, 0)
        record[name] = {"questions": len(questions), "flagged": round(flagged / len(questions), 4),
                        "by_rule": dict(rules)}
        record[name]["attribution"] = _attribution(
            [v for v in verdicts if v.flagged], [owners[i] for i, v in enumerate(verdicts)
                                                 if v.flagged], request_of, holds)
        head = [q for q, v in zip(questions, verdicts) if v.rule == "head"]
        if head:  # the question as a whole, against the exemplar rows
            near = guard.exemplars.nearest(embed(head))
            record[name]["head_flags"] = {
                "similarity": _quantiles(near.similarity), "margin": _quantiles(near.margin)}
        print(f"  {name}: {flagged}/{len(questions)} flagged {dict(rules)} "
              f"{record[name]['attribution']}", flush=True)
    return record


def _attribution(verdicts: list, owners: list[str | None], request_of: dict[str, str],
                 holds: dict[str, set[int]]) -> dict:
    """Of flagged questions: the share the guard names no request for (`unattributed`: a view
    only the window head flags; every held shard skipped), and of the others how often the
    request of the question's author is among those named (`forget.quarantine: matched` skips
    their shards) and how many are named; and how many held shards a flagged question skips
    under `matched` and under `flagged` (every one)."""
    if not verdicts:
        return {}
    held = set().union(*holds.values())
    skipped = [{k for r, shards in holds.items() if r not in v.unrelated for k in shards}
               for v in verdicts]
    named = [v for v in verdicts if v.requests is not None]
    about = [(v, request_of[o]) for v, o in zip(verdicts, owners)
             if o is not None and v.requests is not None]
    return {"unattributed": round(1 - len(named) / len(verdicts), 4),
            "author_named": round(float(np.mean([r in v.requests for v, r in about])), 4)
            if about else None,
            "requests_named": _quantiles([len(v.requests) for v in named]) if named else None,
            "shards_skipped_matched": round(float(np.mean([len(s) for s in skipped])), 3),
            "shards_skipped_flagged": len(held)}


def _quantiles(x) -> dict:
    return {f"q{int(100 * q)}": round(float(np.quantile(x, q)), 3) for q in (0, .1, .5, .9, 1)}


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
