"""What crypto-shredding costs: `lethe train` and a forget, with texts sealed (as shipped) and
with the key ring made a pass-through (texts stored plain, nothing shredded), side by side.

    .venv/bin/python bench/bench_shred.py [--people 800] [--facts 5] [--shards 4]
        [--train-steps 4] [--repeats 2] [--model-dir DIR]

`--people` x `--facts` synthetic samples (4,000 by default: TOFU's size) are trained into a new
home with the CLI in-process (`lethe train`, default model SmolLM2-135M-Instruct), once per arm
and repeat, the arms alternating so that the machine's drift hits both alike. Then one owner is
forgotten in each home (`ShardStore.forget_samples`: tombstone, retrain of the owner's shard,
purge, which in the sealed arm also shreds the keys and ends the key ring's epoch, rewrapping
every live key). Training is deliberately tiny (`--train-steps` per shard): real training takes
minutes to hours for the same number of sealing operations, so the ratios here are upper
bounds on the cost. On a shared machine the two arms' times differ by more than the key ring
costs, so the sealed runs also time the key ring's own calls (seal, open, forget, rotate),
which is the cost itself. Writes bench/results/shred.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import yaml  # noqa: E402

from adapters import ShardStore, synth_people, write_samples  # noqa: E402
from base import KeyRing  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forget import MODEL, RESULTS, find_model, machine  # noqa: E402


KEYRING_CALLS = ("seal", "open", "forget", "rotate", "seal_unsealed")


@contextmanager
def plain_texts():
    """The key ring as a pass-through: texts stored as given, no key made or shredded."""
    saved = {name: getattr(KeyRing, name) for name in KEYRING_CALLS}
    KeyRing.seal = lambda self, db, items: [list(texts) for _, texts in items]
    KeyRing.open = lambda self, items: [list(texts) for _, texts in items]
    KeyRing.forget = lambda self, db, names: None
    KeyRing.rotate = lambda self: 0
    KeyRing.seal_unsealed = lambda self, table, columns: None
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(KeyRing, name, method)


@contextmanager
def timed_keyring(spent: list[float]):
    """Add to spent[0] the seconds spent in the key ring's calls (outermost only)."""
    saved = {name: getattr(KeyRing, name) for name in KEYRING_CALLS}
    depth = [0]

    def timed(method):
        def call(*args, **kwargs):
            depth[0] += 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[0] += time.perf_counter() - started
        return call

    for name, method in saved.items():
        setattr(KeyRing, name, timed(method))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(KeyRing, name, method)


def one_run(work: Path, name: str, data: Path, model: Path, args) -> dict:
    """`lethe train` into a new home, then forget one owner; seconds of each."""
    from serving.cli import main as lethe

    home = work / name
    (home / "models").mkdir(parents=True)
    (home / "models" / MODEL).symlink_to(model.resolve())
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "home": str(home), "shards": {"count": args.shards},
        "train": {"max_steps": args.train_steps, "batch_size": 8, "max_length": 64},
        "route": {"scheme": "semantic"}}))
    train_keyring, forget_keyring = [0.0], [0.0]
    started = time.perf_counter()
    with timed_keyring(train_keyring):
        if lethe(["train", "--config", str(config), "--data", str(data)]) != 0:
            raise SystemExit("lethe train failed")
    train_s = time.perf_counter() - started
    store = ShardStore(home / "apa")
    ids = store.lineage.owner_sample_ids("person-0000")
    started = time.perf_counter()
    with timed_keyring(forget_keyring):
        store.forget_samples(ids)
    forget_s = time.perf_counter() - started
    return {"train_s": train_s, "forget_s": forget_s, "train_keyring_s": train_keyring[0],
            "forget_keyring_s": forget_keyring[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--people", type=int, default=800)
    ap.add_argument("--facts", type=int, default=5, help="samples per person (at most 5)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model-dir", type=Path, help="a prepared SmolLM2 folder to reuse")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lethe-bench-shred-") as tmp:
        work = Path(tmp)
        model = find_model(args.model_dir, work)
        if model is None:
            sys.exit("no prepared SmolLM2 folder found: pass --model-dir (any `lethe serve` "
                     "home's models/SmolLM2-135M-Instruct)")
        data = work / "people.jsonl"
        write_samples(synth_people(args.people, seed=0, facts_per_person=args.facts), data)
        runs: dict[str, list[dict]] = {"plain": [], "sealed": []}
        for r in range(args.repeats):
            for arm in ("plain", "sealed") if r % 2 == 0 else ("sealed", "plain"):
                if arm == "plain":
                    with plain_texts():
                        runs[arm].append(one_run(work, f"{arm}-{r}", data, model, args))
                else:
                    runs[arm].append(one_run(work, f"{arm}-{r}", data, model, args))
                print(arm, r, {k: round(v, 2) for k, v in runs[arm][-1].items()}, flush=True)

    median = {arm: {k: statistics.median(run[k] for run in rs) for k in rs[0]}
              for arm, rs in runs.items()}
    ratio = {k: median["sealed"][k] / median["plain"][k] for k in ("train_s", "forget_s")}
    share = {k: statistics.median(run[f"{k}_keyring_s"] / run[f"{k}_s"] for run in runs["sealed"])
             for k in ("train", "forget")}
    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
              "samples": args.people * args.facts, "runs": runs, "median": median,
              "sealed_over_plain": ratio, "keyring_share_of_sealed": share}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shred.json").write_text(json.dumps(result, indent=2))
    print(f"\n| {args.people * args.facts} samples, {args.shards} shards | plain (s) | sealed (s) "
          "| sealed / plain | key ring (s) | key ring / sealed |\n|---|---|---|---|---|---|")
    for key, label in (("train", "`lethe train`"), ("forget", "forget one owner")):
        print(f"| {label} | {median['plain'][f'{key}_s']:.2f} | {median['sealed'][f'{key}_s']:.2f} "
              f"| {ratio[f'{key}_s']:.3f} | {median['sealed'][f'{key}_keyring_s']:.3f} "
              f"| {share[key]:.2%} |")


if __name__ == "__main__":
    main()
