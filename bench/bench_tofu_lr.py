"""How well one shard adapter answers its own training questions, per learning rate and number
of epochs: how the training defaults were chosen (docs/benchmarks.md, "The whole product on
TOFU").

    .venv/bin/python bench/bench_tofu_lr.py [--learning-rates 3e-3 1e-3] [--epochs 2]
                                            [--retain-authors 8]

One adapter (the configured LoRA) per (learning rate, epochs) on TOFU forget01's two authors and
the first N other authors (200 samples at N=8), then the forget questions (40, all trained on)
answered by the base model with that adapter alone: mean ROUGE-L recall and per-token
probability (guard/metrics.py). About 1.5 minutes per epoch of 100 samples (N=3) on a 2-vCPU
machine, plus ~2 minutes of scoring per setting. Writes bench/results/tofu_lr.json (--out).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


def one_setting(rate: str, epochs: int, data, work: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guard import ModelSubject, metric
    from serving.config import load_config
    from serving.model import resolve_model
    from serving.shards import create_store

    config = load_config(overrides={"train.learning_rate": float(rate), "train.epochs": epochs})
    store = create_store(config, work / f"{rate}x{epochs}", data.train, data.validation,
                         shards=1)
    start = time.perf_counter()
    store.train(store.lineage.shard_ids(), lambda shard: None)
    seconds = time.perf_counter() - start
    path = resolve_model(config.model.source, config.home_dir)
    [version] = store.current_versions()
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), version.path).eval()
    subject = ModelSubject(model, AutoTokenizer.from_pretrained(path))
    forget = data.sets["forget"]
    return {"train_seconds": round(seconds, 1),
            "forget_rouge_l": float(metric("rouge_l")(subject, forget).mean()),
            "forget_probability": float(metric("probability")(subject, forget).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=TOFU)
    parser.add_argument("--learning-rates", nargs="+", default=["3e-3", "1e-3"])
    parser.add_argument("--epochs", nargs="+", type=int, default=[2])
    parser.add_argument("--retain-authors", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS / "tofu_lr.json")
    args = parser.parse_args()

    from serving.evaluation import load_tofu

    data = load_tofu(args.data, "forget01", args.retain_authors, 1)
    with tempfile.TemporaryDirectory() as work:
        settings = {}
        for rate in args.learning_rates:
            for epochs in args.epochs:
                settings[f"lr {rate}, {epochs} epochs"] = one_setting(rate, epochs, data,
                                                                      Path(work))
                print(json.dumps(settings, indent=2), flush=True)
    record = {"settings": settings, "samples": len(data.train),
              "forget_questions": len(data.sets["forget"])}
    RESULTS.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
