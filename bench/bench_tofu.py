"""The TOFU run of `lethe eval tofu` (docs/benchmarks.md): every state of the product, scored
as the field scores unlearning, next to open-unlearning's published figures.

    .venv/bin/python bench/bench_tofu.py [--forget forget10] [--retain-authors 5] [--shards 4]
                                         [--eval-items 10] [--variants] [--aggregation]
                                         [--epochs E] [--learning-rate LR] [--probe FILE]

Trains SmolLM2-135M shard adapters (the training defaults: 5 epochs at lr 1e-2, chosen so that
an adapter recalls its training answers, bench/bench_tofu_lr.py) on TOFU's forget authors plus
the first N other authors, forgets the forget authors through the product's own path, and
scores original, guarded (also on forms of the forget questions the guard was not handed),
quarantined, exact and reference, each with a membership-inference audit against TOFU's holdout
questions. Writes bench/results/tofu.json and tofu.png (the log goes to stderr). Needs TOFU in
../shared/data/tofu (or --data) and matplotlib (`make bench-setup`).

Why these sizes: the run must finish in 90 minutes on the 2-vCPU development machine with
forget10 whole (20 authors, 400 questions). Training costs ~0.45 s per sample and epoch there
(the original: 500 samples x 5 epochs; the worker's retrain and the reference's training of
the shards that held a forget author: their 100 retained samples x 5 epochs, each) and scoring
~1.2 s per question (probability, 6 truth-ratio answers, a greedy answer) for each state that
serves it differently. So the retained authors are cut to 5 (82 minutes alone there on 2026-12-05) and the
utility sets to 10 questions each; the aggregation (one adapter trained on everything, SISA's
ensemble) is opt-in.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from extras import require_extras

RESULTS = Path(__file__).parent / "results"
TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=TOFU)
    parser.add_argument("--forget", default="forget10")
    parser.add_argument("--retain-authors", default="5")
    parser.add_argument("--shards", default="4")
    parser.add_argument("--epochs", help="overrides train.epochs")
    parser.add_argument("--learning-rate", help="overrides train.learning_rate")
    parser.add_argument("--eval-items", default="10")
    parser.add_argument("--probe", action="append", default=[], help="as lethe eval tofu's")
    parser.add_argument("--variants", action="store_true",
                        help="also the guarded variants (~3 more minutes on 2026-12-02's machine)")
    parser.add_argument("--aggregation", action="store_true",
                        help="also APA vs one adapter, uniform, ensemble (~15 more minutes then)")
    args = parser.parse_args()
    require_extras("matplotlib")
    if args.learning_rate:
        os.environ["LETHE_TRAIN__LEARNING_RATE"] = args.learning_rate

    from serving.cli import main as lethe

    RESULTS.mkdir(exist_ok=True)
    start = time.perf_counter()
    code = lethe(["eval", "tofu", "--data", str(args.data), "--forget", args.forget,
                  "--retain-authors", args.retain_authors, "--shards", args.shards,
                  *(["--epochs", args.epochs] if args.epochs else []),
                  "--eval-items", args.eval_items,
                  *[flag for path in args.probe for flag in ("--probe", path)],
                  *(["--variants"] if args.variants else []),
                  *(["--aggregation"] if args.aggregation else []),
                  "--out", str(RESULTS / "tofu.json"), "--plot", str(RESULTS / "tofu.png")])
    print(f"{time.perf_counter() - start:.0f} s on {platform.machine()}, {os.cpu_count()} CPUs",
          file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
