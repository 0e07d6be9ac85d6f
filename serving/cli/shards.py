"""`lethe train`, `shards`, `retrain`, `forget-samples`, `route`: the shard adapters (APA)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .common import add_command, config_of, emit, positive_int, shard_progress

if TYPE_CHECKING:
    from adapters import ShardResult


def _report_results(args, results, seconds: float, verb: str) -> None:
    payload = {"shards": [asdict(r) for r in results], "seconds": round(seconds, 2)}
    lines = [f"shard {r.shard}: {r.samples} samples -> version {r.version or '(none: empty)'}"
             + (f" (was {r.previous})" if r.previous and r.previous != r.version else
                " (unchanged)" if r.previous else "")
             + f", {r.steps} steps, {r.seconds:.1f} s" for r in results]
    emit(args, payload, lines + [f"{verb} {len(results)} shard(s) in {seconds:.1f} s"])


def _open(config):
    from ..shards import open_store

    return open_store(config)


def train_shards(config, samples, validation=None) -> list[ShardResult]:
    """Partition `samples` into a new shard store (`config.store_dir`) and train every shard,
    with a progress bar each; the ShardResults. The key that forget receipts are signed with is
    created here, at setup (GET /v1/receipts/key serves its public half)."""
    from base import Signer

    from ..shards import create_store, store_database

    store = create_store(config, config.store_dir, samples, validation,
                         database=store_database(config))
    Signer.of_store(store.root)
    return store.train(store.lineage.shard_ids(), shard_progress)


def cmd_train(args) -> None:
    from adapters import read_samples

    config = config_of(args, **{"shards.data": args.data, "shards.validation": args.validation,
                                "shards.count": args.shards, "train.max_steps": args.max_steps})
    if config.shards.data is None:
        raise ConfigError("no training data: pass --data FILE or set shards.data")
    start = time.perf_counter()
    samples = read_samples(config.shards.data)
    validation = read_samples(config.shards.validation) if config.shards.validation else None
    results = train_shards(config, samples, validation)
    _report_results(args, results, time.perf_counter() - start, "trained")


def cmd_shards(args) -> None:
    store = _open(config_of(args))
    rows, versions = [], {v.shard: v for v in store.current_versions()}
    for row in store.lineage.shard_table():
        version = versions.get(row["shard"])
        rows.append({**row, "version": version.id if version else None,
                     "created_at": version.manifest["created_at"] if version else None})
    base_only = not versions  # every sample forgotten: no adapter left to serve
    emit(args, {"store": str(store.root), "shards": rows, "base_model_only": base_only}, [
        f"shard {r['shard']}: version {r['version'] or '(none)'}, {r['samples']} samples, "
        f"{r['forgotten']} forgotten" + (", held by a pending forget request (quarantine)"
                                            if r["quarantined"] else "")
        for r in rows] + (["no shard serves: requests are answered by the base model alone"]
                          if base_only else []))


def cmd_retrain(args) -> None:
    store = _open(config_of(args))
    unknown = sorted(set(args.shard) - set(store.lineage.shard_ids()))
    if unknown:
        from adapters import LineageError

        raise LineageError(f"unknown shard(s) {unknown}; the store has {store.lineage.shard_ids()}")
    start = time.perf_counter()
    results = store.train(sorted(set(args.shard)), shard_progress)
    store.sweep_mixtures()
    _report_results(args, results, time.perf_counter() - start, "retrained")


def cmd_forget_samples(args) -> None:
    store = _open(config_of(args))
    start = time.perf_counter()
    results = store.forget_samples(args.id, shard_progress)
    store.sweep_mixtures()
    _report_results(args, results, time.perf_counter() - start, "retrained")


def cmd_route(args) -> None:
    from adapters import mixture_name

    from ..model import sentence_embedder

    config = config_of(args)
    store = _open(config)
    route = store.effective_route(config.route)
    query = sentence_embedder(config.guard.embedder, config.cache_dir)([args.prompt])[0]
    weights = store.weights(query, route)
    # in-engine: the stack of the current versions, the weights applied by the engine
    parts = ([(v, 1.0) for v in store.current_versions()] if route.mixing == "in-engine"
             else [(store.current(k), w) for k, w in weights.items()])
    name = mixture_name(parts) if weights else None
    emit(args, {"scheme": route.scheme, "weights": {str(k): w for k, w in weights.items()},
                "mixing": route.mixing, "mixture": name},
         [f"scheme {route.scheme}"] + [f"shard {k}: {w:.3f}" for k, w in weights.items()]
         + [f"mixture {name or '(none: base model)'} ({route.mixing})"])


def add_commands(sub) -> None:
    train = add_command(sub, "train", cmd_train, "partition the data into shards, train and "
                        "publish every shard adapter (APA)")
    train.add_argument("--data", type=Path, help="samples JSONL (overrides shards.data)")
    train.add_argument("--validation", type=Path,
                       help="validation samples for APA's weights (overrides shards.validation)")
    train.add_argument("--shards", type=positive_int, help="overrides shards.count")
    train.add_argument("--max-steps", type=positive_int, help="overrides train.max_steps")
    add_command(sub, "shards", cmd_shards, "list shards: current version, sizes, quarantine")
    retrain = add_command(sub, "retrain", cmd_retrain,
                          "retrain shards from scratch and publish them")
    retrain.add_argument("--shard", type=int, action="append", required=True,
                         help="shard id (repeatable)")
    forget = add_command(sub, "forget-samples", cmd_forget_samples,
                         "forget samples now: tombstone them and retrain the shards that held them")
    forget.add_argument("--id", nargs="+", required=True, help="sample ids")
    route = add_command(sub, "route", cmd_route, "the shard weights and mixture a prompt would get")
    route.add_argument("prompt")
