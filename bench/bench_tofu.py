"""The TOFU run of `lethe eval tofu` (docs/benchmarks.md): every state of the product, scored
as the field scores unlearning, next to open-unlearning's published figures.

    .venv/bin/python bench/bench_tofu.py [--forget forget01] [--retain-authors 38] [--shards 4]
                                         [--epochs 2] [--learning-rate 3e-3] [--eval-items 10]
                                         [--variants] [--aggregation]

Trains SmolLM2-135M shard adapters on TOFU's forget authors plus the first N other authors,
forgets the forget authors through the product's own path, and scores original, guarded, exact
and reference (and APA's aggregation against one adapter, uniform weights and SISA's ensemble).
Writes bench/results/tofu.json and bench/results/tofu.png. Needs TOFU in ../shared/data/tofu
(or --data) and matplotlib (`make bench-setup`).

Why these sizes: on this 2-vCPU machine one training step (8 TOFU samples) takes 6-10 s
depending on the day's machine (AVX-512 or AVX2 only), ~0.8x that since batches group like
lengths and the LM head runs at the response tokens (bench/bench_train.py), and scoring one
forget question (probability, 6 truth-ratio answers, a greedy answer) 10-20 s, ~0.65x that since
the question's prompt runs once for its answers and the subjects run the engine's LoRA
(docs/benchmarks.md). The run trains the original (200 steps), then the worker's retrain and the
reference's training of the shards that held a forget author (~50 steps each; the reference keeps
the original's other shards, trained on the same samples with the same seed), and scores original,
guarded (its unflagged questions are the original's computation, reused), the second tier's 6
evaluations of 8 forget questions, exact, and the reference (the exact phase's computation,
reused, when their versions are the same): docs/benchmarks.md, "The whole product on TOFU",
and bench/results/tofu.json
"seconds" say how long it took. The variants and the aggregation (a single adapter trained on
everything; the ensemble scores every question once per shard) are opt-in. The learning rate
is raised from the serving default (3e-4) so that 2 epochs teach the original model its
training answers: one shard adapter on forget01's authors and 8 others (200 samples, 2 epochs)
answers its forget questions with ROUGE-L 0.419 and probability 0.394 at 3e-3, 0.380 and 0.264
at 1e-3 (measured on this machine, 2026-11-23, with the shuffled batches of then).
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
    parser.add_argument("--forget", default="forget01")
    parser.add_argument("--retain-authors", default="38")
    parser.add_argument("--shards", default="4")
    parser.add_argument("--epochs", default="2")
    parser.add_argument("--learning-rate", default="3e-3")
    parser.add_argument("--eval-items", default="10")
    parser.add_argument("--variants", action="store_true",
                        help="also the guarded variants (~3 more minutes on 2026-12-02's machine)")
    parser.add_argument("--aggregation", action="store_true",
                        help="also APA vs one adapter, uniform, ensemble (~15 more minutes then)")
    args = parser.parse_args()
    require_extras("matplotlib")
    os.environ["LETHE_TRAIN__LEARNING_RATE"] = args.learning_rate

    from serving.cli import main as lethe

    RESULTS.mkdir(exist_ok=True)
    start = time.perf_counter()
    code = lethe(["eval", "tofu", "--data", str(args.data), "--forget", args.forget,
                  "--retain-authors", args.retain_authors, "--shards", args.shards,
                  "--epochs", args.epochs, "--eval-items", args.eval_items,
                  *(["--variants"] if args.variants else []),
                  *(["--aggregation"] if args.aggregation else []),
                  "--out", str(RESULTS / "tofu.json"), "--plot", str(RESULTS / "tofu.png")])
    print(f"{time.perf_counter() - start:.0f} s on {platform.machine()}, {os.cpu_count()} CPUs",
          file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
